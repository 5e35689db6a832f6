"""Weight averaging: a copy of the model whose weights average the trained ones, kept beside them.

The `average` group.
  ema  after every `every` optimizer steps the copy moves toward the trained weights,
       ema <- d * ema + (1 - d) * weights, with d = min(decay, (1 + t) / (10 + t)) at update t when
       `warmup` is on (timm's ModelEmaV3 warmup, so the random start is forgotten quickly);
  swa  stochastic weight averaging (torch.optim.swa_utils' recipe): the equal average of the weights
       at the end of each epoch from `start_epoch` on, at a constant `swa_lr` if one is set; at the
       end BatchNorm's statistics are recomputed for the averaged weights over the training data.
Buffers (BatchNorm's running statistics) are copied from the trained model, not averaged. The copy is
evaluated every epoch, saved in every checkpoint (resume continues it exactly) and, with
`select=averaged`, picks the best epoch and becomes best.pt's weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


class Average:
    """The averaged copy (`module`, in eval mode, no gradients) and how many updates it has had."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        # the tensors, listed once: an update is then two fused foreach calls, not one kernel per tensor
        self._mine = list(self.module.parameters())
        self._theirs = [p.detach() for p in model.parameters()]
        self._my_buffers, self._their_buffers = list(self.module.buffers()), list(model.buffers())

    @torch.no_grad()
    def _move(self, weight: float) -> None:
        """module <- module + weight * (model - module), for every parameter; buffers copied."""
        torch._foreach_lerp_(self._mine, self._theirs, weight)
        if self._my_buffers:
            torch._foreach_copy_(self._my_buffers, self._their_buffers)
        self.updates += 1

    def update(self, step: int) -> None:
        """After optimizer step `step` (counted from 0): the training loop's own step (engine.LoopSteps)."""

    def end_epoch(self, epoch: int) -> None:
        """After epoch `epoch`'s last step."""

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = state["updates"]


class Ema(Average):
    def __init__(self, model: nn.Module, *, decay: float, warmup: bool, every: int):
        super().__init__(model)
        self.decay, self.warmup, self.every = decay, warmup, every

    def decay_at(self, t: int) -> float:
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    def update(self, step: int) -> None:
        if (step + 1) % self.every == 0:
            self._move(1.0 - self.decay_at(self.updates))


class Swa(Average):
    def __init__(self, model: nn.Module, *, start_epoch: int):
        super().__init__(model)
        self.start_epoch = start_epoch

    def end_epoch(self, epoch: int) -> None:
        if epoch >= self.start_epoch:
            self._move(1.0 / (self.updates + 1))  # the running mean of the epochs' weights

    @torch.no_grad()
    def update_bn(self, inputs: Iterable[torch.Tensor], amp) -> int:
        """BatchNorm's running statistics recomputed for the averaged weights: reset, then the exact
        mean over `inputs` (normalized training batches, no augmentation), as swa_utils.update_bn.
        Returns the images seen."""
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return 0
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
        self.module.train()
        seen = 0
        for x in inputs:
            with amp:
                self.module(x)
            seen += len(x)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.module.eval()
        return seen


def make_average(cfg, model: nn.Module) -> Average | None:
    from regx.schedules import swa_start

    a = cfg.average
    if a.name == "ema":
        return Ema(model, decay=a.decay, warmup=a.warmup, every=a.every)
    if a.name == "swa":
        return Swa(model, start_epoch=swa_start(a, cfg.epochs))
    return None

"""Weight averaging: a copy of the model whose weights average the trained ones, kept beside them.

The `average` group.
  ema  timm's ModelEmaV3: after optimizer step t (counted from 1; every `every` steps) every
       floating-point tensor of the state dict, parameters and BatchNorm's running statistics alike,
       moves toward the model's, ema <- d*ema + (1-d)*model, and the others (step counters) are copied;
       d is 0 at the first step (the copy starts from the model), then `decay`, or with `warmup`
       min(decay, 1 - (1 + t)^-warmup_power), so the random start is forgotten within tens of steps;
  swa  stochastic weight averaging (torch.optim.swa_utils' AveragedModel and update_bn): the equal average
       of the parameters at the end of each epoch from `start_epoch` on, at a constant `swa_lr` if one is
       set; BatchNorm's statistics, meaningless for an average of weights, are recomputed over the
       training data at the end, so only then do the averaged weights pick best.pt.
The copy is evaluated every epoch, saved in every checkpoint (resume continues it exactly) and, with
`select=averaged`, picks the best epoch and becomes best.pt's weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


class Average:
    """The averaged copy (`module`, in eval mode, no gradients) and how many updates it has had."""

    average_buffers = False  # True: floating-point buffers (BatchNorm's statistics) are averaged too

    def __init__(self, model: nn.Module):
        self.model = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        # the tensors, listed once: an update is then two fused foreach calls, not one kernel per tensor
        mine, theirs = self.module.state_dict(), model.state_dict()  # tensors sharing the modules' storage
        params = {name for name, _ in model.named_parameters()}
        lerp = [k for k in mine if k in params or (self.average_buffers and mine[k].is_floating_point())]
        self._mine, self._theirs = [mine[k] for k in lerp], [theirs[k] for k in lerp]
        self._my_copied = [mine[k] for k in mine if k not in lerp]
        self._their_copied = [theirs[k] for k in mine if k not in lerp]

    @torch.no_grad()
    def _move(self, weight: float) -> None:
        """module <- module + weight * (model - module) for what is averaged; the rest copied."""
        torch._foreach_lerp_(self._mine, self._theirs, weight)
        if self._my_copied:
            torch._foreach_copy_(self._my_copied, self._their_copied)
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
    average_buffers = True  # as ModelEmaV3 (and torchvision's reference EMA)

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool, warmup_power: float, every: int):
        super().__init__(model)
        self.decay, self.warmup, self.power, self.every = decay, warmup, warmup_power, every

    def decay_at(self, steps: int) -> float:
        """ModelEmaV3.get_decay(step=steps), `steps` being the optimizer steps taken so far (timm's
        num_updates), with warmup_gamma 1 and no min_decay."""
        t = max(0, steps - 1)
        if t <= 0:
            return 0.0
        return min(1 - (1 + t) ** -self.power, self.decay) if self.warmup else self.decay

    def update(self, step: int) -> None:
        if (step + 1) % self.every == 0:
            self._move(1.0 - self.decay_at(step + 1))


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
        return Ema(model, decay=a.decay, warmup=a.warmup, warmup_power=a.warmup_power, every=a.every)
    if a.name == "swa":
        return Swa(model, start_epoch=swa_start(a, cfg.epochs))
    return None

"""One training epoch and one evaluation pass. Metrics are summed on the device and read back once
per epoch (and every `progress_every` steps for the progress bar), never once per step."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from regx.augment import Augment, Mix, mixed_cross_entropy
from regx.distributed import max_over_ranks


@dataclass
class Pipeline:
    """uint8 batch on the device -> float in [0, 1] -> augmentation (training only) -> normalized."""

    mean: torch.Tensor  # 1,C,1,1
    std: torch.Tensor
    channels_last: bool
    augment: Augment | None = None

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train(self, xb: torch.Tensor) -> tuple[torch.Tensor, Mix | None]:
        x, mixed = self.augment(xb.float().div_(255)) if self.augment is not None else (xb.float().div_(255), None)
        return self._finish(x), mixed

    def eval(self, xb: torch.Tensor) -> torch.Tensor:
        return self._finish(xb.float().div_(255))


def autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def fault_at() -> tuple[str, int] | None:
    """Test-only fault injection, REGX_FAULT=KIND@STEP (global optimizer step, counted from 0):
    kill@N (SIGKILL before step N's update), nan@N (step N's loss becomes NaN), killsave@N (SIGKILL
    after the first checkpoint at or after step N is written to its temporary file, before the rename),
    term@N / int@N (SIGTERM / SIGINT during step N), int2@N (two SIGINTs: a user pressing Ctrl-C twice)."""
    spec = os.environ.get("REGX_FAULT", "")
    if "@" not in spec:
        return None
    kind, step = spec.split("@", 1)
    return kind, int(step)


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class Tally:
    """Running sums of an epoch in progress, kept on the device; saved in mid-epoch checkpoints so a
    resumed epoch reports exactly what an uninterrupted one would."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    images: int = 0
    batches: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device: torch.device) -> Tally:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "images": self.images,
                "batches": self.batches, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> Tally:
        return cls(state["loss_sum"].to(device), state["correct"].to(device), state["images"], state["batches"],
                   state["seconds"])


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    steps: int  # optimizer steps in the whole epoch so far (a resumed epoch counts the earlier ones)
    seconds: float
    finished: bool  # False: stopped early on request (a signal); the tally holds the partial epoch
    tally: Tally


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    pipeline: Pipeline,
    lr_at: Callable[[int], float],
    start_step: int,
    amp,
    scaler: torch.amp.GradScaler | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    label_smoothing: float = 0.0,
    tally: Tally | None = None,
    stop: Callable[[], bool] | None = None,
    every: int = 0,
    on_every: Callable[[Tally], None] | None = None,
    progress=None,
    progress_every: int = 25,
) -> EpochResult:
    """Train over `batches` (which start after `tally.batches` batches when resuming mid-epoch).

    `stop()` is polled after every step: True ends the epoch early (finished=False). Every `every`
    steps `on_every(tally)` runs (mid-epoch checkpoints). A NaN/inf loss raises NonFiniteLoss naming
    its step: checked every step on CPU (free there) and at each progress/checkpoint point and the
    epoch's end on accelerators, where each check is a host sync.
    """
    model.train()
    device = pipeline.mean.device
    tally = tally if tally is not None else Tally.zero(device)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    bad_loss = torch.zeros((), device=device)
    check_every = 1 if device.type == "cpu" else progress_every
    fault = fault_at()
    t0, seconds_before, step = time.perf_counter(), tally.seconds, start_step - 1

    def check() -> None:  # under torchrun every rank checks at the same steps: all stop together
        bad = int(max_over_ranks(first_bad))
        if bad >= 0:
            raise NonFiniteLoss(bad, float(bad_loss) if int(first_bad) >= 0 else float("nan"))

    for xb, yb in batches:
        step += 1
        lr = lr_at(step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        x, mixed = pipeline.train(xb)
        with amp:
            out = model(x)
            if mixed is None:
                loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
            else:
                loss = mixed_cross_entropy(out.float(), yb, mixed, label_smoothing)
        if fault is not None and fault[1] == step:
            if fault[0] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault[0] == "nan":
                loss = loss * float("nan")
            elif fault[0] in ("term", "int", "int2"):  # as if SLURM or a user sent it during this step
                for _ in range(2 if fault[0] == "int2" else 1):
                    os.kill(os.getpid(), signal.SIGTERM if fault[0] == "term" else signal.SIGINT)
        total = loss + penalty() if penalty is not None else loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        loss = loss.detach().float()
        nonfinite = ~torch.isfinite(loss) & (first_bad < 0)
        first_bad = torch.where(nonfinite, step, first_bad)
        bad_loss = torch.where(nonfinite, loss, bad_loss)
        tally.loss_sum += loss * len(yb)
        tally.correct += (out.argmax(1) == yb).sum()
        tally.images += len(yb)
        tally.batches += 1
        i = tally.batches
        if i % check_every == 0:
            check()
        if progress is not None and i % progress_every == 0:
            elapsed = seconds_before + time.perf_counter() - t0
            n = tally.images
            progress.update(i, tally.loss_sum.item() / n, tally.correct.item() / n, lr, n / max(elapsed, 1e-9))
        requested = stop is not None and stop()
        if on_every is not None and ((every and i % every == 0) or requested):
            check()
            tally.seconds = seconds_before + time.perf_counter() - t0
            on_every(tally)
        if requested:
            break
    else:
        requested = False
    check()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tally.seconds = seconds_before + time.perf_counter() - t0
    n = max(tally.images, 1)
    return EpochResult(tally.loss_sum.item() / n, tally.correct.item() / n, tally.images, tally.batches,
                       tally.seconds, not requested, tally)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    pipeline: Pipeline,
    amp,
) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode: dropout off, BatchNorm on its running statistics."""
    model.eval()
    device = pipeline.mean.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for xb, yb in batches:
        with amp:
            out = model(pipeline.eval(xb))
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
        n += len(yb)
    return loss_sum.item() / max(n, 1), correct.item() / max(n, 1)


@torch.inference_mode()
def confusion(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    pipeline: Pipeline,
    amp,
    num_classes: int,
) -> tuple[float, torch.Tensor]:
    """(mean loss, confusion matrix) in eval mode; matrix[true, predicted] counts images (CPU, int64)."""
    model.eval()
    device = pipeline.mean.device
    loss_sum = torch.zeros((), device=device)
    counts = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    n = 0
    for xb, yb in batches:
        with amp:
            out = model(pipeline.eval(xb))
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
        counts += torch.bincount(yb * num_classes + out.argmax(1), minlength=num_classes * num_classes)
        n += len(yb)
    return loss_sum.item() / max(n, 1), counts.view(num_classes, num_classes).cpu()


@torch.inference_mode()
def mc_dropout(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    pipeline: Pipeline,
    amp,
    samples: int,
) -> tuple[float, float]:
    """Monte Carlo dropout: (accuracy, mean predictive entropy) of the average of `samples` passes
    with dropout on and everything else (BatchNorm) in eval mode."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    device = pipeline.mean.device
    correct = torch.zeros((), device=device, dtype=torch.long)
    entropy = torch.zeros((), device=device)
    n = 0
    for xb, yb in batches:
        x = pipeline.eval(xb)
        probs = 0
        for _ in range(samples):
            with amp:
                probs = probs + model(x).float().softmax(1)
        probs = probs / samples
        correct += (probs.argmax(1) == yb).sum()
        entropy += -(probs * probs.clamp_min(1e-12).log()).sum()
        n += len(yb)
    model.eval()
    return correct.item() / max(n, 1), entropy.item() / max(n, 1)

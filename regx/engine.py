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
    """Test-only fault injection: REGX_FAULT=kill@STEP or nan@STEP (global optimizer step)."""
    spec = os.environ.get("REGX_FAULT", "")
    if "@" not in spec:
        return None
    kind, step = spec.split("@", 1)
    return kind, int(step)


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    steps: int
    seconds: float


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
    progress=None,
    progress_every: int = 25,
) -> EpochResult:
    model.train()
    device = pipeline.mean.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n, step, t0 = 0, start_step, time.perf_counter()
    fault = fault_at()
    for i, (xb, yb) in enumerate(batches):
        step = start_step + i
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
        total = loss + penalty() if penalty is not None else loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        loss_sum += loss.detach().float() * len(yb)
        correct += (out.argmax(1) == yb).sum()
        n += len(yb)
        if progress is not None and (i + 1) % progress_every == 0:
            elapsed = time.perf_counter() - t0
            progress.update(i + 1, loss_sum.item() / n, correct.item() / n, lr, n / max(elapsed, 1e-9))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return EpochResult(loss_sum.item() / max(n, 1), correct.item() / max(n, 1), n, step - start_step + 1, seconds)


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

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


@dataclass
class Pipeline:
    """uint8 batch on the device -> float in [0, 1] -> augmentation (training only) -> normalized."""

    mean: torch.Tensor  # 1,C,1,1
    std: torch.Tensor
    channels_last: bool
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, xb: torch.Tensor, train: bool) -> torch.Tensor:
        x = xb.float().div_(255)
        if train and self.augment is not None:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


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
        x = pipeline(xb, train=True)
        with amp:
            out = model(x)
            loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
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
            out = model(pipeline(xb, train=False))
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
        n += len(yb)
    return loss_sum.item() / max(n, 1), correct.item() / max(n, 1)

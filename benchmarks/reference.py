"""The reference every regx speed figure is held to: the training loop a user would write by hand.

One step function, fed either by shuffled slices of tensors in memory (`hand_loop` in bench.py) or by
a torchvision DataLoader (`tv_end_to_end`): the two contenders differ only in where batches come from.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def reference_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterable,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool = True,
    scaled: bool = False,
) -> int:
    """Train over (images, labels) batches: normalize, autocast, cross-entropy, SGD; the images seen.
    `scaled`: the images are floats in [0, 1] already (a torchvision pipeline's output), else uint8."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    dtype = torch.bfloat16 if precision == "bf16" else None
    model.train()
    n = 0
    for xb, yb in batches:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        x = ((xb if scaled else xb.float() / 255) - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(yb)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n

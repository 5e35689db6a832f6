"""Where a run computes and at what precision, and the error a run ends with: what training and inference
(eval, predict, export) share without the training loop."""

from __future__ import annotations

import torch

from regx.config import check_device


class RunFailed(RuntimeError):
    """The run stopped with an error; summary.json says `failed` and holds the message."""


def pick_device(spec: str) -> torch.device:
    """auto: CUDA, else MPS, else the CPU; anything else is checked to exist (config.check_device)."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device(spec)
    return torch.device(spec)


def cpu_has_bf16() -> bool:
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p() for p in probes if p is not None)


def pick_precision(spec: str, device: torch.device) -> str:
    """`auto`: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX-512 bf16
    or AMX), else fp32. fp16 needs a GradScaler and is used only when asked for."""
    if spec != "auto":
        return spec
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "32"
    return "32"

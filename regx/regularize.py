"""Weight decay as the course defines it, through explicit optimizer parameter groups.

`wd` is the strength; `decay.name` says how it is applied:
  l2         loss + wd * sum(p^2) over decayed parameters, so each gradient gains 2*wd*p (course (1)-(2));
  decoupled  the optimizer's own weight_decay=wd (AdamW's decoupled decay for adam/adamw; for sgd,
             PyTorch adds wd*p to the gradient, i.e. the L2 form with wd_l2 = wd/2);
  l1         loss + wd * sum(|p|).
`decay.exclude` keeps parameters out of the decay: "bias", "norm" (every normalization layer's
parameters), or fnmatch patterns on parameter names such as "*.fc.*".
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def split_decay(model: nn.Module, exclude) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters, each once, in a stable order."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    decayed, kept = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (
            ("bias" in exclude and name.endswith("bias"))
            or ("norm" in exclude and id(p) in norm_params)
            or any(fnmatch.fnmatch(name, pat) for pat in exclude if pat not in ("bias", "norm"))
        )
        (kept if skip else decayed).append(p)
    return decayed, kept


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    wd: float,
    decay: str,
    exclude=("bias", "norm"),
    momentum: float = 0.9,
    nesterov: bool = True,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """The optimizer over two parameter groups, and the list of parameters the loss penalty covers."""
    decayed, kept = split_decay(model, exclude)
    opt_wd = wd if decay == "decoupled" else 0.0
    groups = [
        {"params": decayed, "weight_decay": opt_wd, "decayed": True},
        {"params": kept, "weight_decay": 0.0, "decayed": False},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    elif name == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return opt, (decayed if decay in ("l2", "l1") and wd > 0 else [])


def penalty(params: list[nn.Parameter], *, decay: str, wd: float) -> torch.Tensor:
    """wd * sum(p^2) for l2, wd * sum(|p|) for l1: the term added to the loss."""
    if decay == "l2":
        return wd * sum(p.pow(2).sum() for p in params)
    if decay == "l1":
        return wd * sum(p.abs().sum() for p in params)
    raise ValueError(f"decay={decay!r} adds no loss term")

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


def split_decay(model: nn.Module, exclude) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decayed, not decayed) parameters, each once, in a stable order. Frozen parameters are
    included: fine-tuning may unfreeze them later, and the optimizer skips them while they have no
    gradient."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    decayed, kept = [], []  # of (name, parameter)
    for name, p in model.named_parameters():
        skip = (
            ("bias" in exclude and name.endswith("bias"))
            or ("norm" in exclude and id(p) in norm_params)
            or any(fnmatch.fnmatch(name, pat) for pat in exclude if pat not in ("bias", "norm"))
        )
        (kept if skip else decayed).append((name, p))
    return decayed, kept


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    wd: float,
    decay: str,
    exclude,
    momentum: float,
    nesterov: bool,
    betas,
    eps: float,
    lr_mult=None,
) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """`exclude`, `momentum`, `nesterov`, `betas`, `eps`: the `decay` and `optim` groups' keys
    (config.py holds their defaults).

    The optimizer over parameter groups (decayed or not, times each learning-rate multiplier
    that `lr_mult(name)` gives, e.g. a fine-tuned backbone's), and the parameters the loss penalty
    covers. The engine sets each group's lr to the schedule's value times its `lr_mult`."""
    decayed, kept = split_decay(model, exclude)
    opt_wd = wd if decay == "decoupled" else 0.0
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for flag, named in ((True, decayed), (False, kept)):
        for n, p in named:
            groups.setdefault((flag, lr_mult(n) if lr_mult else 1.0), []).append(p)
    groups = [
        {"params": ps, "weight_decay": opt_wd if flag else 0.0, "decayed": flag, "lr_mult": mult}
        for (flag, mult), ps in groups.items()
    ]
    if name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    elif name == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return opt, ([p for _, p in decayed] if decay in ("l2", "l1") and wd > 0 else [])


def penalty(params: list[nn.Parameter], *, decay: str, wd: float) -> torch.Tensor:
    """wd * sum(p^2) for l2, wd * sum(|p|) for l1 over the parameters that train now (frozen ones
    would only add a constant): the term added to the loss."""
    if decay == "l2":
        return wd * sum(p.pow(2).sum() for p in params if p.requires_grad)
    if decay == "l1":
        return wd * sum(p.abs().sum() for p in params if p.requires_grad)
    raise ValueError(f"decay={decay!r} adds no loss term")

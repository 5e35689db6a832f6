"""Weight decay as the course defines it, through explicit optimizer parameter groups.

`wd` is the strength; `decay.name` says how it is applied:
  l2         loss + wd * sum(p^2) over decayed parameters, so each gradient gains 2*wd*p and SGD steps
             p <- p - lr*(dloss/dp + 2*wd*p) (the course's formulas); with Adam the term is rescaled by
             the adaptive step like any gradient;
  decoupled  weight decay decoupled from the gradient (Loshchilov & Hutter 2019): every step first
             shrinks p <- p*(1 - lr*wd), then steps on the loss's gradient alone. adam and adamw are
             torch.optim.AdamW; sgd is SGDW below (torch.optim.SGD's own weight_decay adds wd*p to the
             gradient, which goes through the momentum: coupled L2, not this);
  l1         loss + wd * sum(|p|).
`decay.exclude` keeps parameters out of the decay, as timm's param_groups_weight_decay does by default:
"1d" (every parameter with at most one dimension, and every bias: norm scales, layer-scale gammas),
"no_weight_decay" (the names a model's own no_weight_decay() lists: a ViT's pos_embed and cls_token),
"bias", "norm" (normalization layers' parameters), or fnmatch patterns on parameter names ("*.fc.*").
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


TOKENS = ("1d", "no_weight_decay", "bias", "norm")  # decay.exclude's words; anything else is a name pattern


def split_decay(model: nn.Module, exclude) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decayed, not decayed) parameters, each once, in a stable order. Frozen parameters are
    included: fine-tuning may unfreeze them later, and the optimizer skips them while they have no
    gradient."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    patterns = [pat for pat in exclude if pat not in TOKENS]
    if "no_weight_decay" in exclude:  # a model's own list (timm's models), wherever it sits inside regx's wrappers
        patterns += [
            f"{prefix}.{n}" if prefix else n
            for prefix, m in model.named_modules()
            if callable(getattr(m, "no_weight_decay", None))
            for n in m.no_weight_decay()
        ]
    decayed, kept = [], []  # of (name, parameter)
    for name, p in model.named_parameters():
        skip = (
            ("1d" in exclude and (p.ndim <= 1 or name.endswith(".bias")))
            or ("bias" in exclude and name.endswith("bias"))
            or ("norm" in exclude and id(p) in norm_params)
            or any(fnmatch.fnmatch(name, pat) for pat in patterns)
        )
        (kept if skip else decayed).append((name, p))
    return decayed, kept


class SGDW(torch.optim.SGD):
    """SGD with decoupled weight decay (Loshchilov & Hutter 2019, SGDW): each step first shrinks the
    decayed parameters that have a gradient, p <- p*(1 - lr*wd) (wd: a group's `decoupled_weight_decay`,
    lr its current rate, as AdamW scales it), then takes torch.optim.SGD's step on the gradient alone."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd = group.get("decoupled_weight_decay", 0.0)
            params = [p for p in group["params"] if p.grad is not None]
            if wd and params:
                torch._foreach_mul_(params, 1.0 - group["lr"] * wd)
        return super().step(closure)


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
    key = "decoupled_weight_decay" if name == "sgd" else "weight_decay"  # SGD's own weight_decay is coupled
    groups = [
        {"params": ps, key: opt_wd if flag else 0.0, "decayed": flag, "lr_mult": mult}
        for (flag, mult), ps in groups.items()
    ]
    if name == "sgd":
        opt = SGDW(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    elif name in ("adam", "adamw"):  # Adam with decoupled decay is AdamW; with l2 or l1 its decay is 0
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
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

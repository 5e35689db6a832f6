"""Per-sample augmentation of whole batches on the training device.

Each image in a batch draws its own parameters. Flips are exact index flips; rescale, translation and
rotation fold into ONE affine matrix per image, applied by one `affine_grid` + `grid_sample` (a
single interpolation); brightness, contrast, saturation and hue are per-image factors. Random numbers
come from the run's seeded generator, so a run and its resume draw the same augmentations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from regx.config import AUG_OPS
from regx.policies import AugMix, Policy, gamma


@dataclass
class AugParams:
    """Per-sample parameters (tensors of shape [N]); identity values mean 'not applied'."""

    hflip: torch.Tensor  # bool
    vflip: torch.Tensor  # bool
    angle: torch.Tensor  # degrees, counter-clockwise as torchvision's rotate
    scale: torch.Tensor
    tx: torch.Tensor  # translation as a fraction of width (+ = right)
    ty: torch.Tensor  # as a fraction of height (+ = down)
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # in turns
    erase: torch.Tensor | None = None  # N,4 boxes (x0, y0, x1, y1) as fractions; empty box = none
    aspect: torch.Tensor | None = None  # vertical scale / horizontal scale (a resized crop's); None: 1

    @staticmethod
    def identity(n: int, device="cpu") -> AugParams:
        z, o = torch.zeros(n, device=device), torch.ones(n, device=device)
        f = torch.zeros(n, dtype=torch.bool, device=device)
        return AugParams(f, f.clone(), z, o, z.clone(), z.clone(), o.clone(), o.clone(), o.clone(), z.clone())


_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(AugParams))
# How the ops' parts of one field combine (each starts at the identity): shifts and angles add, factors
# multiply, flips toggle, an erasing box is set.
_COMBINE = {
    "hflip": torch.logical_xor,
    "vflip": torch.logical_xor,
    "angle": torch.add,
    "tx": torch.add,
    "ty": torch.add,
    "hue": torch.add,
    "scale": torch.mul,
    "brightness": torch.mul,
    "contrast": torch.mul,
    "saturation": torch.mul,
    "erase": lambda old, new: new,
}


@dataclass(frozen=True)
class Draws:
    """What an op's `params` gets: its uniform draws in [0, 1) by name ([N] each), the batch's shape,
    and its further uniforms of shape (*Op.extra, N) (erasing's boxes, a resized crop's tries)."""

    u: dict[str, torch.Tensor]
    n: int
    height: int
    width: int
    extra: torch.Tensor | None = None


@dataclass(frozen=True)
class Op:
    """A per-image option of the `aug` group: `name` is its AugConfig field (and YAML key), `draws` the
    uniforms it takes per image, by name, and `params(cfg, draws)` its part of each image's AugParams."""

    name: str
    draws: tuple[str, ...]
    params: Callable[[Any, Draws], dict[str, torch.Tensor]]
    geometric: bool = False  # it moves pixels (its parts go into the one affine warp)
    extra: tuple[int, ...] = ()  # the shape, before N, of a further uniform draw it takes (none: ())


OPS: dict[str, Op] = {}  # in the order their parts combine and their own extra draws are made


def op(name: str, *draws: str, geometric: bool = False, extra: tuple[int, ...] = ()):
    """Register an op's `params` function: adding an op is this entry plus its AugConfig field and YAML.
    `params` is pure (no draws of its own: what it needs beyond its uniforms it declares as `extra`),
    so the arithmetic from draws to pixels can be compiled as one graph."""

    def register(params):
        OPS[name] = Op(name, draws, params, geometric, extra)
        return params

    return register


# The uniforms of every batch come in one [rows, N] draw. These rows are laid out as regx 0.1 drew them,
# so a run keeps its random stream; an op's draws that are not here come in a second draw after it,
# made only when such an op is on (so adding one changes no existing run).
FIRST_DRAW = (
    "hflip.on",
    "vflip.on",
    "rotate.on",
    "scale.on",
    "translate.on",
    "erasing.on",
    "color.on",
    "rotate.angle",
    "scale.factor",
    "translate.x",
    "translate.y",
    "color.brightness",
    "color.contrast",
    "color.saturation",
    "color.hue",
    "crop.on",
    "crop.x",
    "crop.y",
    "",
    "",
)


def _between(lo: float, hi: float, u: torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * u


@op("hflip", "on")
def _hflip(c, d: Draws) -> dict[str, torch.Tensor]:
    return {"hflip": d.u["on"] < c.p}


@op("vflip", "on")
def _vflip(c, d: Draws) -> dict[str, torch.Tensor]:
    return {"vflip": d.u["on"] < c.p}


@op("rotate", "on", "angle", geometric=True)
def _rotate(c, d: Draws) -> dict[str, torch.Tensor]:  # degrees uniform in [-degrees, degrees]
    return {"angle": torch.where(d.u["on"] < c.p, _between(-c.degrees, c.degrees, d.u["angle"]), 0.0)}


@op("scale", "on", "factor", geometric=True)
def _scale(c, d: Draws) -> dict[str, torch.Tensor]:
    return {"scale": torch.where(d.u["on"] < c.p, _between(c.min, c.max, d.u["factor"]), 1.0)}


@op("translate", "on", "x", "y", geometric=True)
def _translate(c, d: Draws) -> dict[str, torch.Tensor]:  # one draw decides both axes
    on, f = d.u["on"] < c.p, c.fraction
    return {
        "tx": torch.where(on, _between(-f, f, d.u["x"]), 0.0),
        "ty": torch.where(on, _between(-f, f, d.u["y"]), 0.0),
    }


@op("crop", "on", "x", "y", geometric=True)
def _crop(c, d: Draws) -> dict[str, torch.Tensor]:
    """Pad-and-crop as a whole-pixel shift in [-pad, pad]: exact under bilinear sampling."""
    on, span = d.u["on"] < c.p, 2 * c.pad + 1
    return {
        "tx": torch.where(on, torch.floor(d.u["x"] * span) - c.pad, 0.0) / d.width,
        "ty": torch.where(on, torch.floor(d.u["y"] * span) - c.pad, 0.0) / d.height,
    }


@op("color", "on", "brightness", "contrast", "saturation", "hue")
def _color(c, d: Draws) -> dict[str, torch.Tensor]:  # factors in [1-b, 1+b], a hue shift in [-hue, hue]
    on, u = d.u["on"] < c.p, d.u
    return {
        "brightness": torch.where(on, _between(1 - c.brightness, 1 + c.brightness, u["brightness"]), 1.0),
        "contrast": torch.where(on, _between(1 - c.contrast, 1 + c.contrast, u["contrast"]), 1.0),
        "saturation": torch.where(on, _between(1 - c.saturation, 1 + c.saturation, u["saturation"]), 1.0),
        "hue": torch.where(on, _between(-c.hue, c.hue, u["hue"]), 0.0),
    }


@op("erasing", "on", extra=(4, 10))
def _erasing(c, d: Draws) -> dict[str, torch.Tensor]:
    """Random erasing (Zhong et al. 2020) as torchvision's RandomErasing.get_params draws it: 10 tries of
    an area uniform in [area_min, area_max] of the image and an aspect (height/width) log-uniform in
    [1/ratio, ratio], rounded to whole pixels; the first box smaller than the image on both sides is
    placed at a uniform whole-pixel position; where none is, the image is not erased. The box is filled
    with noise drawn by `Augment.images`."""
    h_img, w_img, u = d.height, d.width, d.extra
    area = _between(h_img * w_img * c.area_min, h_img * w_img * c.area_max, u[0])
    root = torch.exp(math.log(c.ratio) * u[1] - math.log(c.ratio) / 2)  # the square root of the aspect
    side = torch.sqrt(area)
    h, w = torch.round(side * root), torch.round(side / root)
    fits = (h < h_img) & (w < w_img)
    first = torch.argmax(fits.int(), 0, keepdim=True)  # the first try that fits
    h, w, pos = h.gather(0, first)[0], w.gather(0, first)[0], u[2:].gather(1, first.expand(2, 1, -1))[:, 0]
    i = torch.floor(pos[0] * (h_img - h + 1))  # get_params' randint(0, img_h - h + 1)
    j = torch.floor(pos[1] * (w_img - w + 1))
    box = torch.stack([j / w_img, i / h_img, (j + w) / w_img, (i + h) / h_img], 1)
    on = (d.u["on"] < c.p) & fits.any(0)
    return {"erase": torch.where(on.view(-1, 1), box, torch.zeros_like(box))}


@op("rrc", "on", geometric=True, extra=(4, 10))
def _rrc(c, d: Draws) -> dict[str, torch.Tensor]:
    """torchvision's RandomResizedCrop per image: get_params' crop (10 tries of an area in [scale_min,
    scale_max] of the image and a log-uniform aspect ratio in [ratio_min, ratio_max], the first that fits,
    at a uniform whole-pixel position; else the centre crop at the clamped ratio), resized to the image's
    size: as one affine map, a horizontal and a vertical scale and the shift that centres the crop."""
    h_img, w_img, u = d.height, d.width, d.extra
    area = h_img * w_img * _between(c.scale_min, c.scale_max, u[0])
    ratio = torch.exp(_between(math.log(c.ratio_min), math.log(c.ratio_max), u[1]))
    w, h = torch.round(torch.sqrt(area * ratio)), torch.round(torch.sqrt(area / ratio))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = torch.argmax(fits.int(), 0, keepdim=True)  # the first try that fits
    w, h, found = w.gather(0, first)[0], h.gather(0, first)[0], fits.any(0)
    i = torch.floor(u[2].gather(0, first)[0] * (h_img - h + 1))  # get_params' randint(0, height - h + 1)
    j = torch.floor(u[3].gather(0, first)[0] * (w_img - w + 1))
    in_ratio = w_img / h_img  # no try fits: the whole image, cut to the nearest allowed ratio, centred
    if in_ratio < c.ratio_min:
        fw, fh = w_img, round(w_img / c.ratio_min)
    elif in_ratio > c.ratio_max:
        fw, fh = round(h_img * c.ratio_max), h_img
    else:
        fw, fh = w_img, h_img
    w, h = torch.where(found, w, float(fw)), torch.where(found, h, float(fh))
    i, j = torch.where(found, i, float((h_img - fh) // 2)), torch.where(found, j, float((w_img - fw) // 2))
    on = d.u["on"] < c.p
    sx, sy = w_img / w, h_img / h
    cx, cy = (j + w / 2) / w_img, (i + h / 2) / h_img  # the crop's centre, as fractions of the image
    return {
        "scale": torch.where(on, sx, 1.0),
        "aspect": torch.where(on, sy / sx, 1.0),
        "tx": torch.where(on, -sx * (cx - 0.5), 0.0),
        "ty": torch.where(on, -sy * (cy - 0.5), 0.0),
    }


# The options that transform whole images before the per-image ops (their draws are their own):
POLICIES = {  # AugConfig field -> Policy from its config (regx/policies.py)
    "trivialaugment": lambda c, g: Policy("trivialaugment", p=c.p, bins=c.bins, generator=g),
    "randaugment": lambda c, g: Policy(
        "randaugment", p=c.p, bins=c.bins, generator=g, num_ops=c.num_ops, magnitude=c.magnitude
    ),
    "autoaugment": lambda c, g: Policy("autoaugment", p=c.p, bins=10, generator=g, policy=c.policy),
}
MIXES = ("mixup", "cutmix")  # after them, on the batch: Augment.sample_mix
STAGES = {
    **{k: "op" for k in OPS},
    **{k: "policy" for k in POLICIES},
    "augmix": "augmix",
    **{k: "mix" for k in MIXES},
}  # every AugConfig field, and where it is applied


@dataclass
class Mix:
    """Mixup/cutmix of a batch: sample i becomes lam[i] parts itself and 1-lam[i] parts sample perm[i]."""

    perm: torch.Tensor
    lam: torch.Tensor  # 1 where a sample is not mixed
    cut: torch.Tensor  # bool: cutmix (a pasted box) instead of mixup (a blend)
    box: torch.Tensor  # N,3 for cutmix: the box centre's uniforms (x, y) and its side as a fraction (0: none)


class Augment:
    """Draws per-sample parameters from an AugConfig-shaped mapping and applies them.

    A batch is drawn first (every random number, from the run's generator) and then made, by `made`:
    each image's parameters from its draws, then the pixels. `made` draws nothing and reads no value
    back to the host, so with `compiled` it is compiled (per batch shape, dynamic=False) into a few
    fused kernels: on a GPU a small batch is bound by kernel launches, one or more per operator."""

    def __init__(self, cfg, generator: torch.Generator, *, compiled: bool = False):
        self.cfg, self.g = cfg, generator
        # the config's values, read once: reading an OmegaConf node costs microseconds every step
        self.c = {k: SimpleNamespace(**v) if isinstance(v, dict) else v for k, v in _plain(cfg).items()}
        self.stages = stages_of(cfg)
        self.on = [o for o in OPS.values() if self.c[o.name].p > 0]
        self.later = [f"{o.name}.{d}" for o in self.on for d in o.draws if f"{o.name}.{d}" not in FIRST_DRAW]
        self.n_views, self.mixing, self.erasing = self.views(cfg), self.mixes(cfg), self.c["erasing"].p > 0
        self._policies, self._augmix = None, None
        self.compiled = compiled
        self._made = torch.compile(self.made, dynamic=False) if compiled else self.made

    @staticmethod
    def active(cfg) -> bool:
        return any(cfg[k].p > 0 for k in AUG_OPS)

    @staticmethod
    def mixes(cfg) -> bool:
        return cfg.mixup.p > 0 or cfg.cutmix.p > 0

    def draw(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """A batch's uniforms for the per-image ops, in the stream's order: FIRST_DRAW's rows, the other
        rows of the ops that are on, then each such op's `extra` draw, in OPS' order."""
        g = self.g
        first = torch.rand(len(FIRST_DRAW), n, generator=g, device=device)
        later = torch.rand(len(self.later), n, generator=g, device=device) if self.later else None
        extra = [torch.rand(*o.extra, n, generator=g, device=device) for o in self.on if o.extra]
        return first, later, extra

    def params(
        self, first: torch.Tensor, later: torch.Tensor | None, extra: list[torch.Tensor], size: tuple[int, int]
    ) -> AugParams:
        """Each image's parameters from its draws: each op that is on adds its part, in OPS' order."""
        n = first.shape[1]
        rows = {name: row for name, row in zip(FIRST_DRAW, first) if name}
        if later is not None:
            rows.update(zip(self.later, later))
        params, extras = AugParams.identity(n, first.device), iter(extra)
        for o in self.on:
            u = {d: rows[f"{o.name}.{d}"] for d in o.draws}
            draws = Draws(u, n, size[0], size[1], next(extras) if o.extra else None)
            for field_name, part in o.params(self.c[o.name], draws).items():
                old = getattr(params, field_name)
                setattr(params, field_name, part if old is None else _COMBINE[field_name](old, part))
        return params

    def sample(self, n: int, size: tuple[int, int], device) -> AugParams:
        """Each image's parameters, drawn: the ops' uniforms (FIRST_DRAW, then any others), then each op
        that is on adds its part, in OPS' order."""
        return self.params(*self.draw(n, device), size)

    def sample_mix(self, n: int, device) -> Mix:
        c, g = self.c, self.g
        u = torch.rand(4, n, generator=g, device=device)
        perm = torch.randperm(n, generator=g, device=device)
        mixup, cutmix = u[0] < c["mixup"].p, (u[0] >= c["mixup"].p) & (u[0] < c["mixup"].p + c["cutmix"].p)
        lam = torch.ones(n, device=device)
        lam = torch.where(mixup, beta(c["mixup"].alpha, n, g, device), lam)
        lam_cut = beta(c["cutmix"].alpha, n, g, device)
        side = torch.where(cutmix, torch.sqrt(1 - lam_cut), 0.0)  # the pasted box covers 1 - lam of the area
        box = torch.stack([u[3], u[2], side], 1)  # its centre's uniforms (x, y) and side: mix() places it
        return Mix(perm=perm, lam=lam, cut=cutmix, box=box)

    @staticmethod
    def views(cfg) -> int:
        """Images per input image: 3 (the clean one and two AugMix views) with AugMix's consistency loss."""
        return 3 if cfg.augmix.p > 0 and cfg.augmix.jsd > 0 else 1

    def policies(self, x: torch.Tensor) -> torch.Tensor:
        """The POLICIES that are on, in order, first, on the image as it came (AugMix, made here too,
        follows them in `images`)."""
        if self._policies is None:  # made once: each keeps its tables on the device
            m = self.cfg.augmix
            self._policies = [make(self.cfg[k], self.g) for k, make in POLICIES.items() if self.cfg[k].p > 0]
            self._augmix = (
                AugMix(
                    p=m.p,
                    severity=m.severity,
                    width=m.width,
                    depth=m.depth,
                    alpha=m.alpha,
                    all_ops=m.all_ops,
                    generator=self.g,
                )
                if m.p > 0
                else None
            )
        for policy in self._policies:
            x = policy(x)
        return x

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Policies, AugMix, then flips, affine, colour and erasing, each sample with its own parameters.
        With AugMix's consistency loss (`views` 3) the result is [clean; AugMix; AugMix], 3N images,
        the three views of an image sharing its flips, affine, colour and erasing."""
        x = self.policies(x)
        if self._augmix is not None:
            x = torch.cat([x, self._augmix(x), self._augmix(x)]) if self.n_views == 3 else self._augmix(x)
        n = x.shape[0] // self.n_views
        noise = torch.rand((n, *x.shape[1:]), generator=self.g, device=x.device) if self.erasing else None
        return self._made(x, *self.draw(n, x.device), noise)

    def made(
        self,
        x: torch.Tensor,
        first: torch.Tensor,
        later: torch.Tensor | None,
        extra: list[torch.Tensor],
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """The batch `x` augmented as its draws say: their parameters (each repeated over the views of
        an image), then `apply`; sync-free when compiled (a host read would split the graph)."""
        params = self.params(first, later, extra, x.shape[-2:])
        if self.n_views > 1:
            params = AugParams(
                *(
                    None if v is None else v.repeat(self.n_views, *[1] * (v.dim() - 1))
                    for v in (getattr(params, f) for f in _PARAM_FIELDS)
                )
            )
            noise = None if noise is None else noise.repeat(self.n_views, 1, 1, 1)
        return apply(x, params, noise, stages=self.stages, sync_free=True if self.compiled else None)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Mix | None]:
        """Augment a batch; with mixup/cutmix on, also mix it (the Mix says how, for the loss)."""
        x = self.images(x)
        if not self.mixing:
            return x, None
        m = self.sample_mix(x.shape[0], x.device)
        return mix(x, m), m


def _plain(cfg) -> dict:
    """An AugConfig-shaped mapping (an OmegaConf node or a dict) as plain Python values."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def beta(alpha: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    """Beta(alpha, alpha) samples from `g` (torch.distributions takes no generator)."""
    a, b = gamma(alpha, n, g, device), gamma(alpha, n, g, device)
    return a / (a + b)


def _box_mask(box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """N,1,H,W bool mask of the pixels whose centres fall inside each sample's box."""
    ys = (torch.arange(h, device=box.device) + 0.5) / h
    xs = (torch.arange(w, device=box.device) + 0.5) / w
    inside_y = (ys.view(1, -1) >= box[:, 1:2]) & (ys.view(1, -1) < box[:, 3:4])
    inside_x = (xs.view(1, -1) >= box[:, 0:1]) & (xs.view(1, -1) < box[:, 2:3])
    return (inside_y.unsqueeze(2) & inside_x.unsqueeze(1)).unsqueeze(1)


def cut_box(draw: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """CutMix's box as timm's rand_bbox and torchvision's CutMix place it (Yun et al. 2019's code), from
    Mix.box's draws: whole-pixel sides int(h * side) and int(w * side), centred on a uniform pixel, clipped
    to the image; as N,4 fractions (x0, y0, x1, y1) for _box_mask."""
    out = []
    for size, u in ((w, draw[:, 0]), (h, draw[:, 1])):
        centre, cut = torch.floor(u * size), torch.floor(draw[:, 2] * size)
        low = (centre - torch.floor(cut / 2)).clamp(0, size)
        high = (centre + torch.floor((cut + 1) / 2)).clamp(0, size)
        out.append((low / size, high / size))
    (x0, x1), (y0, y1) = out
    return torch.stack([x0, y0, x1, y1], 1)


def mix(x: torch.Tensor, m: Mix) -> torch.Tensor:
    """Apply a Mix to a batch. For cutmix, m.lam is set to the exact unpasted fraction of pixels
    (the box was clipped at the border), which is what the loss must weigh."""
    other = x[m.perm]
    lam = m.lam.view(-1, 1, 1, 1)
    out = lam * x + (1 - lam) * other
    if x.device.type != "cpu" or bool(m.cut.any()):  # off CPU: no host read, the mask is cheap
        mask = _box_mask(cut_box(m.box, x.shape[-2], x.shape[-1]), x.shape[-2], x.shape[-1])
        out = torch.where(m.cut.view(-1, 1, 1, 1), torch.where(mask, other, x), out)
        m.lam = torch.where(m.cut, 1 - mask.float().mean(dim=(1, 2, 3)), m.lam)
    return out


def jsd_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weight: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """AugMix's loss on [clean; view 1; view 2] logits (3N rows for N labels), as timm's
    JsdCrossEntropy: cross-entropy on the clean third, plus `weight` times the Jensen-Shannon divergence
    of the three predictions (the mean KL divergence of each from their mixture, clamped at 1e-7)."""
    logits = logits.float()
    n = len(y)
    loss = F.cross_entropy(logits[:n], y, label_smoothing=label_smoothing)
    probs = logits.softmax(1).view(3, n, -1)
    log_mixture = probs.mean(0).clamp(1e-7, 1).log()
    js = sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / 3
    return loss + weight * js


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, m: Mix, label_smoothing: float = 0.0) -> torch.Tensor:
    """lam * CE(y) + (1 - lam) * CE(y[perm]), per sample, averaged."""
    ce_a = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    ce_b = F.cross_entropy(logits, y[m.perm], reduction="none", label_smoothing=label_smoothing)
    return (m.lam * ce_a + (1 - m.lam) * ce_b).mean()


APPLY_STAGES = frozenset({"hflip", "vflip", "warp", "colour", "hue"})


def stages_of(cfg) -> frozenset[str]:
    """The stages of `apply` that an AugConfig-shaped mapping can turn on: a flip whose p > 0, the warp
    when an op that moves pixels is on, colour when aug.color is on (and hue when it shifts hue)."""
    on = {flip for flip in ("hflip", "vflip") if cfg[flip].p > 0}
    if any(cfg[o.name].p > 0 for o in OPS.values() if o.geometric):
        on.add("warp")
    if cfg.color.p > 0:
        on |= {"colour", "hue"} if cfg.color.hue > 0 else {"colour"}
    return frozenset(on)


def apply(
    x: torch.Tensor,
    p: AugParams,
    noise: torch.Tensor | None = None,
    *,
    stages: frozenset[str] = APPLY_STAGES,
    sync_free: bool | None = None,
) -> torch.Tensor:
    """Augment float images in [0, 1] (N,C,H,W) with per-sample parameters.

    On CPU only the images an operation changes are processed (found with nonzero/any, which are
    free there). On an accelerator those reads would stall the device every step, so there
    (`sync_free`, the default off CPU) every image is processed and torch.where keeps the unchanged
    ones exact. A stage not in `stages` (`stages_of`: nothing in the config turns it on) is skipped
    outright: off CPU it would otherwise cost its kernels on every image every step.
    """
    sync_free = x.device.type != "cpu" if sync_free is None else sync_free
    owned = False  # the caller's tensor is never written to; ours is changed in place
    for flip, dim in ((p.hflip, -1), (p.vflip, -2)):
        if ("hflip" if dim == -1 else "vflip") not in stages:
            continue
        if sync_free:
            x, owned = torch.where(flip.view(-1, 1, 1, 1), x.flip(dim), x), True
            continue
        idx = torch.nonzero(flip).flatten()
        if len(idx):  # only the flipped images are copied
            x, owned = (x, owned) if owned else (x.clone(), True)
            x.index_copy_(0, idx, x[idx].flip(dim))
    warped = _warp(x, p, sync_free) if "warp" in stages else None
    if warped is not None:
        x, owned = warped, True
    if "colour" in stages:
        moved = (p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0)
        hue = "hue" in stages
        if sync_free:
            x = torch.where(moved.view(-1, 1, 1, 1), color(x, p, sync_free=True, hue=hue), x)
        else:
            idx = torch.nonzero(moved).flatten()
            if len(idx):  # only the images whose colour changes pay for it
                sub = AugParams(*(None if v is None else v[idx] for v in (getattr(p, f) for f in _PARAM_FIELDS)))
                x = x if owned else x.clone()
                x.index_copy_(0, idx, color(x[idx], sub, hue=hue))
    if p.erase is not None:
        fill = noise if noise is not None else torch.zeros_like(x)
        x = torch.where(_box_mask(p.erase, x.shape[-2], x.shape[-1]), fill, x)
    return x


def _warp(x: torch.Tensor, p: AugParams, sync_free: bool) -> torch.Tensor | None:
    """The one affine warp of the images that move (every image, the others kept by torch.where, when
    `sync_free`); None when no image moves."""
    moves = (p.angle != 0) | (p.scale != 1) | (p.tx != 0) | (p.ty != 0)
    if p.aspect is not None:
        moves = moves | (p.aspect != 1)
    if sync_free or bool(moves.any()):
        warped = F.grid_sample(
            x,
            F.affine_grid(affine_theta(p, x.shape), list(x.shape), align_corners=False),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        return torch.where(moves.view(-1, 1, 1, 1), warped, x) if sync_free else warped
    return None


def affine_theta(p: AugParams, shape) -> torch.Tensor:
    """The 2x3 matrices mapping output to input coordinates (affine_grid's convention).

    The forward map scales by s (vertically by s * aspect), rotates counter-clockwise by the angle and
    shifts by (tx, ty), all about the image centre, in pixel units (non-square images rotate without
    shear).
    """
    _, _, h, w = shape
    a = p.angle * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    # In pixel coordinates (y down), a counter-clockwise rotation on screen is [[c, s], [-s, c]];
    # its inverse, divided by the scale, maps output pixels back to input pixels.
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / p.scale.view(-1, 1, 1)
    if p.aspect is not None:  # a vertical scale of its own (a resized crop): the y row divides by it too
        inv = torch.cat([inv[:, :1], inv[:, 1:] / p.aspect.view(-1, 1, 1)], 1)
    # affine_grid works in normalized coordinates: convert pixel offsets with D = diag(2/w, 2/h).
    d = torch.tensor([2.0 / w, 2.0 / h], device=inv.device)
    lin = inv * d.view(1, 2, 1) / d.view(1, 1, 2)
    t = torch.stack([p.tx * 2, p.ty * 2], -1)  # shift in normalized units
    offset = -(lin @ t.unsqueeze(-1))
    return torch.cat([lin, offset], dim=-1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def color(x: torch.Tensor, p: AugParams, *, sync_free: bool = False, hue: bool = True) -> torch.Tensor:
    """Brightness, contrast, saturation, then hue (unless `hue` is False: no image's hue moves), each
    clamped to [0, 1] as torchvision does."""
    x = (x * p.brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    c = p.contrast.view(-1, 1, 1, 1)
    x = (c * x + (1 - c) * mean).clamp(0, 1)
    if x.shape[1] == 3:
        s = p.saturation.view(-1, 1, 1, 1)
        x = (s * x + (1 - s) * _gray(x)).clamp(0, 1)
        if not hue:
            return x
        if sync_free:
            hsv = rgb_to_hsv(x)
            h = hsv[:, 0] + p.hue.view(-1, 1, 1)
            hsv[:, 0] = h - h.floor()
            return torch.where((p.hue != 0).view(-1, 1, 1, 1), hsv_to_rgb(hsv), x)
        idx = torch.nonzero(p.hue != 0).flatten()
        if len(idx):  # only the images whose hue moves pay for the HSV round trip
            hsv = rgb_to_hsv(x[idx])
            h = hsv[:, 0] + p.hue[idx].view(-1, 1, 1)
            hsv[:, 0] = h - h.floor()  # wrap to [0, 1); cheaper than % on CPU
            x.index_copy_(0, idx, hsv_to_rgb(hsv))  # x is color()'s own intermediate
    return x


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    # Elementwise over the three channel planes: reductions over a dimension of size 3 are slow on CPU.
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    # hue sector from the largest channel (r first on ties, as torchvision): r -> (g-b)/delta,
    # g -> 2 + (b-r)/delta, b -> 4 + (r-g)/delta
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = h / 6
    h = torch.where(delta > 0, h - h.floor(), torch.zeros_like(h))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    return torch.cat([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    # Closed form: channel n is v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6, n = 5, 3, 1.
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    k = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + h * 6  # in [1, 11)
    k = torch.where(k >= 6, k - 6, k)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)

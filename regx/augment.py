"""Per-sample augmentation of whole batches on the training device.

Each image in a batch draws its own parameters. Flips are exact index flips; rescale, translation and
rotation fold into ONE affine matrix per image, applied by one `affine_grid` + `grid_sample` (a
single interpolation); brightness, contrast, saturation and hue are per-image factors. Random numbers
come from the run's seeded generator, so a run and its resume draw the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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

    @staticmethod
    def identity(n: int, device="cpu") -> AugParams:
        z, o = torch.zeros(n, device=device), torch.ones(n, device=device)
        f = torch.zeros(n, dtype=torch.bool, device=device)
        return AugParams(f, f.clone(), z, o, z.clone(), z.clone(), o.clone(), o.clone(), o.clone(), z.clone())


_PARAM_FIELDS = ("hflip", "vflip", "angle", "scale", "tx", "ty", "brightness", "contrast", "saturation", "hue", "erase")


@dataclass
class Mix:
    """Mixup/cutmix of a batch: sample i becomes lam[i] parts itself and 1-lam[i] parts sample perm[i]."""

    perm: torch.Tensor
    lam: torch.Tensor  # 1 where a sample is not mixed
    cut: torch.Tensor  # bool: cutmix (a pasted box) instead of mixup (a blend)
    box: torch.Tensor  # N,4 boxes for cutmix, as fractions


class Augment:
    """Draws per-sample parameters from an AugConfig-shaped mapping and applies them."""

    def __init__(self, cfg, generator: torch.Generator):
        self.cfg, self.g = cfg, generator
        self._policies, self._augmix = None, None

    @staticmethod
    def active(cfg) -> bool:
        from regx.config import AUG_OPS

        return any(cfg[k].p > 0 for k in AUG_OPS)

    @staticmethod
    def mixes(cfg) -> bool:
        return cfg.mixup.p > 0 or cfg.cutmix.p > 0

    def sample(self, n: int, size: tuple[int, int], device) -> AugParams:
        c, g = self.cfg, self.g
        h, w = size
        u = torch.rand(20, n, generator=g, device=device)  # one draw per batch, fixed layout

        def on(row, p):
            return u[row] < p

        def between(row, lo, hi):
            return lo + (hi - lo) * u[row]

        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        col = on(6, c.color.p)
        b, ct, s, hue = c.color.brightness, c.color.contrast, c.color.saturation, c.color.hue
        # pad-and-crop: a whole-pixel shift in [-pad, pad], exact under bilinear sampling
        crop = on(15, c.crop.p)
        dx = torch.where(crop, torch.floor(u[16] * (2 * c.crop.pad + 1)) - c.crop.pad, zero) / w
        dy = torch.where(crop, torch.floor(u[17] * (2 * c.crop.pad + 1)) - c.crop.pad, zero) / h
        return AugParams(
            hflip=on(0, c.hflip.p),
            vflip=on(1, c.vflip.p),
            angle=torch.where(on(2, c.rotate.p), between(7, -c.rotate.degrees, c.rotate.degrees), zero),
            scale=torch.where(on(3, c.scale.p), between(8, c.scale.min, c.scale.max), one),
            tx=torch.where(on(4, c.translate.p), between(9, -c.translate.fraction, c.translate.fraction), zero) + dx,
            ty=torch.where(on(4, c.translate.p), between(10, -c.translate.fraction, c.translate.fraction), zero) + dy,
            brightness=torch.where(col, between(11, 1 - b, 1 + b), one),
            contrast=torch.where(col, between(12, 1 - ct, 1 + ct), one),
            saturation=torch.where(col, between(13, 1 - s, 1 + s), one),
            hue=torch.where(col, between(14, -hue, hue), zero),
            erase=self._erase_boxes(on(5, c.erasing.p), h, w, device) if c.erasing.p > 0 else None,
        )

    def _erase_boxes(self, chosen: torch.Tensor, h: int, w: int, device) -> torch.Tensor:
        e, n = self.cfg.erasing, chosen.shape[0]
        u = torch.rand(4, n, generator=self.g, device=device)
        area = e.area_min + (e.area_max - e.area_min) * u[0]
        log_r = math.log(e.ratio) * (2 * u[1] - 1)
        aspect = torch.exp(log_r) * (w / h)  # box width/height in fractions of the image
        bh = torch.sqrt(area / aspect).clamp(max=1.0)
        bw = (area / bh).clamp(max=1.0)
        y0, x0 = u[2] * (1 - bh), u[3] * (1 - bw)
        box = torch.stack([x0, y0, x0 + bw, y0 + bh], 1)
        return torch.where(chosen.view(-1, 1), box, torch.zeros_like(box))

    def sample_mix(self, n: int, device) -> Mix:
        c, g = self.cfg, self.g
        u = torch.rand(4, n, generator=g, device=device)
        perm = torch.randperm(n, generator=g, device=device)
        mixup, cutmix = u[0] < c.mixup.p, (u[0] >= c.mixup.p) & (u[0] < c.mixup.p + c.cutmix.p)
        lam = torch.ones(n, device=device)
        lam = torch.where(mixup, beta(c.mixup.alpha, n, g, device), lam)
        lam_cut = beta(c.cutmix.alpha, n, g, device)
        side = torch.sqrt(1 - lam_cut)  # the pasted box covers 1 - lam of the area
        cy, cx = u[2], u[3]
        box = torch.stack([(cx - side / 2).clamp(0, 1), (cy - side / 2).clamp(0, 1),
                           (cx + side / 2).clamp(0, 1), (cy + side / 2).clamp(0, 1)], 1)
        box = torch.where(cutmix.view(-1, 1), box, torch.zeros_like(box))
        return Mix(perm=perm, lam=lam, cut=cutmix, box=box)

    @staticmethod
    def views(cfg) -> int:
        """Images per input image: 3 (the clean one and two AugMix views) with AugMix's consistency loss."""
        return 3 if cfg.augmix.p > 0 and cfg.augmix.jsd > 0 else 1

    def policies(self, x: torch.Tensor) -> torch.Tensor:
        """TrivialAugment, RandAugment and AutoAugment (regx/policies.py), first, on the image as it came
        (AugMix, made here too, follows them in `images`)."""
        if self._policies is None:  # made once: each keeps its tables on the device
            t, r, a, m = self.cfg.trivialaugment, self.cfg.randaugment, self.cfg.autoaugment, self.cfg.augmix
            self._policies = [
                *([Policy("trivialaugment", p=t.p, bins=t.bins, generator=self.g)] if t.p > 0 else []),
                *([Policy("randaugment", p=r.p, bins=r.bins, generator=self.g, num_ops=r.num_ops,
                          magnitude=r.magnitude)] if r.p > 0 else []),
                *([Policy("autoaugment", p=a.p, bins=10, generator=self.g, policy=a.policy)] if a.p > 0 else [])]
            self._augmix = AugMix(p=m.p, severity=m.severity, width=m.width, depth=m.depth, alpha=m.alpha,
                                  all_ops=m.all_ops, generator=self.g) if m.p > 0 else None
        for policy in self._policies:
            x = policy(x)
        return x

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Policies, AugMix, then flips, affine, colour and erasing, each sample with its own parameters.
        With AugMix's consistency loss (`views` 3) the result is [clean; AugMix; AugMix], 3N images,
        the three views of an image sharing its flips, affine, colour and erasing."""
        x = self.policies(x)
        views = self.views(self.cfg)
        if self._augmix is not None:
            x = torch.cat([x, self._augmix(x), self._augmix(x)]) if views == 3 else self._augmix(x)
        n = x.shape[0] // views
        noise = torch.rand((n, *x.shape[1:]), generator=self.g, device=x.device) if self.cfg.erasing.p > 0 else None
        geometric = any(self.cfg[k].p > 0 for k in ("rotate", "scale", "translate", "crop"))
        params = self.sample(n, x.shape[-2:], x.device)
        if views > 1:
            params = AugParams(*(None if v is None else v.repeat(views, *[1] * (v.dim() - 1))
                                 for v in (getattr(params, f) for f in _PARAM_FIELDS)))
            noise = None if noise is None else noise.repeat(views, 1, 1, 1)
        return apply(x, params, noise, geometric=geometric)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Mix | None]:
        """Augment a batch; with mixup/cutmix on, also mix it (the Mix says how, for the loss)."""
        x = self.images(x)
        if not self.mixes(self.cfg):
            return x, None
        m = self.sample_mix(x.shape[0], x.device)
        return mix(x, m), m


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


def mix(x: torch.Tensor, m: Mix) -> torch.Tensor:
    """Apply a Mix to a batch. For cutmix, m.lam is set to the exact unpasted fraction of pixels
    (the box was clipped at the border), which is what the loss must weigh."""
    other = x[m.perm]
    lam = m.lam.view(-1, 1, 1, 1)
    out = lam * x + (1 - lam) * other
    if x.device.type != "cpu" or bool(m.cut.any()):  # off CPU: no host read, the mask is cheap
        mask = _box_mask(m.box, x.shape[-2], x.shape[-1])
        out = torch.where(m.cut.view(-1, 1, 1, 1), torch.where(mask, other, x), out)
        m.lam = torch.where(m.cut, 1 - mask.float().mean(dim=(1, 2, 3)), m.lam)
    return out


def jsd_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
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


def apply(x: torch.Tensor, p: AugParams, noise: torch.Tensor | None = None, *, geometric: bool | None = None,
          sync_free: bool | None = None) -> torch.Tensor:
    """Augment float images in [0, 1] (N,C,H,W) with per-sample parameters.

    On CPU only the images an operation changes are processed (found with nonzero/any, which are
    free there). On an accelerator those reads would stall the device every step, so there
    (`sync_free`, the default off CPU) every image is processed and torch.where keeps the unchanged
    ones exact. `geometric=False` (nothing in the config moves images) skips the warp outright.
    """
    sync_free = x.device.type != "cpu" if sync_free is None else sync_free
    owned = False  # the caller's tensor is never written to; ours is changed in place
    for flip, dim in ((p.hflip, -1), (p.vflip, -2)):
        if sync_free:
            x, owned = torch.where(flip.view(-1, 1, 1, 1), x.flip(dim), x), True
            continue
        idx = torch.nonzero(flip).flatten()
        if len(idx):  # only the flipped images are copied
            x, owned = (x, owned) if owned else (x.clone(), True)
            x.index_copy_(0, idx, x[idx].flip(dim))
    moves = (p.angle != 0) | (p.scale != 1) | (p.tx != 0) | (p.ty != 0)
    if geometric is not False and (sync_free or bool(moves.any())):
        warped = F.grid_sample(x, F.affine_grid(affine_theta(p, x.shape), list(x.shape), align_corners=False),
                               mode="bilinear", padding_mode="zeros", align_corners=False)
        x = torch.where(moves.view(-1, 1, 1, 1), warped, x) if sync_free else warped
        owned = True
    moved = (p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0)
    if sync_free:
        x = torch.where(moved.view(-1, 1, 1, 1), color(x, p, sync_free=True), x)
    else:
        idx = torch.nonzero(moved).flatten()
        if len(idx):  # only the images whose colour changes pay for it
            sub = AugParams(*(None if v is None else v[idx] for v in (getattr(p, f) for f in _PARAM_FIELDS)))
            x = x if owned else x.clone()
            x.index_copy_(0, idx, color(x[idx], sub))
    if p.erase is not None:
        fill = noise if noise is not None else torch.zeros_like(x)
        x = torch.where(_box_mask(p.erase, x.shape[-2], x.shape[-1]), fill, x)
    return x


def affine_theta(p: AugParams, shape) -> torch.Tensor:
    """The 2x3 matrices mapping output to input coordinates (affine_grid's convention).

    The forward map scales by s, rotates counter-clockwise by the angle and shifts by (tx, ty), all
    about the image centre, in pixel units (non-square images rotate without shear).
    """
    _, _, h, w = shape
    a = p.angle * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    # In pixel coordinates (y down), a counter-clockwise rotation on screen is [[c, s], [-s, c]];
    # its inverse, divided by the scale, maps output pixels back to input pixels.
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / p.scale.view(-1, 1, 1)
    # affine_grid works in normalized coordinates: convert pixel offsets with D = diag(2/w, 2/h).
    d = torch.tensor([2.0 / w, 2.0 / h], device=inv.device)
    lin = inv * d.view(1, 2, 1) / d.view(1, 1, 2)
    t = torch.stack([p.tx * 2, p.ty * 2], -1)  # shift in normalized units
    offset = -(lin @ t.unsqueeze(-1))
    return torch.cat([lin, offset], dim=-1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def color(x: torch.Tensor, p: AugParams, *, sync_free: bool = False) -> torch.Tensor:
    """Brightness, contrast, saturation, then hue, each clamped to [0, 1] as torchvision does."""
    x = (x * p.brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    c = p.contrast.view(-1, 1, 1, 1)
    x = (c * x + (1 - c) * mean).clamp(0, 1)
    if x.shape[1] == 3:
        s = p.saturation.view(-1, 1, 1, 1)
        x = (s * x + (1 - s) * _gray(x)).clamp(0, 1)
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

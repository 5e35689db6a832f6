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

    @staticmethod
    def identity(n: int, device="cpu") -> AugParams:
        z, o = torch.zeros(n, device=device), torch.ones(n, device=device)
        f = torch.zeros(n, dtype=torch.bool, device=device)
        return AugParams(f, f.clone(), z, o, z.clone(), z.clone(), o.clone(), o.clone(), o.clone(), z.clone())


class Augment:
    """Draws per-sample parameters from an AugConfig-shaped mapping and applies them."""

    def __init__(self, cfg, generator: torch.Generator):
        self.cfg, self.g = cfg, generator

    @staticmethod
    def active(cfg) -> bool:
        return any(cfg[k].p > 0 for k in ("hflip", "vflip", "rotate", "scale", "translate", "color"))

    def sample(self, n: int, device) -> AugParams:
        c, g = self.cfg, self.g
        u = torch.rand(16, n, generator=g, device=device)  # one draw per batch, fixed layout

        def on(row, p):
            return u[row] < p

        def between(row, lo, hi):
            return lo + (hi - lo) * u[row]

        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        col = on(6, c.color.p)
        b, ct, s, h = c.color.brightness, c.color.contrast, c.color.saturation, c.color.hue
        return AugParams(
            hflip=on(0, c.hflip.p),
            vflip=on(1, c.vflip.p),
            angle=torch.where(on(2, c.rotate.p), between(7, -c.rotate.degrees, c.rotate.degrees), zero),
            scale=torch.where(on(3, c.scale.p), between(8, c.scale.min, c.scale.max), one),
            tx=torch.where(on(4, c.translate.p), between(9, -c.translate.fraction, c.translate.fraction), zero),
            ty=torch.where(on(4, c.translate.p), between(10, -c.translate.fraction, c.translate.fraction), zero),
            brightness=torch.where(col, between(11, 1 - b, 1 + b), one),
            contrast=torch.where(col, between(12, 1 - ct, 1 + ct), one),
            saturation=torch.where(col, between(13, 1 - s, 1 + s), one),
            hue=torch.where(col, between(14, -h, h), zero),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply(x, self.sample(x.shape[0], x.device))


def apply(x: torch.Tensor, p: AugParams) -> torch.Tensor:
    """Augment float images in [0, 1] (N,C,H,W) with per-sample parameters."""
    if bool(p.hflip.any()):
        x = torch.where(p.hflip.view(-1, 1, 1, 1), x.flip(-1), x)
    if bool(p.vflip.any()):
        x = torch.where(p.vflip.view(-1, 1, 1, 1), x.flip(-2), x)
    if bool((p.angle != 0).any() | (p.scale != 1).any() | (p.tx != 0).any() | (p.ty != 0).any()):
        x = F.grid_sample(x, F.affine_grid(affine_theta(p, x.shape), list(x.shape), align_corners=False),
                          mode="bilinear", padding_mode="zeros", align_corners=False)
    if bool((p.brightness != 1).any() | (p.contrast != 1).any() | (p.saturation != 1).any() | (p.hue != 0).any()):
        x = color(x, p)
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


def color(x: torch.Tensor, p: AugParams) -> torch.Tensor:
    """Brightness, contrast, saturation, then hue, each clamped to [0, 1] as torchvision does."""
    x = (x * p.brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    c = p.contrast.view(-1, 1, 1, 1)
    x = (c * x + (1 - c) * mean).clamp(0, 1)
    if x.shape[1] == 3:
        s = p.saturation.view(-1, 1, 1, 1)
        x = (s * x + (1 - s) * _gray(x)).clamp(0, 1)
        if bool((p.hue != 0).any()):
            hsv = rgb_to_hsv(x)
            hsv[:, 0] = (hsv[:, 0] + p.hue.view(-1, 1, 1)) % 1.0
            x = hsv_to_rgb(hsv)
    return x


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    dz = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / dz, (maxc - g) / dz, (maxc - b) / dz
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta == 0, torch.zeros_like(h), (h / 6.0) % 1.0)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([
        torch.stack([v, q, p, p, t, v], 1),
        torch.stack([t, v, v, q, p, p], 1),
        torch.stack([p, p, t, v, v, q], 1),
    ], 1)  # N,3,6,H,W
    return choices.gather(2, i.view(i.shape[0], 1, 1, *i.shape[1:]).expand(-1, 3, 1, -1, -1)).squeeze(2)

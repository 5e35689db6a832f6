"""Policy augmentation per sample on whole batches: TrivialAugment (wide), RandAugment, AutoAugment,
AugMix.

torchvision's per-image transforms (`TrivialAugmentWide`, `RandAugment`, `AutoAugment`, `AugMix`) are
the reference: the same operations, magnitude tables, signs, AutoAugment's published sub-policies (read
from torchvision) and geometry with a zero fill (nearest-neighbour; bilinear for AugMix, as
torchvision's defaults), computed on uint8 values. Here every image of a batch draws its own
operations and magnitudes from the run's generator, on the training device; each operation is one
batched pass over the images that drew it (a loop over the 14 operations, never over images). AugMix
runs its chains side by side as one batch. The geometric ones build the same inverse affine
matrix (in double precision, rounded once, as torchvision's Python floats) and sampling grid as
torchvision's tensor path; tests/test_policies.py finds every operation equal to torchvision's pixel
for pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
DRAWN = len(OPS) - 1  # TrivialAugment and RandAugment draw from all but Invert (AutoAugment's alone)
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# AugMix's operations, in torchvision's order: the last four only with all_ops
AUGMIX_OPS = (
    *GEOMETRIC,
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
)


def space(kind: str, bins: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's augmentation space for `kind` (trivialaugment: TrivialAugmentWide's; randaugment
    and autoaugment: RandAugment's, which AutoAugment shares at 10 bins; augmix: AugMix's, 10 bins):
    the magnitude table [ops, bins] (0 for operations without one) and whether each operation's
    magnitude takes a random sign."""
    wide, augmix = kind == "trivialaugment", kind == "augmix"
    lin = lambda hi: torch.linspace(0.0, hi, bins)  # noqa: E731
    shear, rotate, colour = (0.99, 135.0, 0.99) if wide else (0.3, 30.0, 0.9)
    tx, ty = (
        (32.0, 32.0)
        if wide
        else (width / 3.0, height / 3.0)
        if augmix
        else (150.0 / 331.0 * width, 150.0 / 331.0 * height)
    )
    top, steps = (4, 4) if augmix else (8, 6 if wide else 4)
    posterize = (top - (torch.arange(bins) / ((bins - 1) / steps)).round().int()).float()
    table = {
        "ShearX": lin(shear),
        "ShearY": lin(shear),
        "TranslateX": lin(tx),
        "TranslateY": lin(ty),
        "Rotate": lin(rotate),
        "Brightness": lin(colour),
        "Color": lin(colour),
        "Contrast": lin(colour),
        "Sharpness": lin(colour),
        "Posterize": posterize,
        "Solarize": torch.linspace(255.0, 0.0, bins),
    }
    mags = torch.stack([table.get(op, torch.zeros(bins)) for op in OPS])
    signed = torch.tensor([op in table and op not in ("Posterize", "Solarize") for op in OPS])
    return mags, signed


class Policy:
    """Draws and applies a policy: `kind` trivialaugment (one operation per image, its magnitude bin
    drawn uniformly), randaugment (`num_ops` operations per image at bin `magnitude`) or autoaugment
    (one of `policy`'s sub-policies per image: imagenet, cifar10 or svhn; 10 bins); each image gets the
    policy with probability `p`."""

    def __init__(
        self,
        kind: str,
        *,
        p: float,
        bins: int,
        generator: torch.Generator,
        num_ops: int = 1,
        magnitude: int | None = None,
        policy: str = "imagenet",
    ):
        self.kind, self.p, self.bins, self.g, self.policy = kind, p, bins, generator, policy
        self.num_ops, self.magnitude = (1, None) if kind == "trivialaugment" else (num_ops, magnitude)
        self._tables: dict = {}  # (height, width, device) -> the tables on the device, made once

    def _on(self, height: int, width: int, device) -> tuple[torch.Tensor, ...]:
        """The magnitude table, the signed flags and (autoaugment) the sub-policy tables, on `device`."""
        key = (height, width, str(device))
        if key not in self._tables:
            mags, signed = space(self.kind, self.bins, height, width)
            tables = [mags, signed]
            if self.kind == "autoaugment":
                from torchvision.transforms import AutoAugment, AutoAugmentPolicy

                table = AutoAugment(AutoAugmentPolicy(self.policy)).policies  # [((op, p, bin), (op, p, bin)), ...]
                tables += [
                    torch.tensor([[OPS.index(o) for o, _, _ in sub] for sub in table]),
                    torch.tensor([[q for _, q, _ in sub] for sub in table]),
                    torch.tensor([[b or 0 for _, _, b in sub] for sub in table]),
                ]
            self._tables[key] = tuple(t.to(device) for t in tables)
        return self._tables[key]

    def draw(self, n: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(operation index [num_ops, n], signed magnitude [num_ops, n]); Identity where not applied."""
        tables = self._on(height, width, device)
        mags, signed = tables[:2]
        g = self.g
        if self.kind == "autoaugment":
            return self._draw_sub_policies(n, *tables, device)
        op = torch.randint(DRAWN, (self.num_ops, n), generator=g, device=device)
        if self.magnitude is None:
            level = torch.randint(self.bins, (self.num_ops, n), generator=g, device=device)
        else:
            level = torch.full((self.num_ops, n), self.magnitude, device=device)
        flip = torch.rand(self.num_ops, n, generator=g, device=device) < 0.5
        apply = (torch.rand(n, generator=g, device=device) < self.p).expand(self.num_ops, n)
        mag = mags[op, level] * torch.where(signed[op] & flip, -1.0, 1.0)
        return torch.where(apply, op, 0), torch.where(apply, mag, 0.0)

    def _draw_sub_policies(self, n: int, mags, signed, ops, probs, bins, device) -> tuple[torch.Tensor, torch.Tensor]:
        """AutoAugment: each image one of the policy's sub-policies at random, whose two operations
        apply each with its own probability, at its own magnitude bin, with a random sign."""
        g = self.g
        pick = torch.randint(len(ops), (n,), generator=g, device=device)
        draw = torch.rand(2, n, generator=g, device=device)
        flip = torch.randint(2, (2, n), generator=g, device=device) == 0
        apply = (torch.rand(n, generator=g, device=device) < self.p).expand(2, n)
        op, level = ops[pick].T, bins[pick].T
        on = apply & (draw <= probs[pick].T)
        mag = mags[op, level] * torch.where(signed[op] & flip, -1.0, 1.0)
        return torch.where(on, op, 0), torch.where(on, mag, 0.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (N,C,H,W), each with its own draw; the result is on the uint8 grid."""
        ops, mags = self.draw(x.shape[0], x.shape[-2], x.shape[-1], x.device)
        v = (x * 255).round()
        for op, mag in zip(ops, mags):
            v = apply_ops(v, op, mag)
        return v / 255


class AugMix:
    """AugMix per image: `width` chains of operations from AUGMIX_OPS (the first nine without
    `all_ops`), each chain `depth` long (0: 1 to 3, drawn per chain and image), each operation at a
    magnitude bin drawn below `severity` (of 10) with a random sign; the chains are mixed with
    Dirichlet(alpha, ..., alpha) weights, and the mix blended with the image by a Beta(alpha, alpha)
    weight, in float, then truncated to the uint8 grid as torchvision does. Each image gets it with
    probability `p`; the others come back unchanged."""

    def __init__(
        self,
        *,
        p: float,
        severity: int,
        width: int,
        depth: int,
        alpha: float,
        all_ops: bool,
        generator: torch.Generator,
    ):
        self.p, self.severity, self.width, self.depth, self.alpha, self.g = p, severity, width, depth, alpha, generator
        self.ops = torch.tensor([OPS.index(o) for o in AUGMIX_OPS[: None if all_ops else 9]])
        self._tables: dict = {}  # (height, width, device) -> (magnitudes, signed, op indices) on the device

    def draw(
        self, n: int, height: int, width: int, device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(operation index [width, steps, n], signed magnitude [width, steps, n], weights [width + 1, n]
        with the image's own first, applied [n]); Identity past each chain's depth and where not applied."""
        key = (height, width, str(device))
        if key not in self._tables:
            self._tables[key] = tuple(t.to(device) for t in (*space("augmix", 10, height, width), self.ops))
        mags, signed, ops = self._tables[key]
        g, steps = self.g, self.depth or 3
        applied = torch.rand(n, generator=g, device=device) < self.p
        op = ops[torch.randint(len(ops), (self.width, steps, n), generator=g, device=device)]
        level = torch.randint(self.severity, (self.width, steps, n), generator=g, device=device)
        flip = torch.rand(self.width, steps, n, generator=g, device=device) < 0.5
        depth = (
            torch.randint(1, 4, (self.width, 1, n), generator=g, device=device)
            if not self.depth
            else torch.full((self.width, 1, n), self.depth, device=device)
        )
        on = (torch.arange(steps, device=device).view(1, -1, 1) < depth) & applied
        mag = mags[op, level] * torch.where(signed[op] & flip, -1.0, 1.0)
        blend = [gamma(self.alpha, n, g, device) for _ in range(2)]  # Beta(alpha, alpha) as a 2-part Dirichlet
        chains = torch.stack([gamma(self.alpha, n, g, device) for _ in range(self.width)])
        keep = blend[0] / (blend[0] + blend[1])
        weights = torch.cat([keep[None], chains / chains.sum(0) * (1 - keep)])
        return torch.where(on, op, 0), torch.where(on, mag, 0.0), weights, applied

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (N,C,H,W), each with its own draw; the result is on the uint8 grid."""
        ops, mags, weights, applied = self.draw(x.shape[0], x.shape[-2], x.shape[-1], x.device)
        v = (x * 255).round()
        # the chains side by side as one batch of width x N images: each step is one pass over all
        chains = v.repeat(self.width, 1, 1, 1)
        for op, mag in zip(ops.transpose(0, 1).flatten(1), mags.transpose(0, 1).flatten(1)):
            chains = apply_ops(chains, op, mag, bilinear=True)
        mixed = weights[0].view(-1, 1, 1, 1) * v
        for weight, aug in zip(weights[1:], chains.view(self.width, *v.shape)):  # added in torchvision's order
            mixed = mixed + weight.view(-1, 1, 1, 1) * aug
        return torch.where(applied.view(-1, 1, 1, 1), torch.floor(mixed), v) / 255


def apply_ops(
    v: torch.Tensor, op: torch.Tensor, mag: torch.Tensor, *, sync_free: bool | None = None, bilinear: bool = False
) -> torch.Tensor:
    """Each image's operation `op[i]` at magnitude `mag[i]`, on uint8 values held as floats; geometry
    samples nearest (bilinear: interpolated, then rounded, as torchvision's uint8 path). On CPU only
    the images an operation applies to are computed; elsewhere (`sync_free`) every operation runs on
    the batch and a select keeps the right result, with no host sync."""
    cpu = v.device.type == "cpu" if sync_free is None else not sync_free
    out = v
    geometric = (op >= OPS.index("ShearX")) & (op <= OPS.index("Rotate"))
    jobs = [(geometric, lambda t, m, o: _affine(t, o, m, bilinear=bilinear))]
    jobs += [(op == OPS.index(name), fn) for name, fn in _COLOUR.items()]
    for chosen, fn in jobs:
        if cpu:
            idx = chosen.nonzero().flatten()
            if len(idx):
                out = v.clone() if out is v else out  # one copy, written in place: v stays the input
                out.index_copy_(0, idx, fn(v[idx], mag[idx], op[idx]))
        else:
            out = torch.where(chosen.view(-1, 1, 1, 1), fn(v, mag, op), out)
    return out


def _affine(v: torch.Tensor, op: torch.Tensor, mag: torch.Tensor, *, bilinear: bool = False) -> torch.Tensor:
    """Shear (about the top-left corner), translate (whole pixels, truncated) and rotate (about the
    centre), as torchvision's F.affine/F.rotate with nearest (or bilinear) sampling and a zero fill."""
    n, _, h, w = v.shape
    mag = _double(mag)  # the matrix in double precision, rounded once, as torchvision's Python floats
    zero = torch.zeros_like(mag)
    is_ = lambda name: op == OPS.index(name)  # noqa: E731
    shear_deg = torch.rad2deg(torch.atan(mag))
    sx = torch.deg2rad(torch.where(is_("ShearX"), shear_deg, zero))
    sy = torch.deg2rad(torch.where(is_("ShearY"), shear_deg, zero))
    rot = torch.deg2rad(torch.where(is_("Rotate"), -mag, zero))  # F.rotate passes -angle
    tx = torch.where(is_("TranslateX"), torch.trunc(mag), zero)
    ty = torch.where(is_("TranslateY"), torch.trunc(mag), zero)
    shear = is_("ShearX") | is_("ShearY")
    cx = torch.where(shear, torch.full_like(mag, -w * 0.5), zero)  # center=[0, 0] for shears
    cy = torch.where(shear, torch.full_like(mag, -h * 0.5), zero)
    # torchvision's _get_inverse_affine_matrix, per image
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    theta = torch.stack([torch.stack([m0, m1, m2], 1), torch.stack([m3, m4, m5], 1)], 1).to(v.device, v.dtype)  # N,2,3
    # torchvision's _gen_affine_grid, per image
    base = torch.empty(1, h, w, 3, dtype=v.dtype, device=v.device)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=v.device))
    base[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=v.device).unsqueeze(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=v.dtype, device=v.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale).view(n, h, w, 2)
    if bilinear:
        return torch.round(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return F.grid_sample(v, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _blend(v: torch.Tensor, other: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend at factor 1 + mag: the factor and its complement are formed in double
    precision (Python floats there) and rounded once, so the products round alike."""
    f = 1.0 + _double(mag).view(-1, 1, 1, 1)
    a, b = f.to(v.device, v.dtype), (1.0 - f).to(v.device, v.dtype)
    return torch.floor((a * v + b * other).clamp(0, 255))  # uint8's truncating cast


def _double(t: torch.Tensor) -> torch.Tensor:
    return t.to("cpu", torch.float64) if t.device.type == "mps" else t.double()  # MPS has no float64


def _grey(v: torch.Tensor) -> torch.Tensor:
    if v.shape[1] == 1:
        return v
    return torch.floor(0.2989 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3])


def _brightness(v, mag, op):
    return _blend(v, torch.zeros_like(v), mag)


def _color(v, mag, op):
    return v if v.shape[1] == 1 else _blend(v, _grey(v), mag)  # saturation: none on grey images


def _contrast(v, mag, op):
    return _blend(v, _grey(v).mean(dim=(1, 2, 3), keepdim=True), mag)


def _sharpness(v, mag, op):
    if v.shape[-1] <= 2 or v.shape[-2] <= 2:
        return v
    c = v.shape[1]
    kernel = torch.ones(3, 3, dtype=v.dtype, device=v.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    blurred = v.clone()
    blurred[..., 1:-1, 1:-1] = torch.round(F.conv2d(v, kernel, groups=c))
    return _blend(v, blurred, mag)


def _posterize(v, mag, op):
    step = torch.pow(2.0, 8.0 - mag).view(-1, 1, 1, 1)
    return torch.floor(v / step) * step


def _solarize(v, mag, op):
    return torch.where(v >= mag.view(-1, 1, 1, 1), 255.0 - v, v)


def _invert(v, mag, op):
    return 255.0 - v


def _autocontrast(v, mag, op):
    lo, hi = v.amin(dim=(2, 3), keepdim=True), v.amax(dim=(2, 3), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, 1.0, 255.0 / torch.where(flat, 1.0, hi - lo))
    return torch.floor(((v - torch.where(flat, 0.0, lo)) * scale).clamp(0, 255))


def _equalize(v, mag, op):
    """Per image and channel, as torchvision's F.equalize: a 256-bin histogram, a step of
    (pixels less the brightest value's count) // 255, then the lookup table (cdf + step // 2) // step."""
    n, c, h, w = v.shape
    flat = v.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=v.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = hist.gather(1, flat.amax(1, keepdim=True))  # the count of the brightest value present
    step = torch.div(h * w - last, 255, rounding_mode="floor")  # N*C,1
    safe = step.clamp_min(1)
    lut = torch.div(hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.to(v.dtype).view(n, c, h, w)


_COLOUR = {
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
}


def gamma(alpha: float, n: int, g: torch.Generator, device, tries: int = 12) -> torch.Tensor:
    """Gamma(alpha, 1) by Marsaglia and Tsang's method, vectorized over `tries` candidates per sample."""
    boost = alpha < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a)
    a = alpha + 1 if boost else alpha
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    z = torch.randn(tries, n, generator=g, device=device)
    u = torch.rand(tries, n, generator=g, device=device)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = torch.argmax(ok.int(), 0)  # each try accepts with p > 0.95: all failing is ~1e-16
    out = d * v.gather(0, first.view(1, -1)).squeeze(0)
    if boost:
        out = out * torch.rand(n, generator=g, device=device) ** (1 / alpha)
    return out

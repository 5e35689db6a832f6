"""Corrupted images, as the robustness benchmarks define them (Hendrycks & Dietterich 2019): ImageNet-C
for images larger than 64 pixels, CIFAR-10-C (the same corruptions re-tuned for 32-pixel images) for
smaller ones. Each takes a batch of uint8 images (N, C, H, W) on any device and returns the batch
corrupted, computed on that device (JPEG on the CPU).

Where regx differs from the reference code (Hendrycks' `make_cifar_c.py` and `imagenet_c`):
- the blur's sigma is scaled by the image size over the table's (32 or 224 pixels), so a 28-pixel image
  is blurred as much, relative to its size, as the benchmark's;
- the noise comes from a seeded torch generator, not numpy's global one;
- JPEG is the one corruption computed on the CPU: PIL's codec, as the reference's, image by image;
- arithmetic is float64 as the reference's, but float32 on Apple's MPS (which has no float64), where a
  pixel here and there differs by one level.
As the reference does, results are clipped to [0, 255] and truncated to integers (numpy's uint8 cast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regx.augment import hsv_to_rgb, rgb_to_hsv

SEVERITIES = (1, 2, 3, 4, 5)
SMALL, LARGE = 32, 224  # the image sizes the CIFAR-10-C and ImageNet-C tables are written for
SMALL_UP_TO = 64  # images up to this size use the CIFAR-10-C table


class CorruptionError(ValueError):
    """A corruption or severity that does not exist, or one the images cannot take: one line."""


@dataclass(frozen=True)
class Corruption:
    name: str
    small: tuple  # CIFAR-10-C's parameter for severities 1..5
    large: tuple  # ImageNet-C's
    apply: Callable[[torch.Tensor, object, torch.Generator | None], torch.Tensor]  # float [0, 1] images
    colour: bool = False  # needs three channels
    scales_with_size: bool = False  # the parameter is a length in pixels


def _gaussian_noise(x: torch.Tensor, sigma: float, g: torch.Generator | None) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter's 1-D kernel (what skimage.filters.gaussian calls): radius
    int(truncate * sigma + 0.5), normalized."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: torch.Tensor, sigma: float, g: torch.Generator | None) -> torch.Tensor:
    # separable, each channel alone, edges extended ("nearest", skimage's default mode)
    n, c, h, w = x.shape
    k = gaussian_kernel(sigma).to(x.device, x.dtype)
    r = len(k) // 2
    planes = x.reshape(n * c, 1, h, w)
    planes = F.conv2d(F.pad(planes, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return planes.reshape(n, c, h, w)


def _contrast(x: torch.Tensor, c: float, g: torch.Generator | None) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)  # each image's, each channel's
    return (x - means) * c + means


def _brightness(x: torch.Tensor, c: float, g: torch.Generator | None) -> torch.Tensor:
    if x.shape[1] == 1:  # a grey pixel's HSV value is the pixel itself
        return x + c
    hsv = rgb_to_hsv(x)
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    return hsv_to_rgb(hsv)


def _saturate(x: torch.Tensor, c: tuple[float, float], g: torch.Generator | None) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv[:, 1] = (hsv[:, 1] * c[0] + c[1]).clamp(0, 1)
    return hsv_to_rgb(hsv)


def _jpeg(x: torch.Tensor, quality: int, g: torch.Generator | None) -> torch.Tensor:
    # PIL's encoder and decoder, the reference's own, on the CPU: image by image
    import io

    import numpy as np
    from PIL import Image

    images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out.append(np.array(Image.open(buf)).reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


CORRUPTIONS = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", (0.04, 0.06, 0.08, 0.09, 0.10), (0.08, 0.12, 0.18, 0.26, 0.38), _gaussian_noise),
        Corruption("gaussian_blur", (0.4, 0.6, 0.7, 0.8, 1.0), (1, 2, 3, 4, 6), _gaussian_blur, scales_with_size=True),
        Corruption("contrast", (0.75, 0.5, 0.4, 0.3, 0.15), (0.4, 0.3, 0.2, 0.1, 0.05), _contrast),
        Corruption("brightness", (0.05, 0.1, 0.15, 0.2, 0.3), (0.1, 0.2, 0.3, 0.4, 0.5), _brightness),
        Corruption("jpeg", (80, 65, 58, 50, 40), (25, 18, 15, 10, 7), _jpeg),
        Corruption(
            "saturate",
            ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
            ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
            _saturate,
            colour=True,
        ),
    )
}


def parameter(name: str, severity: int, size: int):
    """The corruption's parameter at `severity` for images of `size` pixels."""
    c = CORRUPTIONS[name]
    small = size <= SMALL_UP_TO
    value = (c.small if small else c.large)[severity - 1]
    if c.scales_with_size:
        value = value * size / (SMALL if small else LARGE)
    return value


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images (N, C, H, W) corrupted by `name` at `severity` (1-5), on their device."""
    return (corrupted(x, name, severity, generator) * 255).to(torch.uint8)  # truncates, as the reference's np.uint8


def corrupted(x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The corrupted images before they are stored as integers: floats in [0, 1]."""
    value = parameter(name, severity, x.shape[-1])
    dtype = torch.float32 if x.device.type == "mps" else torch.float64  # the reference's float64 where there is one
    return CORRUPTIONS[name].apply(x.to(dtype) / 255, value, generator).clamp(0, 1)


def parse_corruptions(text: str, channels: int) -> list[str]:
    """`name,name,...` or `all` (every corruption these images can take) into names, in the order given."""
    if text == "all":
        return [n for n, c in CORRUPTIONS.items() if channels == 3 or not c.colour]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CorruptionError(f"--corrupt needs corruptions (known: all, {', '.join(CORRUPTIONS)})")
    for n in names:
        if n not in CORRUPTIONS:
            raise CorruptionError(f"unknown corruption '{n}' (known: all, {', '.join(CORRUPTIONS)})")
        if CORRUPTIONS[n].colour and channels != 3:
            raise CorruptionError(f"the corruption {n} changes colour and these images have {channels} channel(s)")
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    """`1..5`, `3` or `1,3,5` into severities."""
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            values = list(range(lo, hi + 1))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise CorruptionError(f"--severity {text}: expected 1..5, a number or a list such as 1,3,5") from None
    if not values or any(v not in SEVERITIES for v in values):
        raise CorruptionError(f"--severity {text}: severities are 1 to 5")
    return sorted(set(values))

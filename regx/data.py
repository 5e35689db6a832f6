"""Datasets as uint8 tensors, and batches of them on the training device.

Every dataset is decoded once into a uint8 NCHW tensor (DESIGN.md: "the data path"); shuffling,
batching, augmentation and normalization then happen on the training device with no per-image Python
work per step. A set too large for memory keeps file paths instead and streams through a DataLoader
whose workers only decode and resize; its batches then join the same path.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("regx")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SHAPE_NAMES = ["disk", "ring", "square", "frame", "triangle", "plus", "bar", "half_disk", "ell", "star"]


class DataError(RuntimeError):
    """Data that cannot be loaded: the message names the path and what to do."""


@dataclass
class Split:
    """One split: images as a uint8 tensor (x) or, when streaming, as file paths."""

    y: torch.Tensor  # int64 labels
    x: torch.Tensor | None = None  # uint8 N,C,H,W
    paths: list[str] | None = None
    image_size: int = 0

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> Split:
        if self.x is not None:
            return Split(y=self.y[idx], x=self.x[idx])
        return Split(y=self.y[idx], paths=[self.paths[i] for i in idx.tolist()], image_size=self.image_size)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split | None
    classes: list[str]
    channels: int
    image_size: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def streaming(self) -> bool:
        return self.train.x is None


# ---------------------------------------------------------------------------------------------
# Loaders: each returns (train, val or None, test or None, classes, channels).

LOADERS = {}


def register_loader(name):
    def deco(fn):
        LOADERS[name] = fn
        return fn

    return deco


def load_data(
    *,
    name: str,
    root: str = "data",
    download: bool = True,
    path: str | None = None,
    image_size: int | None = None,
    channels: int = 3,
    num_classes: int = 10,
    n_train: int = 12000,
    n_test: int = 2000,
    val_fraction: float = 0.1,
    train_size: int | None = None,
    seed: int = 0,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    stream: bool | None = None,
    max_memory_gb: float = 4.0,
    workers: int = 2,
    on_bad_image: str = "error",
) -> Data:
    """Load a dataset by name, carve a seeded validation split, and take a training subset."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(sorted(LOADERS))})")
    kwargs = dict(root=root, download=download, path=path, image_size=image_size, channels=channels,
                  num_classes=num_classes, n_train=n_train, n_test=n_test, seed=seed, stream=stream,
                  max_memory_gb=max_memory_gb, workers=workers, on_bad_image=on_bad_image)
    train, val, test, classes, channels = LOADERS[name](**kwargs)
    g = torch.Generator().manual_seed(seed)
    if val is None:
        n_val = max(1, round(len(train) * val_fraction))
        val_idx, train_idx = stratified_split(train.y, n_val, g)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if train_size is not None:
        if train_size > len(train):
            raise DataError(f"data.train_size={train_size} exceeds the {len(train)} training images available")
        train = train.subset(stratified_split(train.y, train_size, g)[0])
    size = train.x.shape[-1] if train.x is not None else train.image_size
    if mean is None or std is None:
        m, s = channel_stats(train, workers)
        mean, std = mean or m, std or s
    data = Data(train=train, val=val, test=test, classes=list(classes), channels=channels, image_size=size,
                mean=list(mean), std=list(std))
    if len(data.mean) != channels or len(data.std) != channels:
        data.mean, data.std = data.mean[:1] * channels, data.std[:1] * channels
    return data


def stratified_split(y: torch.Tensor, count: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `count` indices with class proportions kept (seeded); return (picked, rest), each sorted."""
    n = len(y)
    perm = torch.randperm(n, generator=g)
    order = perm[torch.argsort(y[perm], stable=True)]  # shuffled within each class, classes in order
    classes, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * count / n
    take = quota.floor().long()
    short = count - int(take.sum())
    if short > 0:
        take[torch.argsort(quota - take, descending=True)[:short]] += 1
    picked, start = [], 0
    for c_count, k in zip(counts.tolist(), take.tolist()):
        picked.append(order[start : start + k])
        start += c_count
    chosen = torch.cat(picked)
    mask = torch.ones(n, dtype=torch.bool)
    mask[chosen] = False
    return chosen.sort().values, torch.nonzero(mask).flatten()


def channel_stats(split: Split, workers: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a split, in [0, 1] units."""
    total, total_sq, count = 0.0, 0.0, 0
    for xb, _ in iterate(split, batch_size=1024, workers=workers):
        f = xb.double() / 255
        total = total + f.sum(dim=(0, 2, 3))
        total_sq = total_sq + (f * f).sum(dim=(0, 2, 3))
        count += f.numel() // f.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return [round(v, 4) for v in mean.tolist()], [round(max(v, 1e-3), 4) for v in std.tolist()]


# ---------------------------------------------------------------------------------------------
# Batching


def iterate(
    split: Split,
    batch_size: int,
    *,
    order: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    workers: int = 0,
    start: int = 0,
    drop_single: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches on `device`, in `order` (default: as stored).

    `start` skips that many batches (to resume mid-epoch). `drop_single` drops a final batch of one
    image, which BatchNorm cannot train on.
    """
    idx = order if order is not None else torch.arange(len(split))
    n = len(idx)  # an order may cover part of the split (a rank's shard)
    stops = list(range(0, n, batch_size))
    if drop_single and batch_size > 1 and len(stops) > 1 and n - stops[-1] == 1:
        stops.pop()
    if split.x is not None:
        idx = idx.to(split.x.device)
        for s in stops[start:]:
            b = idx[s : s + batch_size]
            yield split.x.index_select(0, b), split.y.index_select(0, b)
        return
    first = stops[start] if start < len(stops) else n
    last = min(stops[-1] + batch_size, n) if stops else 0
    loader = torch.utils.data.DataLoader(
        _FileDataset(split.paths, split.y, split.image_size),
        batch_size=batch_size,
        sampler=idx[first:last].tolist(),
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    for xb, yb, ok in loader:
        if not bool(ok.all()):
            raise DataError(f"cannot decode {int((~ok).sum())} image(s) in this batch; run `regx check-data`")
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def to_device(data: Data, device: torch.device) -> Data:
    """Move the in-memory splits to the training device (once)."""

    def move(s: Split | None) -> Split | None:
        if s is None or s.x is None:
            return s
        return Split(y=s.y.to(device), x=s.x.to(device))

    data.train, data.val, data.test = move(data.train), move(data.val), move(data.test)
    return data


# ---------------------------------------------------------------------------------------------
# shapes: the embedded default


def make_shapes(n: int, size: int, num_classes: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of random shapes (class = shape) at random position, size, rotation and colour.

    Vectorized in chunks; about a second for 10k 32x32 images on two cores.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(num_classes, (n,), generator=g)
    ss = 2 if size <= 64 else 1  # supersample for smooth edges
    res = size * ss
    lin = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    out = torch.empty(n, channels, size, size, dtype=torch.uint8)
    for s in range(0, n, 1024):
        yc = y[s : s + 1024]
        m = len(yc)
        u01 = torch.rand(m, 12, generator=g)
        r = 0.35 + 0.35 * u01[:, 0]
        cx = (u01[:, 1] * 2 - 1) * (1 - 0.8 * r)
        cy = (u01[:, 2] * 2 - 1) * (1 - 0.8 * r)
        th = u01[:, 3] * 6.2831853
        dx, dy = gx - cx.view(-1, 1, 1), gy - cy.view(-1, 1, 1)
        cos, sin = th.cos().view(-1, 1, 1), th.sin().view(-1, 1, 1)
        u = (dx * cos + dy * sin) / r.view(-1, 1, 1)
        v = (-dx * sin + dy * cos) / r.view(-1, 1, 1)
        mask = torch.zeros(m, res, res)
        for c in range(num_classes):
            sel = yc == c
            if sel.any():
                mask[sel] = _SHAPES[c](u[sel], v[sel]).float()
        bg = torch.rand(m, channels, generator=g)
        fg = (bg + 0.3 + 0.4 * torch.rand(m, 1, generator=g)) % 1.0  # every channel differs by >= 0.3
        ramp = (torch.rand(m, 2, generator=g) - 0.5) * 0.3
        shade = ramp[:, 0].view(-1, 1, 1) * gx + ramp[:, 1].view(-1, 1, 1) * gy
        img = bg.view(m, channels, 1, 1) + shade.unsqueeze(1)
        img = img + mask.unsqueeze(1) * (fg - bg).view(m, channels, 1, 1)
        if ss > 1:
            img = torch.nn.functional.avg_pool2d(img, ss)
        img = img + 0.06 * torch.randn(img.shape, generator=g)
        out[s : s + m] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return out, y


def _star(u, v):
    rho, phi = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    return rho < 0.4 + 0.6 * ((torch.cos(5 * phi) + 1) / 2) ** 3


_SHAPES = [
    lambda u, v: u * u + v * v < 1,  # disk
    lambda u, v: (u * u + v * v < 1) & (u * u + v * v > 0.36),  # ring
    lambda u, v: torch.maximum(u.abs(), v.abs()) < 0.8,  # square
    lambda u, v: (torch.maximum(u.abs(), v.abs()) < 0.85) & (torch.maximum(u.abs(), v.abs()) > 0.5),  # frame
    lambda u, v: (v > -0.5) & (v < 1 - 1.7320508 * u.abs()),  # triangle
    lambda u, v: ((u.abs() < 0.3) & (v.abs() < 0.95)) | ((v.abs() < 0.3) & (u.abs() < 0.95)),  # plus
    lambda u, v: (u.abs() < 1) & (v.abs() < 0.3),  # bar
    lambda u, v: (u * u + v * v < 1) & (v > 0),  # half disk
    lambda u, v: ((u > -0.8) & (u < -0.3) & (v.abs() < 0.8)) | ((u.abs() < 0.8) & (v > -0.8) & (v < -0.3)),  # ell
    _star,
]


@register_loader("shapes")
def _load_shapes(*, image_size, channels, num_classes, n_train, n_test, seed, **_):
    size = image_size or 32
    x, y = make_shapes(n_train, size, num_classes, channels, seed * 2)
    test = Split(*reversed(make_shapes(n_test, size, num_classes, channels, seed * 2 + 1))) if n_test else None
    return Split(y=y, x=x), None, test, SHAPE_NAMES[:num_classes], channels


# ---------------------------------------------------------------------------------------------
# torchvision's sets: MNIST, Fashion-MNIST, CIFAR-10/100

_TV = {  # name: (torchvision class, its folder under root, raw file names, other places to look)
    "mnist": ("MNIST", "MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"], ["/usr/share/datasets/mnist"]),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"], ["/usr/share/datasets/fashion-mnist"]),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"], []),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"], []),
}


def _tv_split(ds) -> Split:
    x = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return Split(y=torch.as_tensor(ds.targets, dtype=torch.long), x=x.contiguous())


def _load_tv(name: str, root: str, download: bool, image_size: int | None):
    import torchvision.datasets as tvd

    cls_name, folder, files, elsewhere = _TV[name]
    cls = getattr(tvd, cls_name)
    train = test = None
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError:
        pass
    if train is None and name in ("mnist", "fashion_mnist"):
        for place in [Path(root), Path(root) / folder, *map(Path, elsewhere)]:
            found = _read_idx_set(place)
            if found:
                log.info("%s: reading IDX files from %s", name, place)
                tr, te = found
                classes = cls.classes
                return _resize(tr, image_size), None, _resize(te, image_size), classes, 1
    if train is None and download:
        try:
            train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
        except Exception as exc:  # URLError, HTTPError, checksum failures
            log.warning("%s: download failed: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if train is None:
        where = Path(root).resolve() / folder
        extra = " (or `apt install dataset-fashion-mnist`)" if name == "fashion_mnist" else ""
        hint = "download failed (no network?)" if download else "data.download=false"
        raise DataError(f"data={name}: files missing or corrupt and {hint}; put {', '.join(files)} in {where}{extra}")
    tr, te = _tv_split(train), _tv_split(test)
    return _resize(tr, image_size), None, _resize(te, image_size), list(train.classes), tr.x.shape[1]


def _read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(torch.tensor(dims).prod()):
        raise DataError(f"{path} is truncated: expected {dims}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*dims)


def _read_idx_set(place: Path) -> tuple[Split, Split] | None:
    def find(stem):
        for cand in (place / stem, place / f"{stem}.gz"):
            if cand.is_file():
                return cand
        return None

    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [find(s) for s in stems]
    if not all(paths):
        return None
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
    return Split(y=ytr.long(), x=xtr.unsqueeze(1)), Split(y=yte.long(), x=xte.unsqueeze(1))


def _resize(split: Split, image_size: int | None) -> Split:
    if image_size is None or split.x.shape[-1] == image_size:
        return split
    out = []
    for s in range(0, len(split), 4096):
        f = split.x[s : s + 4096].float()
        f = torch.nn.functional.interpolate(f, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        out.append(f.round().clamp(0, 255).to(torch.uint8))
    return Split(y=split.y, x=torch.cat(out))


for _name in _TV:
    register_loader(_name)(lambda *, _n=_name, root, download, image_size, **_: _load_tv(_n, root, download, image_size))


# ---------------------------------------------------------------------------------------------
# imagefolder: a user's own images


def scan_folder(path: str) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Find split folders and class subfolders; return ({split: [(file, label)]}, classes)."""
    base = Path(path)
    if not base.is_dir():
        raise DataError(f"data.path={path}: no such directory")
    splits = {s: base / s for s in ("train", "val", "test") if (base / s).is_dir()}
    if not splits:
        splits = {"train": base}
    elif "train" not in splits:
        raise DataError(f"data.path={path}: has {', '.join(splits)}/ but no train/ folder")
    classes = sorted(p.name for p in splits["train"].iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{splits['train']}: found {len(classes)} class folder(s); need at least 2 (one subfolder per class)")
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, folder in splits.items():
        items = []
        for c in sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if c not in index:
                raise DataError(f"{folder / c}: class '{c}' is not among train/'s classes")
            files = sorted(f for f in (folder / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not files and split == "train":
                raise DataError(f"{folder / c}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            items.extend((str(f), index[c]) for f in files)
        out[split] = items
    return out, classes


def decode(path: str, size: int) -> torch.Tensor:
    """Decode an image file to uint8 RGB CHW, resized (shorter side) and center-cropped to size."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
        im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, paths, labels, size):
        self.paths, self.labels, self.size = paths, labels, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return decode(self.paths[i], self.size), self.labels[i], True
        except Exception:  # truncated, empty, or not an image: reported by the caller with its path
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), self.labels[i], False


def check_images(items: list[tuple[str, int]], size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every file; return (images, labels, bad paths)."""
    ds = _FileDataset([p for p, _ in items], torch.tensor([lab for _, lab in items], dtype=torch.long), size)
    xs, ys, oks = [], [], []
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)
    for xb, yb, ok in loader:
        xs.append(xb)
        ys.append(yb)
        oks.append(ok)
    if not xs:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long), []
    ok = torch.cat(oks)
    bad = [items[i][0] for i in torch.nonzero(~ok).flatten().tolist()]
    return torch.cat(xs)[ok], torch.cat(ys)[ok], bad


def _folder_key(items: dict, size: int) -> str:
    h = hashlib.sha256(f"v1 size={size}".encode())
    for split in sorted(items):
        for p, label in items[split]:
            st = os.stat(p)
            h.update(f"{split}|{p}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


@register_loader("imagefolder")
def _load_imagefolder(*, root, path, image_size, stream, max_memory_gb, workers, on_bad_image, **_):
    items, classes = scan_folder(path)
    n_total = sum(len(v) for v in items.values())
    decoded_gb = n_total * 3 * image_size * image_size / 1e9
    if stream or (stream is None and decoded_gb > max_memory_gb):
        log.info("imagefolder: streaming %d images (%.1f GB decoded > data.max_memory_gb)", n_total, decoded_gb)

        def as_split(v):
            return Split(y=torch.tensor([lab for _, lab in v], dtype=torch.long), paths=[p for p, _ in v], image_size=image_size) if v else None

        return as_split(items["train"]), as_split(items.get("val")), as_split(items.get("test")), classes, 3
    cache = Path(root) / "cache" / f"imagefolder-{_folder_key(items, image_size)}.pt"
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            log.info("imagefolder: %d images from cache %s", n_total, cache)
            splits = {k: Split(y=blob[f"{k}_y"], x=blob[f"{k}_x"]) if f"{k}_x" in blob else None for k in ("train", "val", "test")}
            return splits["train"], splits["val"], splits["test"], list(blob["classes"]), 3
        except Exception as exc:
            log.warning("imagefolder: ignoring unreadable cache %s (%s)", cache, exc)
    log.info("imagefolder: decoding %d images from %s to %dx%d", n_total, path, image_size, image_size)
    splits, all_bad = {}, []
    for k in ("train", "val", "test"):
        if items.get(k):
            x, y, bad = check_images(items[k], image_size, workers)
            all_bad.extend(bad)
            splits[k] = Split(y=y, x=x)
    if all_bad:
        if on_bad_image != "skip":
            shown = ", ".join(all_bad[:20]) + (f" and {len(all_bad) - 20} more" if len(all_bad) > 20 else "")
            raise DataError(f"{len(all_bad)} unreadable image(s): {shown} (data.on_bad_image=skip skips them)")
        log.warning("imagefolder: skipped %d unreadable image(s): %s%s", len(all_bad), ", ".join(all_bad[:20]),
                    f" and {len(all_bad) - 20} more" if len(all_bad) > 20 else "")
    blob = {"classes": classes}
    for k, s in splits.items():
        blob[f"{k}_x"], blob[f"{k}_y"] = s.x, s.y
    from regx.runs import atomic_save

    atomic_save(blob, cache)
    return splits["train"], splits.get("val"), splits.get("test"), classes, 3


def check_data(**cfg) -> tuple[list[str], list[str]]:
    """`regx check-data`: (report lines, unreadable files) without training. An image folder is
    scanned and every file decoded; other sets are loaded as a run would load them."""
    if cfg["name"] != "imagefolder":
        data = load_data(**cfg)
        lines = [f"{cfg['name']}: {data.num_classes} classes, {data.channels} channel(s), {data.image_size}px"]
        for split in ("train", "val", "test"):
            part = getattr(data, split)
            if part is not None:
                counts = torch.bincount(part.y.cpu(), minlength=data.num_classes).tolist()
                lines.append(f"  {split}: {len(part)} images, per class {min(counts)}-{max(counts)}")
        return lines, []
    items, classes = scan_folder(cfg["path"])
    lines, bad = [f"{cfg['path']}: {len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"], []
    for split, split_items in items.items():
        _, _, split_bad = check_images(split_items, cfg["image_size"] or 32, cfg.get("workers", 0))
        bad.extend(split_bad)
        counts = [0] * len(classes)
        for _, label in split_items:
            counts[label] += 1
        lines.append(f"  {split}: {len(split_items)} files, per class {min(counts)}-{max(counts)}, "
                     f"{len(split_bad)} unreadable")
    return lines, bad

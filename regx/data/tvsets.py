"""torchvision's sets: MNIST, Fashion-MNIST, CIFAR-10/100 (IDX files read directly where present)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

from regx.data.core import DataError, Split, log, register_loader

_TRAIN_SIZE = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000}
_CHANNELS = {"mnist": 1, "fashion_mnist": 1, "cifar10": 3, "cifar100": 3}
_TV = {  # name: (torchvision class, its folder under root, raw file names, other places to look)
    "mnist": (
        "MNIST",
        "MNIST/raw",
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
        ["/usr/share/datasets/mnist"],
    ),
    "fashion_mnist": (
        "FashionMNIST",
        "FashionMNIST/raw",
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
        ["/usr/share/datasets/fashion-mnist"],
    ),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"],
        [],
    ),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"], []),
}


def _tv_split(ds) -> Split:
    x = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return Split(y=torch.as_tensor(ds.targets, dtype=torch.long), x=x.contiguous())


# torchvision's class names for the IDX sets, so that reading their files needs no torchvision import: 0.16 s
# (median of 10, 2-core CPU) on top of torch and torch._dynamo, which torch.optim's first step imports anyway
_IDX_CLASSES = {
    "mnist": [f"{i} - {w}" for i, w in enumerate("zero one two three four five six seven eight nine".split())],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    ],
}  # fmt: skip


def _load_tv(name: str, root: str, download: bool, image_size: int | None):
    cls_name, folder, files, elsewhere = _TV[name]
    if name in _IDX_CLASSES:  # torchvision's own place first, as its class looks, then root, then the system's
        for place in [Path(root) / folder, Path(root), *map(Path, elsewhere)]:
            found = _read_idx_set(place)
            if found:
                log.info("%s: reading IDX files from %s", name, place)
                tr, te = found
                return _resize(tr, image_size), None, _resize(te, image_size), list(_IDX_CLASSES[name]), 1
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    train = test = None
    if name not in _IDX_CLASSES:  # the IDX sets' files were looked for above
        try:
            train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
        except RuntimeError:
            pass
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
        f = torch.nn.functional.interpolate(
            f, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(f.round().clamp(0, 255).to(torch.uint8))
    return Split(y=split.y, x=torch.cat(out))


for _name in _TV:
    register_loader(
        _name, size=lambda *, _n=_name, **_: (_TRAIN_SIZE[_n], False), channels=lambda *, _n=_name, **_: _CHANNELS[_n]
    )(lambda *, _n=_name, root, download, image_size, **_: _load_tv(_n, root, download, image_size))

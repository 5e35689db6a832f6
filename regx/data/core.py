"""Datasets as uint8 tensors, and batches of them on the training device.

Every dataset is decoded once into a uint8 NCHW tensor (DESIGN.md: "the data path"); shuffling,
batching, augmentation and normalization then happen on the training device with no per-image Python
work per step. A set too large for memory keeps file paths instead and streams through a DataLoader
whose workers only decode and resize; its batches then join the same path.

This module: the containers, the loader registry, `load_data`, splits and batching. Loaders live in
synthetic.py (the embedded shapes), tvsets.py (MNIST, Fashion-MNIST, CIFAR) and folders.py (images).
"""

from __future__ import annotations

import atexit
import logging
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

log = logging.getLogger("regx")


class DataError(RuntimeError):
    """Data that cannot be loaded: the message names the path and what to do."""


@dataclass
class Split:
    """One split: images as a uint8 tensor (x) or, when streaming, as files its loader reads (`files`: a
    Dataset of (uint8 image, label, why it did not decode) with `paths` and `subset(indices)`, such as
    folders.FileDataset)."""

    y: torch.Tensor  # int64 labels (the given ones: with data.label_noise, some are wrong on purpose)
    x: torch.Tensor | None = None  # uint8 N,C,H,W
    files: torch.utils.data.Dataset | None = None
    true_y: torch.Tensor | None = None  # with label noise: the labels before it

    def __len__(self) -> int:
        return len(self.y)

    @property
    def paths(self) -> list[str]:
        return self.files.paths

    def subset(self, idx: torch.Tensor) -> Split:
        true_y = self.true_y[idx] if self.true_y is not None else None
        if self.x is not None:
            return Split(y=self.y[idx], x=self.x[idx], true_y=true_y)
        return Split(y=self.y[idx], files=self.files.subset(idx), true_y=true_y)


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


LOADERS = {}


SIZES = {}  # name -> fn(**data keys) -> (training pool size, whether the set has its own validation split)
CHANNELS = {}  # name -> fn(**data keys) -> the images' channels


def register_loader(name, size=None, channels=None):
    """Register a loader; `size` tells how many training images it has and `channels` how many channels
    its images have, each without loading them."""

    def deco(fn):
        LOADERS[name] = fn
        if size is not None:
            SIZES[name] = size
        if channels is not None:
            CHANNELS[name] = channels
        return fn

    return deco


def image_channels(data_cfg) -> int | None:
    """The channels of this `data` config's images, found without loading them (None: not known before)."""
    from omegaconf import OmegaConf

    kw = loading_keys(OmegaConf.to_container(data_cfg, resolve=True))
    return CHANNELS[kw["name"]](**kw) if kw["name"] in CHANNELS else None


def train_count(data_cfg) -> int:
    """How many images the training split of this `data` config holds, found without loading the
    data (what `regx lr-plot` needs to count steps): the pool, less the validation part carved from
    it, or `train_size`."""
    from omegaconf import OmegaConf

    kw = loading_keys(OmegaConf.to_container(data_cfg, resolve=True))
    if kw["name"] not in SIZES:
        return len(load_data(**kw).train)
    pool, has_val = SIZES[kw["name"]](**kw)
    n = pool if has_val else pool - max(1, round(pool * kw["val_fraction"]))
    if kw["train_size"] is not None:
        if kw["train_size"] > n:
            raise DataError(f"data.train_size={kw['train_size']} exceeds the {n} training images available")
        return kw["train_size"]
    return n


def load_config(data_cfg, **override) -> Data:
    """The one adapter from the `data` group of a config to `load_data` (`override`: keys set here
    instead, e.g. a pretrained model's image size)."""
    from omegaconf import OmegaConf

    kwargs = loading_keys(OmegaConf.to_container(data_cfg, resolve=True))
    kwargs.update({k: v for k, v in override.items() if v is not None})
    return load_data(**kwargs)


def loading_keys(data: dict) -> dict:
    """The data group's keys that say how to load it (`mirror` says what the data is: the verdict reads it)."""
    return {k: v for k, v in data.items() if k != "mirror"}


def load_data(
    *,
    name: str,
    root: str,
    download: bool,
    path: str | None,
    image_size: int | None,
    channels: int,
    num_classes: int,
    n_train: int,
    n_test: int,
    val_fraction: float,
    train_size: int | None,
    seed: int,
    mean: list[float] | None,
    std: list[float] | None,
    stream: bool | None,
    max_memory_gb: float,
    workers: int,
    on_bad_image: str,
    decode: str = "pil",
    label_noise: float = 0.0,
    label_noise_kind: str = "symmetric",
) -> Data:
    """Load a dataset by name, carve a seeded validation split, take a training subset, and make a
    fraction of the training labels wrong on purpose. Every argument is the `data` group's key of the
    same name (config.DataConfig holds the defaults)."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(sorted(LOADERS))})")
    kwargs = dict(
        root=root,
        download=download,
        path=path,
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        stream=stream,
        max_memory_gb=max_memory_gb,
        workers=workers,
        on_bad_image=on_bad_image,
        decode=decode,
    )
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
    if label_noise > 0:  # last, so every draw before it is the run's without noise too
        train = noisy_labels(train, label_noise, label_noise_kind, len(classes), g)
    size = train.x.shape[-1] if train.x is not None else train.files.size
    if mean is None or std is None:
        m, s = channel_stats(train, workers)
        mean, std = mean or m, std or s
    data = Data(
        train=train,
        val=val,
        test=test,
        classes=list(classes),
        channels=channels,
        image_size=size,
        mean=list(mean),
        std=list(std),
    )
    if len(data.mean) != channels or len(data.std) != channels:
        data.mean, data.std = data.mean[:1] * channels, data.std[:1] * channels
    return data


def noisy_labels(split: Split, rate: float, kind: str, classes: int, g: torch.Generator) -> Split:
    """The split with round(rate * N) of its labels flipped, the images chosen uniformly (seeded): to a
    class drawn uniformly among the other classes (symmetric), or to the next class (pairflip, c -> c+1,
    the last to the first), as the label-noise literature defines them (Han et al. 2018). The true labels
    stay in `true_y`."""
    flips = round(rate * len(split))
    chosen = torch.randperm(len(split), generator=g)[:flips]
    y = split.y.clone()
    shift = (
        torch.randint(1, classes, (flips,), generator=g) if kind == "symmetric" else torch.ones(flips, dtype=torch.long)
    )
    y[chosen] = (y[chosen] + shift) % classes
    files = split.files.with_labels(y) if split.files is not None else None
    return Split(y=y, x=split.x, files=files, true_y=split.y.clone())


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


STATS_SAMPLE = 4096  # a streamed split's channel statistics come from this many of its images (seeded)


def stats_sample(n: int) -> torch.Tensor:
    """The STATS_SAMPLE indices (seeded, in order) of n images that a streamed split's channel
    statistics are measured on."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].sort().values


def channel_stats(split: Split, workers: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a split, in [0, 1] units. A streamed split's come from
    `stats_sample`, not a whole epoch of decoding before the first step (on Fashion-MNIST's 59,400
    training images, mean and std 0.0026 and 0.0011 from the whole set's: test_data)."""
    if split.x is None and len(split) > STATS_SAMPLE:
        split = split.subset(stats_sample(len(split)))
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
    sampler = idx[first:last].tolist()
    loader = data_loader(
        split.files,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        collate_fn=getattr(split.files, "collate", None),
    )
    done = 0
    for xb, yb, why in loader:
        paths = [split.paths[sampler[done + i]] for i in range(len(why))]
        done += len(why)
        if any(why):  # the header was sound (checked before the run), the image is not: truncated, or changed since
            xb, yb, paths = _without_bad(split.files, xb, yb, paths, why)
            if len(paths) < (2 if drop_single else 1):
                continue
        if isinstance(xb, list):  # data.decode=device: the workers read the JPEGs, decoded here on the device
            xb = split.files.on_device(xb, device, paths)
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def _without_bad(files, xb, yb, paths: list[str], why: list[str]):
    """A streamed batch less the files that did not decode, each named in a warning the first time a
    batch meets it, when `files.skip_bad` (data.on_bad_image=skip); a DataError naming them otherwise."""
    bad = {path: f"{path} ({w})" for path, w in zip(paths, why) if w}
    if not getattr(files, "skip_bad", False):
        raise DataError(
            f"cannot decode {'; '.join(list(bad.values())[:5])}{' and more' if len(bad) > 5 else ''} "
            "(data.on_bad_image=skip leaves such files out; `regx check-data` lists them all)"
        )
    new = [named for path, named in bad.items() if path not in files.skipped]
    if new:
        files.skipped.update(bad)
        log.warning("imagefolder: skipping %d unreadable image(s) (%d so far): %s", len(new), len(files.skipped),
                    "; ".join(new[:5]) + (" and more" if len(new) > 5 else ""))  # fmt: skip
    keep = [i for i, w in enumerate(why) if not w]
    xb = [xb[i] for i in keep] if isinstance(xb, list) else xb[torch.tensor(keep, dtype=torch.long)]
    return xb, yb[torch.tensor(keep, dtype=torch.long)], [paths[i] for i in keep]


def _worker_init(_: int, parent: int) -> None:
    """A decoding worker leaves SIGINT and SIGTERM to the main process: a signal to the whole process
    group (Ctrl-C, SLURM, docker stop) then stops the run after a step, with a checkpoint, instead of
    killing the workers under it. The main process ends its workers itself; when it dies without doing
    so (kill -9, the OOM killer), the kernel kills them (Linux's PR_SET_PDEATHSIG), whatever they are
    doing: torch's own watch on the parent only runs between batches."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)


_live_workers: weakref.WeakSet = weakref.WeakSet()  # the iterators of _Loader whose workers may be running


def _end_workers() -> None:
    """At the interpreter's exit, before multiprocessing's own exit function: that one SIGTERMs daemonic
    children, which regx's workers ignore, and then joins them, forever (a stopped run whose batch
    iterator a traceback kept alive hung there after "interrupted"). torch's shutdown asks each worker
    to finish instead, then waits a little, then terminates what is left."""
    for it in list(_live_workers):
        it._shutdown_workers()


class _Loader(torch.utils.data.DataLoader):
    def _get_iterator(self):
        it = super()._get_iterator()
        if hasattr(it, "_shutdown_workers"):  # worker processes (num_workers > 0)
            # atexit runs the newest first: registered again now, after multiprocessing registered its own
            atexit.unregister(_end_workers)
            atexit.register(_end_workers)
            _live_workers.add(it)
        return it


def data_loader(dataset, **kwargs) -> torch.utils.data.DataLoader:
    """torch's DataLoader, with workers that ignore stop signals and die with the main process (every
    DataLoader of regx), ended before multiprocessing's exit function could wait on them forever
    (_end_workers). Each of its iterators draws its workers' base seed from the loader's generator,
    torch's global one by default, which dropout and the augmentation draw from too: a loader started
    mid-epoch (a resume) would shift their stream. Its own generator keeps it out of that stream
    (regx's workers only decode, so their seed does not matter)."""
    import functools
    import os

    return _Loader(
        dataset,
        worker_init_fn=functools.partial(_worker_init, parent=os.getpid()),
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def to_device(data: Data, device: torch.device) -> Data:
    """Move the in-memory splits to the training device (once)."""

    def move(s: Split | None) -> Split | None:
        if s is None or s.x is None:
            return s
        true_y = s.true_y.to(device) if s.true_y is not None else None
        return Split(y=s.y.to(device), x=s.x.to(device), true_y=true_y)

    data.train, data.val, data.test = move(data.train), move(data.val), move(data.test)
    return data

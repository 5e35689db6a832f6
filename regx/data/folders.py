"""A user's own images: a folder of class subfolders (optionally under train/, val/, test/), decoded
once and cached, or streamed through DataLoader workers when too large for memory; `regx check-data`."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch

from regx.data.core import DataError, Split, data_loader, log, register_loader

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def scan_folder(path: str) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Find split folders and class subfolders; return ({split: [(file, label)]}, classes); DataError
    naming the first problem (survey_folder lists them all, for regx check-data)."""
    problems, items, classes = survey_folder(path)
    if problems:
        raise DataError(problems[0])
    return items, classes


def scan_labelled(path: str) -> dict[str, list[tuple[str, str]]]:
    """Every image under `path` by split with its class name, for evaluation: split folders (train/,
    val/, test/, any of them) of class folders, or class folders directly (the split `all`)."""
    base = Path(path)
    if not base.is_dir():
        raise DataError(f"data.path={path}: no such directory")
    splits = {s: base / s for s in ("train", "val", "test") if (base / s).is_dir()} or {"all": base}
    out = {}
    for split, folder in splits.items():
        out[split] = [
            (str(f), c.name)
            for c in sorted(folder.iterdir())
            if c.is_dir() and not c.name.startswith(".")
            for f in sorted(c.rglob("*"))
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
        ]
    if not any(out.values()):
        raise DataError(f"data.path={path}: no images in class folders under it")
    return out


def fit_image(im, size: int, mode: str = "RGB") -> torch.Tensor:
    """A PIL image in `mode` (RGB or L), turned upright as its EXIF orientation says, 16-bit and float
    pixels scaled (not clipped) to 8 bits, its shorter side resized to size and center-cropped:
    uint8 C,H,W."""
    import numpy as np
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)  # a phone's portrait photo is stored sideways with a tag
    if im.mode.startswith("I") or im.mode == "F":  # 16-bit PNG/TIFF ("I;16", "I") or 32-bit float
        a = np.asarray(im, dtype=np.float64)
        top = (
            1.0
            if im.mode == "F" and a.max(initial=0) <= 1
            else (65535.0 if a.max(initial=0) > 255 or "16" in im.mode else 255.0)
        )
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    im = ImageOps.fit(im.convert(mode), (size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).view(size, size, -1).permute(2, 0, 1)


def decode(path: str, size: int, mode: str = "RGB") -> torch.Tensor:
    """Decode an image file as training decodes image folders: fit_image, reading large JPEGs at a
    reduced scale."""
    from PIL import Image

    with Image.open(path) as im:
        return fit_image(_reduced(im, size, mode), size, mode)


def _reduced(im, size: int, mode: str = "RGB"):
    """`im` set to decode large JPEGs at a reduced scale (from the header: nothing is decoded yet);
    TooLarge when it would still decode at more pixels than Pillow's limit."""
    from PIL import Image

    im.draft(mode, (size, size))
    if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # Pillow only warns up to twice its limit
        raise TooLarge(im.width, im.height, len(im.getbands()))
    return im


def header_problem(path: str, size: int) -> str:
    """Why a file cannot be a training image, read from its header alone (empty, not an image, over
    Pillow's pixel limit); "" when the header is sound. A file damaged past its header (truncated) is
    found only when it is decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            _reduced(im, size)
    except Exception as exc:
        return why_unreadable(exc)
    return ""


class TooLarge(ValueError):
    """An image that would decode whole at more pixels than Pillow's limit (only JPEGs decode reduced)."""

    def __init__(self, width: int, height: int, bands: int):
        super().__init__(
            f"{width}x{height} pixels, about {width * height * bands / 1e9:.1f} GB to decode whole (regx reads only "
            "JPEGs at a reduced scale): shrink it first"
        )


def why_unreadable(exc: BaseException) -> str:
    """What is wrong with an image file, in a few words, from the exception decoding it raised."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, Image.DecompressionBombError):
        return f"over Pillow's size limit of {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)"
    if isinstance(exc, TooLarge):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can identify"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return "truncated"
    text = " ".join(str(exc).split())[:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# data.decode: where an image folder's files become pixels
#   pil     Pillow in the DataLoader workers (JPEGs larger than needed decode at a reduced scale);
#   cpu     JPEGs by TorchCodec's decoder (torchvision's where TorchCodec is not installed) in the workers,
#           resized there; other files as pil;
#   device  the workers only read JPEGs' bytes; each batch's JPEGs are decoded together on the training
#           device (nvJPEG on CUDA) and resized there; other files as pil.
JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112


@functools.cache  # once per process: a failed import is searched for again on every attempt
def jpeg_decoder():
    """decode(list of 1-D uint8 byte tensors, device) -> list of RGB uint8 C,H,W tensors: TorchCodec's
    (pip install torchcodec; torchvision's image decoders are deprecated since torchvision 0.29), else
    torchvision's."""
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, OSError, RuntimeError):  # not installed, or its native libraries do not load
        import warnings

        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode_jpeg

        def decode_tv(data: list[torch.Tensor], device) -> list[torch.Tensor]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the deprecation is TorchCodec's cue
                return tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

        decode_tv.library = "torchvision"
        return decode_tv

    def decode_tc(data: list[torch.Tensor], device) -> list[torch.Tensor]:
        return decode_jpeg(data, mode="RGB", device=device)

    decode_tc.library = "TorchCodec"
    return decode_tc


def plain_jpeg(data: bytes) -> bool:
    """A JPEG a tensor decoder makes the pixels Pillow would: RGB or grey, upright (no EXIF rotation),
    within Pillow's pixel limit. Others (CMYK, rotated phone photos, huge) decode through Pillow."""
    import io

    from PIL import Image

    if not data.startswith(JPEG_MAGIC):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return (
                im.mode in ("RGB", "L")
                and im.width * im.height <= Image.MAX_IMAGE_PIXELS
                and im.getexif().get(EXIF_ORIENTATION, 1) == 1
            )
    except Exception:  # unreadable: Pillow's decoding names why
        return False


def fit_tensors(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Decoded uint8 C,H,W images (on any device) as fit_image fits a PIL image: each centre-cropped to a
    square and resized to size x size (bilinear, antialiased as Pillow's), N,C,size,size. Images of one
    shape are resized together."""
    from torchvision.transforms.v2 import functional as TF

    out = torch.empty(len(images), images[0].shape[0], size, size, dtype=torch.uint8, device=images[0].device)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(tuple(im.shape), []).append(i)
    for (_, h, w), idx in by_shape.items():
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        batch = torch.stack([images[i][:, top : top + side, left : left + side] for i in idx])
        if side != size:
            batch = TF.resize(batch, [size, size], antialias=True)
        out[torch.tensor(idx, device=out.device)] = batch
    return out


def decode_batch(items: list[torch.Tensor], size: int, device, paths: list[str]) -> torch.Tensor:
    """A data.decode=device batch as the workers left it (a JPEG's bytes, 1-D, or an image Pillow
    already decoded and fitted, C,H,W), as N,3,size,size uint8 on `device`: the JPEGs decoded in one
    call there. A JPEG that does not decode is a DataError naming its file (`paths`: the batch's)."""
    out = torch.empty(len(items), 3, size, size, dtype=torch.uint8, device=device)
    jpegs = [i for i, item in enumerate(items) if item.dim() == 1]
    for i, item in enumerate(items):
        if item.dim() == 3:
            out[i] = item.to(device, non_blocking=True)
    if jpegs:
        decode = jpeg_decoder()
        try:
            decoded = decode([items[i] for i in jpegs], device)
        except RuntimeError as batch_exc:
            bad = []
            for i in jpegs:
                try:
                    decode([items[i]], "cpu")
                except RuntimeError as exc:
                    bad.append(f"{paths[i]} ({' '.join(str(exc).split())[:80]})")
            if not bad:  # each decodes on the CPU: the device's decoder failed on the batch
                raise DataError(
                    f"the {device} JPEG decoder failed on a batch the CPU decodes "
                    f"({' '.join(str(batch_exc).split())[:120]}); data.decode=cpu decodes in the workers instead"
                ) from None
            raise DataError(f"cannot decode {'; '.join(bad[:5])}; run `regx check-data`") from None
        out[torch.tensor(jpegs, device=device)] = fit_tensors(decoded, size)
    return out


def _read_or_decode(path: str, size: int, how: str) -> torch.Tensor:
    """What a worker hands on for one file under data.decode=`how` (pil, cpu or device)."""
    if how != "pil":
        with open(path, "rb") as f:
            data = f.read()
        if plain_jpeg(data):
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return raw if how == "device" else fit_tensors(jpeg_decoder()([raw], "cpu"), size)[0]
    return decode(path, size)


def _collate_list(batch):
    """A data.decode=device batch: the items as a list (JPEG bytes have no common shape)."""
    xs, ys, whys = zip(*batch)
    return list(xs), torch.stack([torch.as_tensor(y) for y in ys]), list(whys)


class FileDataset(torch.utils.data.Dataset):
    """(uint8 image, label, why unreadable) per file; a file that does not decode gives a blank image
    and the reason (an empty string when it decoded). With how=device a JPEG's item is its bytes
    (decode_batch makes the batch's images), and batches are lists (`collate`). `skip_bad`: a batch
    leaves out the files that do not decode (data.on_bad_image=skip; `skipped` holds them, shared by
    its subsets) instead of stopping the run."""

    def __init__(self, paths, labels, size, how: str = "pil", skip_bad: bool = False, skipped: set | None = None):
        self.paths, self.labels, self.size, self.how = paths, labels, size, how
        self.skip_bad, self.skipped = skip_bad, set() if skipped is None else skipped
        self.collate = _collate_list if how == "device" else None

    def __len__(self):
        return len(self.paths)

    def _like(self, paths, labels) -> FileDataset:
        return FileDataset(paths, labels, self.size, self.how, self.skip_bad, self.skipped)

    def subset(self, idx: torch.Tensor) -> FileDataset:
        return self._like([self.paths[i] for i in idx.tolist()], self.labels[idx])

    def with_labels(self, labels: torch.Tensor) -> FileDataset:
        return self._like(self.paths, labels)

    def on_device(self, items: list[torch.Tensor], device, paths: list[str]) -> torch.Tensor:
        """A batch of how=device items (`collate`'s list) as images on `device`: decode_batch."""
        return decode_batch(items, self.size, device, paths)

    def __getitem__(self, i):
        try:
            return _read_or_decode(self.paths[i], self.size, self.how), self.labels[i], ""
        except Exception as exc:  # truncated, empty, too large, or not an image: the caller names it
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), self.labels[i], why_unreadable(exc)


def file_split(
    paths: list[str], labels: torch.Tensor, size: int, how: str = "pil", skip_bad: bool = False, skipped=None
) -> Split:
    """A split streamed from image files, each decoded (data.decode=`how`) and fitted to `size` when
    its batch is drawn."""
    return Split(y=labels, files=FileDataset(paths, labels, size, how, skip_bad, skipped))


class _Headers(torch.utils.data.Dataset):
    """header_problem of each file, read in DataLoader workers."""

    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return header_problem(self.paths[i], self.size)


def _as_list(batch):
    return list(batch)


def check_headers(items: list[tuple[str, int]], size: int, workers: int) -> list[tuple[str, str]]:
    """The files whose header is unsound, as (path, why): a streamed folder's check before training,
    which opens each file without decoding it (its batches name the files that fail to decode)."""
    loader = data_loader(
        _Headers([p for p, _ in items], size), batch_size=256, num_workers=workers, collate_fn=_as_list
    )
    whys = [w for batch in loader for w in batch]
    return [(path, why) for (path, _), why in zip(items, whys) if why]


def check_images(
    items: list[tuple[str, int]], size: int, workers: int, *, keep: bool = True, how: str = "pil"
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[tuple[str, str]]]:
    """Decode every file (data.decode=`how`; device's JPEGs with the same decoder on the CPU, once);
    return (images, labels, bad files as (path, why)). keep=False checks without keeping the pixels (a
    streamed folder): (None, None, bad)."""
    labels = torch.tensor([lab for _, lab in items], dtype=torch.long)
    ds = FileDataset([p for p, _ in items], labels, size, "cpu" if how == "device" else how)
    xs, ys, oks, bad = [], [], [], []
    loader = data_loader(ds, batch_size=256, num_workers=workers)
    start = 0
    for xb, yb, why in loader:
        ok = torch.tensor([not w for w in why], dtype=torch.bool)
        bad += [(items[start + i][0], w) for i, w in enumerate(why) if w]
        start += len(why)
        if keep:
            xs.append(xb)
            ys.append(yb)
            oks.append(ok)
    if not keep:
        return None, None, bad
    if not xs:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long), []
    ok = torch.cat(oks)
    return torch.cat(xs)[ok], torch.cat(ys)[ok], bad


def _bad_images(bad: list[tuple[str, str]], on_bad_image: str) -> None:
    """Unreadable images: a DataError naming each (with why), or with on_bad_image=skip a warning."""
    shown = "; ".join(f"{path} ({why})" for path, why in bad[:20]) + (
        f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
    )
    if on_bad_image != "skip":
        raise DataError(f"{len(bad)} unreadable image(s): {shown} (data.on_bad_image=skip skips them)")
    log.warning("imagefolder: skipped %d unreadable image(s): %s", len(bad), shown)


def _folder_key(items: dict, size: int, how: str) -> str:
    h = hashlib.sha256(f"v1 size={size}".encode() + (f" decode={how}".encode() if how != "pil" else b""))
    for split in sorted(items):
        for p, label in items[split]:
            st = os.stat(p)
            h.update(f"{split}|{p}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _folder_size(*, path, **_) -> tuple[int, bool]:
    items, _ = scan_folder(path)
    return len(items["train"]), "val" in items


@register_loader("imagefolder", size=_folder_size, channels=lambda **_: 3)  # decoded as RGB
def _load_imagefolder(*, root, path, image_size, stream, max_memory_gb, workers, on_bad_image, decode="pil", **_):
    items, classes = scan_folder(path)
    n_total = sum(len(v) for v in items.values())
    decoded_gb = n_total * 3 * image_size * image_size / 1e9
    if stream or (stream is None and decoded_gb > max_memory_gb):
        log.info(
            "imagefolder: streaming %d images (%s); checking each file's header (test/'s files decoded)",
            n_total,
            "data.stream=true" if stream else f"{decoded_gb:.1f} GB decoded > data.max_memory_gb={max_memory_gb}",
        )
        # Batches meet train/'s and val/'s files in the first epoch, and name any that fails to decode then;
        # test/'s only after the last: its files are decoded now, so that none fails a finished run.
        bad = [
            b
            for k, v in items.items()
            for b in (
                check_images(v, image_size, workers, keep=False, how=decode)[2]
                if k == "test"
                else check_headers(v, image_size, workers)
            )
        ]
        if bad:
            _bad_images(bad, on_bad_image)
            gone = {path for path, _ in bad}
            items = {k: [(p, lab) for p, lab in v if p not in gone] for k, v in items.items()}
        skipped: set[str] = set()  # files that fail to decode, left out as batches meet them (skip)

        def as_split(v):
            if not v:
                return None
            labels = torch.tensor([lab for _, lab in v], dtype=torch.long)
            return file_split([p for p, _ in v], labels, image_size, decode, on_bad_image == "skip", skipped)

        return as_split(items["train"]), as_split(items.get("val")), as_split(items.get("test")), classes, 3
    cache = Path(root) / "cache" / f"imagefolder-{_folder_key(items, image_size, decode)}.pt"
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            log.info("imagefolder: %d images from cache %s", n_total, cache)
            splits = {
                k: Split(y=blob[f"{k}_y"], x=blob[f"{k}_x"]) if f"{k}_x" in blob else None
                for k in ("train", "val", "test")
            }
            return splits["train"], splits["val"], splits["test"], list(blob["classes"]), 3
        except Exception as exc:
            log.warning("imagefolder: ignoring unreadable cache %s (%s)", cache, exc)
    log.info("imagefolder: decoding %d images from %s to %dx%d", n_total, path, image_size, image_size)
    splits, all_bad = {}, []
    for k in ("train", "val", "test"):
        if items.get(k):
            x, y, bad = check_images(items[k], image_size, workers, how=decode)
            all_bad.extend(bad)
            splits[k] = Split(y=y, x=x)
    if all_bad:
        _bad_images(all_bad, on_bad_image)
    blob = {"classes": classes}
    for k, s in splits.items():
        blob[f"{k}_x"], blob[f"{k}_y"] = s.x, s.y
    from regx.files import atomic_save

    atomic_save(blob, cache)
    return splits["train"], splits.get("val"), splits.get("test"), classes, 3


TINY = 0.5  # an image whose shorter side is under this share of data.image_size is upscaled more than 2x
ASPECT = 4.0  # longer side over shorter: the center crop keeps a quarter of the image or less
IMBALANCE = 10.0  # the largest class over the smallest in training


def survey_folder(path: str) -> tuple[list[str], dict[str, list[tuple[str, int]]], list[str]]:
    """What scan_folder checks, all of it at once: (structural problems, {split: [(file, label)]} of
    what can be read, classes). Problems are lines; none means scan_folder would accept the folder."""
    base = Path(path)
    if not base.is_dir():
        return [f"data.path={path}: no such directory"], {}, []
    splits = {s: base / s for s in ("train", "val", "test") if (base / s).is_dir()} or {"train": base}
    problems = []
    if "train" not in splits:
        problems.append(f"data.path={path}: has {', '.join(splits)}/ but no train/ folder")
        return problems, {}, []

    def class_dirs(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    classes = class_dirs(splits["train"])
    if len(classes) < 2:
        problems.append(
            f"{splits['train']}: found {len(classes)} class folder(s); need at least 2 (one subfolder per class)"
        )
    index, items = {c: i for i, c in enumerate(classes)}, {}
    for split, folder in splits.items():
        items[split] = []
        for c in class_dirs(folder):
            if c not in index:
                problems.append(f"{folder / c}: class '{c}' is not among train/'s classes")
                continue
            files = sorted(f for f in (folder / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not files and split == "train":
                problems.append(f"{folder / c}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            target = (folder / c).resolve()
            if not target.is_relative_to(base.resolve()):  # a link out of the data: say where it leads
                log.warning(
                    "imagefolder: %s is a link to %s, outside data.path: its %d images are read as class '%s'",
                    folder / c,
                    target,
                    len(files),
                    c,
                )
            items[split] += [(str(f), index[c]) for f in files]
    return problems, items, classes


def _shape_warnings(items: list[tuple[str, int]], size: int) -> tuple[list[str], list[str]]:
    """(tiny images, extreme aspect ratios) from the files' headers (no decoding): paths with sizes."""
    from PIL import Image

    tiny, wide = [], []
    for path, _ in items:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:  # unreadable: listed by the decoding pass
            continue
        if min(w, h) < TINY * size:
            tiny.append(f"{path} ({w}x{h})")
        if max(w, h) >= ASPECT * min(w, h):
            wide.append(f"{path} ({w}x{h})")
    return tiny, wide


def _duplicates(items: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Files with the same bytes in two splits (a test image also trained on): one line per pair."""
    import hashlib

    seen, out = {}, []
    for split in ("train", "val", "test"):
        for path, _ in items.get(split, []):
            try:
                digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            except OSError:
                continue
            first = seen.setdefault(digest, (split, path))
            if first[0] != split:
                out.append(f"{path} = {first[1]}")
    return out


def _listed(what: str, paths: list[str], shown: int = 5) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"{len(paths)} {what}: {', '.join(paths[:shown])}{more}"


def check_data(data_cfg) -> tuple[list[str], list[tuple[str, str]], list[str], list[str]]:
    """`regx check-data`: (report lines, unreadable files with why, errors, warnings), every problem
    at once, without training. An image folder is surveyed (structure, every file decoded, sizes from
    the headers, class balance, files repeated across splits); other sets are loaded as a run would."""
    from regx.data.core import load_config

    if data_cfg.name != "imagefolder":
        data = load_config(data_cfg)
        lines = [f"{data_cfg.name}: {data.num_classes} classes, {data.channels} channel(s), {data.image_size}px"]
        for split in ("train", "val", "test"):
            part = getattr(data, split)
            if part is not None:
                counts = torch.bincount(part.y.cpu(), minlength=data.num_classes).tolist()
                lines.append(f"  {split}: {len(part)} images, per class {min(counts)}-{max(counts)}")
        return lines, [], [], []
    errors, items, classes = survey_folder(data_cfg.path)
    size = data_cfg.image_size or 32
    lines, bad, warnings = [f"{data_cfg.path}: {len(classes)} classes ({', '.join(classes[:10])}"
                            f"{', ...' if len(classes) > 10 else ''})"], [], []  # fmt: skip
    for split, split_items in items.items():
        _, _, split_bad = (
            check_images(split_items, size, data_cfg.workers, keep=False, how=data_cfg.decode)
            if split_items
            else (0, 0, [])
        )
        bad.extend(split_bad)
        counts = [0] * len(classes)
        for _, label in split_items:
            counts[label] += 1
        lines.append(
            f"  {split}: {len(split_items)} files, per class {min(counts, default=0)}-{max(counts, default=0)}, "
            f"{len(split_bad)} unreadable"
        )
        present = [n for n in counts if n]  # an empty class is an error of its own
        if split == "train" and present and max(present) >= IMBALANCE * min(present):
            small, large = classes[counts.index(min(present))], classes[counts.index(max(present))]
            warnings.append(
                f"classes out of balance in train/: {large} has {max(present)} images, {small} {min(present)} "
                f"({max(present) / min(present):.0f}x)"
            )
        tiny, wide = _shape_warnings(split_items, size)
        if tiny:
            warnings.append(_listed(f"image(s) in {split} under half of data.image_size={size} (upscaled)", tiny))
        if wide:
            warnings.append(_listed(f"image(s) in {split} {ASPECT:g} or more times as wide as high (or high as "
                                    "wide): the center crop keeps a part", wide))  # fmt: skip
    if bad:
        errors.append(f"{len(bad)} unreadable image(s)")
    repeated = _duplicates(items)
    if repeated:
        warnings.append(_listed("file(s) in two splits (the same bytes)", repeated))
    return lines, bad, errors, warnings

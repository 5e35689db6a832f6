"""Use what a run trained: `regx.load(run_dir)` and `regx predict RUN_DIR PATH...`.

    import regx
    clf = regx.load("outputs/runs/<run>")            # best.pt, on the best device
    clf.predict("cat.jpg")                            # {"label": "cat", "prob": 0.93, "top": [...]}
    clf.predict(["a.png", "b.png"], top_k=3)          # one dict per image

The preprocessing is the run's own: the image converted to the run's channels, fitted to its size
(shorter side resized, center crop, as image folders are decoded for training), scaled to [0, 1] and
normalized with the run's statistics.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from regx.data.core import data_loader
from regx.data.folders import IMAGE_EXTENSIONS


class LoadError(ValueError):
    """A run that cannot be loaded, or input that cannot be predicted on: one line."""


@dataclass
class Preprocess:
    """What the run did to an image before its network saw it."""

    size: int
    channels: int
    mean: list[float]
    std: list[float]

    def uint8(self, item) -> torch.Tensor:
        """One image (a path, a PIL image, or a uint8 C,H,W tensor) as uint8 channels x size x size."""
        from PIL import Image

        from regx.data.folders import decode, fit_image

        mode = "L" if self.channels == 1 else "RGB"
        if isinstance(item, str | Path):
            return decode(str(item), self.size, mode)
        if isinstance(item, Image.Image):
            return fit_image(item, self.size, mode)
        if isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.ndim == 3:
            return self._fit(self._channels(item))
        raise LoadError(f"cannot predict on {type(item).__name__}: give file paths, PIL images or uint8 C,H,W tensors")

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.channels:
            return x
        if x.shape[0] == 1:
            return x.expand(self.channels, -1, -1)
        if x.shape[0] == 3 and self.channels == 1:  # as PIL's convert("L")
            weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            return (x.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        raise LoadError(f"an image with {x.shape[0]} channels; the model takes {self.channels}")

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return x
        scale = self.size / min(h, w)
        f = F.interpolate(
            x[None].float(),
            size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
        top, left = (f.shape[-2] - self.size) // 2, (f.shape[-1] - self.size) // 2
        return f[:, top : top + self.size, left : left + self.size].round().clamp(0, 255).to(torch.uint8)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N,C,S,S -> the float batch the network takes."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1)
        return (batch.float() / 255 - mean) / std


@dataclass(repr=False)
class Predictor:
    """A run's model in eval mode, its class names and its preprocessing."""

    model: nn.Module
    classes: list[str]
    preprocess: Preprocess
    device: torch.device
    source: str = ""  # the checkpoint it came from
    amp: object = field(default=None, repr=False)
    tta: bool = False  # the run's test-time augmentation (tta=flip): each image and its mirror

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N,C,S,S (already fitted) -> class probabilities N,K (float32, on the CPU)."""
        from regx.engine import infer

        return infer(self.model, self.preprocess(batch.to(self.device)), self.amp, self.tta).softmax(1).cpu()

    def __repr__(self) -> str:
        shown = ", ".join(self.classes[:4]) + (", ..." if len(self.classes) > 4 else "")
        params = sum(p.numel() for p in self.model.parameters())
        p = self.preprocess
        return (
            f"Predictor({len(self.classes)} classes: {shown}; {p.size}px, {p.channels} channel(s); "
            f"{params:,} params on {self.device}; from {self.source or 'a run'})"
        )

    def predict(self, x, top_k: int = 1):
        """Class names and probabilities for one image (a dict) or a batch (a list of dicts): paths,
        PIL images, uint8 C,H,W tensors, a list of those, or a uint8 N,C,H,W tensor. A folder gives a
        row per image file under it, each with its `path`, as `regx predict` does. Every row is
        {label, prob, top: [{label, prob}, ...]}, as `regx predict`'s JSON lines."""
        if isinstance(x, str | Path) and Path(x).is_dir():
            paths = find_images([str(x)])
            return [{"path": p, **row} for p, row in zip(paths, self.predict(paths, top_k))]
        single = not isinstance(x, list | tuple) and not (isinstance(x, torch.Tensor) and x.ndim == 4)
        items = [x] if single else list(x)
        if not items:
            return []
        probs = self.probabilities(torch.stack([self.preprocess.uint8(i) for i in items]))
        rows = [self._row(p, top_k) for p in probs]
        return rows[0] if single else rows

    def _row(self, p: torch.Tensor, top_k: int) -> dict:
        values, index = p.topk(min(top_k, len(self.classes)))
        top = [{"label": self.classes[i], "prob": round(float(v), 6)} for v, i in zip(values.tolist(), index.tolist())]
        return {"label": top[0]["label"], "prob": top[0]["prob"], "top": top}


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> Predictor:
    """A run's model, classes and preprocessing from its checkpoint (`best` or `last`), verified
    against its manifest as `regx resume` verifies it."""
    from omegaconf import OmegaConf

    from regx.checkpoint import CorruptCheckpoint, read
    from regx.config import TrainConfig
    from regx.device import RunFailed, pick_device, pick_precision
    from regx.engine import autocast
    from regx.evalrun import build_from_checkpoint

    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise LoadError(f"--checkpoint {checkpoint}: must be best or last")
    if not run_dir.is_dir():
        raise LoadError(f"no such run directory: {run_dir}")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise LoadError(f"{path} not found: {run_dir} is not a regx run directory, or no epoch has finished yet")
    try:
        ckpt = read(path)
        dev = pick_device(device)
    except (CorruptCheckpoint, RunFailed) as exc:
        raise LoadError(str(exc)) from None
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), ckpt.config)
    if not ckpt.image_size:
        raise LoadError(f"{path} does not say which image size the run trained at")
    model = build_from_checkpoint(ckpt, cfg, dev).eval()
    norm = ckpt.norm
    return Predictor(
        model,
        list(ckpt.classes),
        Preprocess(int(ckpt.image_size), ckpt.in_channels, list(norm["mean"]), list(norm["std"])),
        dev,
        str(path),
        autocast(dev, pick_precision(cfg.precision, dev)),
        cfg.tta == "flip",
    )


# ---------------------------------------------------------------------------------------------
# `regx predict`: many files, decoded in worker processes, batches on the device


def find_images(specs: list[str]) -> list[str]:
    """Files, folders (recursively, by image extension) and globs, in order, each once."""
    import glob

    out: list[str] = []
    for spec in specs:
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise LoadError(f"{spec}: matches nothing")
        for m in map(Path, matches):
            if m.is_dir():
                found = sorted(str(f) for f in m.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
                if not found:
                    raise LoadError(f"{m}: no images in it ({', '.join(sorted(IMAGE_EXTENSIONS))})")
                out.extend(found)
            elif m.is_file():
                out.append(str(m))
            else:
                raise LoadError(f"{m}: no such file or directory")
    return list(dict.fromkeys(out))


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], preprocess: Preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from regx.data.folders import why_unreadable

        try:
            return self.preprocess.uint8(self.paths[i]), i, ""
        except Exception as exc:  # truncated, empty, not an image: listed at the end with why, never fatal
            p = self.preprocess
            return torch.zeros(p.channels, p.size, p.size, dtype=torch.uint8), i, why_unreadable(exc)


@dataclass
class Prediction:
    """What `predict_files` did: images predicted, unreadable ones, and how many got each class."""

    count: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why), as check-data says it
    histogram: Counter = field(default_factory=Counter)


def predict_files(
    clf: Predictor, paths: list[str], out, *, fmt: str, top_k: int, batch_size: int, workers: int, progress=None
) -> Prediction:
    """Write one row per image to the text stream `out` (csv or jsonl): its path and top-k classes."""
    loader = data_loader(
        _Files(paths, clf.preprocess), batch_size=batch_size, num_workers=workers, pin_memory=clf.device.type == "cuda"
    )
    k = min(top_k, len(clf.classes))
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(["path", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "prob")]])
    result = Prediction()
    for xb, index, why in loader:
        ok = torch.tensor([not w for w in why], dtype=torch.bool)
        result.unreadable += [(paths[i], w) for i, w in zip(index.tolist(), why) if w]
        good = index[ok].tolist()
        if good:
            for i, p in zip(good, clf.probabilities(xb[ok])):
                row = clf._row(p, k)
                result.histogram[row["label"]] += 1
                if writer is not None:
                    writer.writerow([paths[i], *[v for t in row["top"] for v in (t["label"], t["prob"])]])
                else:
                    out.write(json.dumps({"path": paths[i], **row}) + "\n")  # the fields Predictor.predict gives
        result.count += len(good)
        if progress is not None:
            progress(result.count + len(result.unreadable))
    return result


def run_predict(
    run_dir: str,
    specs: list[str],
    *,
    out: str | None,
    top_k: int,
    batch_size: int,
    checkpoint: str,
    workers: int,
    device: str = "auto",
    progress=None,
) -> Prediction:
    """`regx predict`: check everything first (nothing is written for bad input), then predict into
    `out` through a temporary file and a rename, or to stdout as CSV."""
    import sys

    from regx.files import write_atomic

    fmt = "csv"
    if out is not None:
        fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(Path(out).suffix.lower(), "")
        if not fmt:
            raise LoadError(f"--out {out}: the file name must end in .csv or .jsonl")
        if not Path(out).parent.is_dir():
            raise LoadError(f"--out {out}: no such directory {Path(out).parent}")
    if top_k < 1 or batch_size < 1 or workers < 0:
        raise LoadError("--top-k and --batch-size must be >= 1, --workers >= 0")
    clf = load(run_dir, checkpoint, device)
    paths = find_images(specs)
    kw = dict(fmt=fmt, top_k=top_k, batch_size=batch_size, workers=workers, progress=progress)
    if out is None:
        return predict_files(clf, paths, sys.stdout, **kw)
    box = []

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        box.append(predict_files(clf, paths, text, **kw))
        text.flush()
        text.detach()

    write_atomic(Path(out), write)
    return box[0]


# ---------------------------------------------------------------------------------------------
# `regx export`: TorchScript or ONNX, normalization inside, checked against the PyTorch model


class Exported(nn.Module):
    """uint8 images N,C,H,W (0-255, the run's channels and size) -> logits: the run's normalization
    inside the graph, so the file needs no preprocessing code beside it but resizing; with `tta` (the run's
    tta=flip) the mirror too, so the file scores as regx.load does."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], tta: bool = False):
        super().__init__()
        self.model, self.tta = model, tta
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255 - self.mean) / self.std
        logits = self.model(x)
        return (logits + self.model(x.flip(-1))) / 2 if self.tta else logits


@dataclass
class ExportCheck:
    path: Path
    images: int
    max_abs_diff: float
    top1_agreement: float


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, checkpoint: str = "best") -> ExportCheck:
    """Write the run's model as TorchScript (`torchscript`, a .pt for torch.jit.load) or ONNX (`onnx`),
    with a dynamic batch axis and the class names, image size and channels in its metadata; then run
    the file on the run's own validation images and compare its logits with the PyTorch model's."""
    import os

    from regx.files import clear_dead_temporaries

    if fmt not in ("torchscript", "onnx"):
        raise LoadError(f"--format {fmt}: must be torchscript or onnx")
    out = Path(out) if out else Path(run_dir) / "export" / ("model.onnx" if fmt == "onnx" else "model.pt")
    if not out.parent.is_dir() and out.parent != Path(run_dir) / "export":
        raise LoadError(f"--out {out}: no such directory {out.parent}")
    if fmt == "onnx":
        _need("onnx", "onnxruntime", "onnxscript")
    clf = load(run_dir, checkpoint, device="cpu")
    wrapped = Exported(clf.model.float(), clf.preprocess.mean, clf.preprocess.std, clf.tta).eval()
    images = _validation_images(run_dir, clf)
    meta = {
        "classes": clf.classes,
        "image_size": clf.preprocess.size,
        "channels": clf.preprocess.channels,
        "input": "uint8 N,C,H,W in 0-255 (normalization is inside)",
        "tta": "flip" if clf.tta else "none",  # the mirror is inside too
        "source": clf.source,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_temporaries(out)  # a killed export's
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{out.suffix}")
    try:
        (_onnx if fmt == "onnx" else _torchscript)(wrapped, images[:2], tmp, meta)
        with torch.inference_mode():
            expected = wrapped(images)
        got = _run_export(fmt, tmp, images)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            leftover.unlink(missing_ok=True)
    agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    return ExportCheck(out, len(images), (got - expected).abs().max().item(), agree)


def _need(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise LoadError(f"--format onnx needs {', '.join(missing)}: pip install 'regx[export]'")


def _validation_images(run_dir, clf: Predictor, n: int = 64) -> torch.Tensor:
    """Up to n of the run's own validation images, as the run saw them (uint8, fitted)."""
    from omegaconf import OmegaConf

    from regx.checkpoint import read
    from regx.config import TrainConfig
    from regx.data import load_config

    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), read(Path(clf.source)).config)
    val = load_config(cfg.data).val
    if val.x is not None:
        return torch.stack([clf.preprocess.uint8(x) for x in val.x[:n]])
    return torch.stack([clf.preprocess.uint8(p) for p in val.paths[:n]])


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    import warnings

    with warnings.catch_warnings():  # torch marks TorchScript deprecated; torch.jit.load still reads it
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)  # the parity check below is the check
        torch.jit.save(traced, str(path), _extra_files={"regx.json": json.dumps(meta)})


def _onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    import warnings

    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=65536)}},
            verbose=False,
        )
    proto = onnx.load(str(path))  # with the weights the exporter put beside it
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save_model(proto, str(path), save_as_external_data=False)  # one self-contained file
    for extra in path.parent.glob(f"{path.name}.data"):
        extra.unlink()


def _run_export(fmt: str, path: Path, images: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    import warnings

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))(images)

"""Run-directory I/O: every file is written to a temporary name and renamed, so a killed run never
leaves a half-written checkpoint, summary or metrics file.

    <run>/config.yaml          the resolved config
    <run>/.hydra/              Hydra's record of the composition and overrides
    <run>/metrics.csv          one row per finished epoch
    <run>/summary.json         status and headline numbers (updated every epoch)
    <run>/checkpoints/last.pt  plain dicts that load with torch.load(..., weights_only=True)
    <run>/checkpoints/best.pt
    <run>/train.log
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "gap", "lr", "epoch_s", "img_per_s",
                  "clean_train_loss", "clean_train_acc"]
TIMING_COLUMNS = ("epoch_s", "img_per_s")


def _write_atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path | str) -> None:
    """torch.save through a temporary file and a rename."""
    _write_atomic(Path(path), lambda f: torch.save(obj, f))


def write_text(path: Path | str, text: str) -> None:
    _write_atomic(Path(path), lambda f: f.write(text.encode()))


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def write_json(path: Path | str, data: dict) -> None:
    write_text(path, json.dumps({k: _clean(v) for k, v in data.items()}, indent=2) + "\n")


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def write_metrics(path: Path | str, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def read_metrics(path: Path | str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_checkpoint(state: dict, ckpt_dir: Path, *, best: bool) -> None:
    """Write last.pt atomically; when best, make best.pt the same file (a hard link, else a copy)."""
    last = ckpt_dir / "last.pt"
    atomic_save(state, last)
    if best:
        tmp = ckpt_dir / f".best.pt.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
        except OSError:
            shutil.copyfile(last, tmp)
        os.replace(tmp, ckpt_dir / "best.pt")


def load_checkpoint(path: Path | str, map_location="cpu") -> dict:
    """Load a checkpoint without running any code from it (weights_only=True)."""
    return torch.load(path, map_location=map_location, weights_only=True)

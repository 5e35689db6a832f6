"""Checkpoints: the one writer and the one reader of a run's checkpoint files.

    <run>/checkpoints/last.pt    the newest: plain dicts and tensors that load with weights_only=True
    <run>/checkpoints/prev.pt    the one before last.pt: the fallback when last.pt is damaged
    <run>/checkpoints/best.pt    the best epoch (a hard link to what was last.pt then)
    <run>/checkpoints/*.pt.json  each checkpoint's manifest: size and sha256 (and the file it replaced)

What a checkpoint holds is `Checkpoint`; FORMAT_VERSION counts the changes to it, and `migrate` brings
a file of any earlier format up to date as it is read (regx 0.1's files, which had no version, are
format 0). Every other module reads and writes checkpoints through `save` and `read`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regx.__about__ import __version__
from regx.files import read_json, write_atomic, write_json


class CorruptCheckpoint(RuntimeError):
    """A checkpoint that does not match its manifest or does not load; the message names the file."""


FORMAT_VERSION = 1  # 0: regx 0.1, no version; 1: `format` written, every entry present


@dataclass
class Checkpoint:
    """What a checkpoint file holds: one entry per field, by name, as plain dicts, lists and tensors."""

    model: dict[str, torch.Tensor]  # the trained weights (state_dict)
    config: dict[str, Any]  # the run's config, resolved
    state: dict[str, Any]  # train.RunState: epoch, step, best, history, a mid-epoch tally
    classes: list[str]
    norm: dict[str, list[float]]  # {"mean": [...], "std": [...]}: the input normalization, per channel
    in_channels: int
    image_size: int
    optimizer: dict | None = None
    rng: dict | None = None  # {"torch", "aug"[, "cuda"]}: the generators' states (rank 0's under torchrun)
    rng_ranks: list[dict] | None = None  # under torchrun: every rank's
    scaler: dict | None = None  # precision=16's GradScaler
    plateau: dict | None = None  # sched=plateau's counters
    average: dict | None = None  # the average group's copy: {"model": weights, "updates": n}
    regx_version: str = __version__
    format: int = FORMAT_VERSION

    @property
    def epoch(self) -> int:
        return self.state["epoch"]

    @property
    def step(self) -> int:
        return self.state["step"]

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights the checkpoint stands for: the averaged ones when the run averaged and selected
        them (average.select=averaged), else the trained ones."""
        a = self.average
        return a["model"] if a and a["updates"] and self.config["average"]["select"] == "averaged" else self.model

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no copies (asdict copies)


FIELDS = tuple(f.name for f in dataclasses.fields(Checkpoint))


def migrate(raw: dict[str, Any], path: Path | str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's entries as the current format has them, from any earlier format; CorruptCheckpoint
    for a format newer than this regx reads or an entry no format has."""
    version = raw.get("format", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CorruptCheckpoint(
            f"{path} has checkpoint format {version}, newer than this regx reads ({FORMAT_VERSION}): upgrade regx"
        )
    if version < 1:  # regx 0.1: entries added over its life may be absent
        config = raw.get("config", {})
        raw.setdefault("in_channels", len(raw["norm"]["mean"]))
        raw.setdefault("image_size", config.get("data", {}).get("image_size"))
        config.setdefault("average", {}).setdefault("select", "averaged")  # before the average group: none
        tally = raw["state"].get("tally")
        if tally is not None:  # before clip_grad, a mid-epoch tally had no count of clipped steps
            tally.setdefault("clipped", torch.zeros((), dtype=torch.long))
        raw["format"] = 1
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise CorruptCheckpoint(
            f"{path} is not a regx checkpoint of format {raw['format']} (unknown entry {unknown[0]})"
        )
    return raw


def save(ckpt: Checkpoint, ckpt_dir: Path, *, best: bool, before_rename=None) -> None:
    """Write last.pt atomically with its manifest (last.pt.json: size and sha256), keeping the one
    before it as prev.pt; when best, make best.pt the same file (a hard link, else a copy).

    Each file is published by a rename, after its manifest, which also lists the file it replaces:
    a kill or a full disk at any point leaves every checkpoint matching its manifest (the new entry
    or the one before), and `newest_intact` finds the newest.
    """
    buf = io.BytesIO()
    torch.save(ckpt.to_dict(), buf)
    payload = buf.getbuffer()
    entry = {
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "epoch": ckpt.epoch,
        "step": ckpt.step,
    }
    last = ckpt_dir / "last.pt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if last.is_file():
        old = _entries(last)
        if old:  # what last.pt holds, and what it may hold if its last publication was cut short
            _write_manifest(ckpt_dir / "prev.pt", old[0], also=old[1:])
        _link(last, ckpt_dir / "prev.pt")

    def publish(tmp):
        _write_manifest(last, entry)
        if before_rename is not None:
            before_rename(tmp)

    write_atomic(last, lambda f: f.write(payload), before_rename=publish)
    if best:
        _write_manifest(ckpt_dir / "best.pt", entry)
        _link(last, ckpt_dir / "best.pt")


def _copied(value: Any) -> Any:
    """`value` with every container and tensor copied: tensors on the CPU cloned, CUDA ones copied to
    pinned host memory without waiting for the device (Writer waits before it writes)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        return t.to("cpu", non_blocking=True) if t.is_cuda else t.clone()
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_copied(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # a namedtuple too
    return value


class Writer:
    """Writes checkpoints in a background thread (checkpoint.background), so that training goes on while
    a file is serialized, hashed, synced and published (`save`'s guarantees hold; a kill mid-write
    leaves the one before); with background=False, as `save` does.

    `save` copies the checkpoint (the weights change with the next step; on CUDA the copy to host
    memory is queued, not waited for) and returns; the write starts once the copy is done. One write
    at a time: the next `save`, and `wait`, first finish the one before and raise its error. `wait`
    before reading a checkpoint back, and before the process ends. A `before_rename` callback runs in
    the writer's thread."""

    def __init__(self, background: bool = True):
        import threading

        self.background, self._threading, self._thread, self._error = background, threading, None, None

    def save(self, ckpt: Checkpoint, ckpt_dir: Path, *, best: bool, before_rename=None) -> None:
        self.wait()
        if not self.background:  # written here and now, as `save` does
            save(ckpt, ckpt_dir, best=best, before_rename=before_rename)
            return
        copy = Checkpoint(**_copied(ckpt.to_dict()))
        ready = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            ready = torch.cuda.Event()
            ready.record()

        def write():
            try:
                if ready is not None:
                    ready.synchronize()  # the copies to host memory queued above
                save(copy, ckpt_dir, best=best, before_rename=before_rename)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = exc

        self._thread = self._threading.Thread(target=write, name="regx-checkpoint")
        self._thread.start()

    def wait(self, log=None) -> None:
        """Until the write in flight (if any) is done; raise its error, or with `log` (the run is already
        ending on an error of its own) warn of it there."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and log is None:
            raise error
        if error is not None:
            log.warning("the last checkpoint was not written: %s", error)


def read(path: Path | str, map_location="cpu") -> Checkpoint:
    """A regx checkpoint, verified against its manifest and brought to the current format; any failure
    is a CorruptCheckpoint naming the file."""
    raw = read_any(path, map_location)
    if not isinstance(raw, Checkpoint):
        raise CorruptCheckpoint(f"{path} is not a regx checkpoint (no 'model' and 'config' entries)")
    return raw


def read_any(path: Path | str, map_location="cpu") -> Checkpoint | Any:
    """A checkpoint file of regx's (a Checkpoint) or of anyone's (what it holds: a state dict, say),
    verified and loaded without running code from it (weights_only=True)."""
    path = Path(path)
    verify(path)
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CorruptCheckpoint(f"{path} does not load ({_load_error(exc)})") from None
    if not (isinstance(raw, dict) and "model" in raw and "config" in raw):
        return raw
    try:
        return Checkpoint(**migrate(raw, path))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CorruptCheckpoint(
            f"{path} is not a regx checkpoint its format describes ({type(exc).__name__}: {exc})"
        ) from None


def _load_error(exc: Exception) -> str:
    """torch.load's failure in a few words, never its advice to load with weights_only=False (which
    would run whatever code the file holds)."""
    text = " ".join(str(exc).split())
    named = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text, re.I)
    if named:
        return (
            f"it holds {(named[1] or named[2]).rstrip('.,')}, which is not a tensor or a plain value: regx never "
            "unpickles code"
        )
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].strip()
        return f"not a torch checkpoint ({detail})" if "WeightsUnpickler error:" in text else "not a torch checkpoint"
    return text[:200] or type(exc).__name__


def newest_intact(ckpt_dir: Path, map_location="cpu") -> tuple[Path, Checkpoint, list[str]]:
    """The newest checkpoint of a run that is intact (last.pt, else prev.pt, else best.pt, by step):
    (path, checkpoint, what was wrong with each newer one). CorruptCheckpoint if none is intact."""
    problems, found = [], []
    for name in ("last.pt", "prev.pt", "best.pt"):
        path = Path(ckpt_dir) / name
        if not path.is_file():
            continue
        try:
            found.append((path, read(path, map_location)))
        except CorruptCheckpoint as exc:
            problems.append(str(exc))
        if found and found[0][0].name == "last.pt":  # an intact last.pt is the newest by construction
            break
    if not found:
        if not problems:
            raise CorruptCheckpoint(f"no checkpoint in {ckpt_dir}")
        raise CorruptCheckpoint("; ".join(problems) + ": no intact checkpoint remains")
    path, ckpt = max(found, key=lambda pc: pc[1].step)
    return path, ckpt, problems


def _manifest_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".json")


def manifest_epoch(path: Path) -> int | None:
    """The epoch a checkpoint's manifest says it holds (None: no manifest, or no file)."""
    entries = _entries(Path(path)) if Path(path).is_file() else []
    return entries[0].get("epoch") if entries else None


def publish_best(ckpt_dir: Path, source: Path) -> None:
    """Make best.pt the checkpoint `source` (intact, its manifest read), as save() does after a new best:
    for a run stopped between publishing last.pt and best.pt."""
    entry = _entries(Path(source))[0]
    _write_manifest(ckpt_dir / "best.pt", entry)
    _link(Path(source), ckpt_dir / "best.pt")


def _entries(ckpt: Path) -> list[dict]:
    """What a checkpoint's manifest says it may hold: the newest entry first, then the one (or two) it
    replaced, in case the file was not published after its manifest was."""
    try:
        m = read_json(_manifest_path(ckpt))
    except (OSError, ValueError):
        return []
    if not isinstance(m, dict) or "sha256" not in m:
        return []
    return [{k: m.get(k) for k in ("size", "sha256", "epoch", "step")}, *m.get("before", [])]


def _write_manifest(ckpt: Path, entry: dict, also: list[dict] = ()) -> None:
    """Before `ckpt` is replaced by the file `entry` describes: its manifest, keeping the entries of
    the file it replaces (`also`: other contents the new file may have)."""
    write_json(_manifest_path(ckpt), {"file": ckpt.name, **entry, "before": [*also, *_entries(ckpt)][:3]})


def _link(src: Path, dst: Path) -> None:
    """Make dst the same file as src, atomically (a hard link where the filesystem has them)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def verify(path: Path) -> None:
    """Raise CorruptCheckpoint unless `path` matches its manifest (size, sha256). A checkpoint
    without a manifest (older regx, or a file from elsewhere) is checked by its zip archive's CRCs
    (torch.save writes a zip), then by loading it."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpoint(f"{path} does not exist")
    manifest_file = _manifest_path(path)
    if not manifest_file.is_file():
        _check_zip(path)
        return
    try:
        manifest = read_json(manifest_file)
    except ValueError as exc:
        raise CorruptCheckpoint(f"{manifest_file} is unreadable ({exc})") from exc
    size = path.stat().st_size
    allowed = [e for e in _entries(path) if e.get("size") == size]
    if not allowed:
        raise CorruptCheckpoint(f"{path} is corrupt: {size} bytes, its manifest says {manifest.get('size')}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if all(digest.hexdigest() != e.get("sha256") for e in allowed):
        raise CorruptCheckpoint(f"{path} is corrupt: its sha256 does not match its manifest")


def _check_zip(path: Path) -> None:
    """A zip archive's members against their CRCs (a bit flipped anywhere in the data is found)."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format, or not a checkpoint: loading it will tell
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptCheckpoint(f"{path} is corrupt ({exc})") from None
    if bad is not None:
        raise CorruptCheckpoint(f"{path} is corrupt: {bad} inside it fails its CRC check")

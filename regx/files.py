"""Files of a run directory, and nothing of regx: every file is written to a temporary name and renamed,
so a killed run never leaves a half-written file; readers that turn a damaged file into one line.

    <run>/config.yaml          the resolved config (read_config: never resolved again)
    <run>/.hydra/              Hydra's record of the composition and overrides (read_overrides)
    <run>/metrics.csv          one row per finished epoch (METRIC_COLUMNS)
    <run>/summary.json         status and headline numbers (updated every epoch)
    <run>/checkpoints/         regx.checkpoint's
    <run>/train.log
    <run>/.lock                its owner while it trains (owner); .reserve: room for its last words

This is the bottom layer of regx (docs/architecture.md): it imports nothing of regx, and torch only
inside atomic_save.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@dataclass
class EpochMetrics:
    """One row of metrics.csv, what an epoch did; its fields are the file's columns, in order. An empty
    cell is a measurement the run did not make (no clean subset, no clipping, no averaging)."""

    epoch: int
    train_loss: float  # the epoch's mean training loss, as trained (augmented, mixed, dropout on)
    train_acc: float  # its accuracy on those augmented batches
    val_loss: float
    val_acc: float
    gap: float  # clean_train_acc (else train_acc) - val_acc: the overfitting gap
    lr: float  # the learning rate at the epoch's last step
    epoch_s: float  # seconds the epoch took, evaluation included
    wall_s: float  # seconds the run had trained by the epoch's end (a resume adds on)
    img_per_s: float  # training images per second
    clean_train_loss: float | None  # a fixed training subset in eval mode, without augmentation
    clean_train_acc: float | None
    trainable: str  # what trained: all, or the finetune group's stage
    trainable_params: int
    clipped: float | None  # the fraction of steps clip_grad clipped
    avg_val_loss: float | None  # the average group's weights on the validation split
    avg_val_acc: float | None
    # with average.select=averaged, the averaged weights on the clean training subset (what their gap uses)
    avg_clean_train_loss: float | None = None
    avg_clean_train_acc: float | None = None
    val_ece: float | None = None  # calibration on the validation split (engine.Evaluation): expected error,
    val_mce: float | None = None  # maximum error over the 15 confidence bins,
    val_brier: float | None = None  # and the Brier score
    # with data.label_noise, the flipped training images' accuracy against the wrong labels they were given
    # (how much of the noise the network has memorized) and against their true labels
    noisy_given_acc: float | None = None
    noisy_true_acc: float | None = None


METRIC_COLUMNS = tuple(f.name for f in dataclasses.fields(EpochMetrics))
TIMING_COLUMNS = ("epoch_s", "wall_s", "img_per_s")  # what differs between two equal runs


class WriteFailed(OSError):
    """A file regx could not write (a full disk, a read-only folder); the message names it."""

    def __str__(self) -> str:
        return self.strerror


def out_of_files(exc: BaseException) -> str | None:
    """The one line for an OSError that means this process holds as many files as it may (EMFILE: a
    low `ulimit -n`, often met when DataLoader workers start their pipes), else None."""
    if not (isinstance(exc, OSError) and exc.errno == errno.EMFILE):
        return None
    try:
        import resource

        limit = f"this process may hold {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} open files (ulimit -n)"
    except (ImportError, OSError, ValueError):
        limit = "this process reached its limit of open files"
    return f"too many open files: {limit}; raise it (ulimit -n 4096) or start fewer decoding workers (data.workers=0)"


def let_go(exc: BaseException) -> None:
    """Free what the frames of a failed call still hold (a half-started DataLoader's pipes), so the
    run can still write its status. A half-built torch iterator complains as it goes (torch's
    `__del__` assumes a finished `__init__`): that is not the run's error, and is not shown."""
    import gc
    import sys
    import traceback

    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        for each in (exc, exc.__context__, exc.__cause__):
            if each is not None:
                traceback.clear_frames(each.__traceback__)
        gc.collect()
    finally:
        sys.unraisablehook = hook
    import multiprocessing

    for child in multiprocessing.active_children():  # a worker the half-built iterator started and never
        child.kill()  # stops: it ignores SIGTERM, so Python's exit would wait on it forever
        child.join(5)


_unpublished: list[tuple[Path, Path]] | None = None  # published_together's written files, not yet renamed


@contextmanager
def published_together():
    """Files that belong together (a table's .csv, .md and .png): every write_atomic inside the block
    writes its temporary file, and all of them are renamed into place only when the block ends without
    an error. A stop or a failure halfway publishes none of them: the set on disk stays the old one."""
    global _unpublished
    if _unpublished is not None:  # nested: the outer block publishes
        yield
        return
    _unpublished = []
    try:
        yield
        for tmp, path in _unpublished:
            os.replace(tmp, path)
    finally:
        for tmp, _ in _unpublished:
            tmp.unlink(missing_ok=True)
        _unpublished = None


def write_atomic(path: Path, write, *, before_rename=None) -> None:
    """Write through `.NAME.tmp-PID` and a rename; on any error (a full disk included) the old file
    stays as it was, the temporary file is removed, and the OSError names the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    clear_dead_temporaries(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        if _unpublished is not None:  # inside published_together(): renamed with the others at its end
            _unpublished.append((tmp, path))
            return
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed):
            raise WriteFailed(exc.errno, f"could not write {path}: {exc.strerror or exc}", str(path)) from None
        raise


def clear_dead_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of `path` (`.NAME.tmp-PID...`) that a killed writer left, the ones whose
    process is gone; a live writer's stay."""
    gone = []
    for tmp in Path(path).parent.glob(f".{Path(path).name}.tmp-*"):
        digits = re.match(r"\d+", tmp.name.rsplit(".tmp-", 1)[1])
        if digits and not pid_alive(int(digits.group())):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def slug(text: str, limit: int = 120) -> str:
    """`text` as a file-name part: runs of other characters become one underscore."""
    text = re.sub(r"[^\w=,.+-]+", "_", str(text)).strip("_")  # letters of any script are kept
    return text[:limit] or "run"


def claim_dir(root: str, name: str) -> str:
    """Create `root/<stamp>_<name>` atomically and return it; a suffix keeps two runs started in the
    same second apart."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(root) / f"{stamp}_{slug(name)}" if name else Path(root) / stamp
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
            return str(path)
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique directory under {root}")


class RunBusy(RuntimeError):
    """Another live process owns the run or sweep directory; the message names it."""


_held: dict[Path, int] = {}  # directories this process owns: their lock files' descriptors


@contextmanager
def owner(directory: Path | str, *, enabled: bool = True):
    """Own `directory` for the block: an advisory POSIX lock on `directory/.lock`, which holds this
    process's pid and host. The kernel drops the lock when the process ends however it ends (kill -9
    included), and forked children (DataLoader workers) do not inherit it. A second owner, in another
    process or this one, gets RunBusy naming the first. Where fcntl does not exist, nothing is locked."""
    path = Path(directory).resolve()
    if not enabled or fcntl is None:
        yield
        return
    if path in _held:
        raise RunBusy(f"{directory} is in use by this process already")
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        try:
            who = json.loads(holder)
            named, stop = f"pid {who['pid']} on {who['host']} (since {who['since']})", f"kill -TERM {who['pid']}"
        except (ValueError, KeyError, TypeError):
            named, stop = f"another process ({exc.strerror})", "stop it"
        raise RunBusy(f"{directory} is in use by {named}: wait for it to finish, or {stop} first") from None
    import platform

    os.ftruncate(fd, 0)
    os.pwrite(
        fd,
        json.dumps(
            {"pid": os.getpid(), "host": platform.node(), "since": datetime.now().isoformat(timespec="seconds")}
        ).encode(),
        0,
    )
    _held[path] = fd
    try:
        yield
    finally:
        del _held[path]
        os.close(fd)  # releases the lock; the file stays (removing it would race with a new owner)


def clean_temporary(run_dir: Path) -> list[Path]:
    """Remove temporary files a killed run left behind (its writes never got renamed into place)."""
    gone = []
    for pattern in (".*.tmp-*", "checkpoints/.*.tmp-*"):
        for tmp in Path(run_dir).glob(pattern):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def atomic_save(obj: Any, path: Path | str) -> None:
    """torch.save through a temporary file and a rename."""
    import torch

    write_atomic(Path(path), lambda f: torch.save(obj, f))


def write_text(path: Path | str, text: str) -> None:
    write_atomic(Path(path), lambda f: f.write(text.encode()))


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def write_json(path: Path | str, data: dict) -> None:
    write_text(path, json.dumps({k: _clean(v) for k, v in data.items()}, indent=2) + "\n")


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


class DamagedFile(ValueError):
    """A run's file that does not parse; the message names it and says what is wrong in one line."""


class Interpolated(DamagedFile):
    """A stored config that holds an interpolation: regx never resolves what a run directory says."""


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def read_summary(run_dir: Path | str) -> dict:
    """A run's summary.json; {} when it is missing, and DamagedFile when it does not parse."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = read_json(path)
    except (OSError, ValueError) as exc:
        raise DamagedFile(f"{path} is damaged ({_first_line(exc)})") from None
    if not isinstance(summary, dict):
        raise DamagedFile(f"{path} is damaged (not a JSON object)")
    return summary


def read_config(run_dir: Path | str):
    """A run's config.yaml as an OmegaConf node; DamagedFile when it does not parse."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(run_dir) / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml's scanner and parser errors, OmegaConf's, a directory in its place
        raise DamagedFile(f"{path} is damaged ({_first_line(exc)})") from None
    if not isinstance(cfg, DictConfig):
        raise DamagedFile(f"{path} is damaged (not a mapping of keys)")
    key = _interpolated(OmegaConf.to_container(cfg, resolve=False))
    if key is not None:  # regx writes it resolved: an interpolation was put there by hand (or by someone else)
        raise Interpolated(
            f"{path}: {key} holds an interpolation; regx reads a stored config as it is, never "
            "resolving it: write the value itself"
        )
    return cfg


def _interpolated(node, prefix: str = "") -> str | None:
    """The first key (dotted) of a plain container whose value holds `${`, else None."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, str) and "${" in v:
            return key
        found = _interpolated(v, key)
        if found is not None:
            return found
    return None


def read_overrides(run_dir: Path | str) -> list[str]:
    """The command-line overrides a run was started with (Hydra's .hydra/overrides.yaml), as plain
    strings, never resolved; [] when there is no record, DamagedFile when it does not parse."""
    import yaml

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        overrides = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DamagedFile(f"{path} is damaged ({_first_line(exc)})") from None
    if not isinstance(overrides, list):
        raise DamagedFile(f"{path} is damaged (not a list of overrides)")
    return [str(o) for o in overrides]


def write_metrics(path: Path | str, rows: list[dict]) -> None:
    """metrics.csv from EpochMetrics rows (as dicts); a key that is not a column is a ValueError, never
    dropped. Rows of an older regx may lack the newer columns: their cells stay empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def read_metrics(path: Path | str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of a sweep directory (each has Hydra's .hydra/ record)."""
    root = Path(sweep_dir)
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / ".hydra").is_dir()) if root.is_dir() else []

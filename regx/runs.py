"""Run-directory I/O: every file is written to a temporary name and renamed, so a killed run never
leaves a half-written checkpoint, summary or metrics file.

    <run>/config.yaml          the resolved config
    <run>/.hydra/              Hydra's record of the composition and overrides
    <run>/metrics.csv          one row per finished epoch
    <run>/summary.json         status and headline numbers (updated every epoch)
    <run>/checkpoints/last.pt  plain dicts that load with torch.load(..., weights_only=True)
    <run>/checkpoints/prev.pt  the checkpoint before last.pt: the fallback when last.pt is damaged
    <run>/checkpoints/best.pt  the best epoch (a hard link to what was last.pt then)
    <run>/checkpoints/*.pt.json  each checkpoint's manifest: size and sha256 (and the file it replaced)
    <run>/train.log
    <run>/.lock                its owner while it trains (runs.owner); .reserve: room for its last words

torch is imported only where a checkpoint is read or written: `regx train --help` stays fast.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "gap", "lr", "epoch_s", "wall_s",
                  "img_per_s", "clean_train_loss", "clean_train_acc", "trainable", "trainable_params", "clipped",
                  "avg_val_loss", "avg_val_acc"]
TIMING_COLUMNS = ("epoch_s", "wall_s", "img_per_s")


class WriteFailed(OSError):
    """A file regx could not write (a full disk, a read-only folder); the message names it."""

    def __str__(self) -> str:
        return self.strerror


def write_atomic(path: Path, write, *, before_rename=None) -> None:
    """Write through `.NAME.tmp-PID` and a rename; on any error (a full disk included) the old file
    stays as it was, the temporary file is removed, and the OSError names the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed):
            raise WriteFailed(exc.errno, f"could not write {path}: {exc.strerror or exc}", str(path)) from None
        raise


def slug(text: str, limit: int = 120) -> str:
    """`text` as a file-name part: runs of other characters become one underscore."""
    text = re.sub(r"[^A-Za-z0-9=,.+_-]+", "_", str(text)).strip("_")
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
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": platform.node(),
                              "since": datetime.now().isoformat(timespec="seconds")}).encode(), 0)
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
        raise Interpolated(f"{path}: {key} holds an interpolation; regx reads a stored config as it is, never "
                          "resolving it: write the value itself")
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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def read_metrics(path: Path | str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _manifest_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".json")


def save_checkpoint(state: dict, ckpt_dir: Path, *, best: bool, before_rename=None) -> None:
    """Write last.pt atomically with its manifest (last.pt.json: size and sha256), keeping the one
    before it as prev.pt; when best, make best.pt the same file (a hard link, else a copy).

    Each file is published by a rename, after its manifest, which also lists the file it replaces:
    a kill or a full disk at any point leaves every checkpoint matching its manifest (the new entry
    or the one before), and `newest_intact` finds the newest.
    """
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    entry = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
             "epoch": state.get("state", {}).get("epoch"), "step": state.get("state", {}).get("step")}
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


class CorruptCheckpoint(RuntimeError):
    """A checkpoint that does not match its manifest or does not load."""


def verify_checkpoint(path: Path) -> None:
    """Raise CorruptCheckpoint unless `path` matches its manifest (size, sha256). A checkpoint
    without a manifest (older regx, or a file from elsewhere) is checked by loading it."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpoint(f"{path} does not exist")
    manifest_file = _manifest_path(path)
    if not manifest_file.is_file():
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


def load_verified(path: Path, map_location="cpu") -> dict:
    """verify_checkpoint, then load_checkpoint; any failure is a CorruptCheckpoint naming the file."""
    verify_checkpoint(path)
    try:
        ckpt = load_checkpoint(path, map_location=map_location)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpoint(f"{path} does not load ({first[:200]})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CorruptCheckpoint(f"{path} is not a regx checkpoint (no 'model' entry)")
    return ckpt


def newest_intact(ckpt_dir: Path, map_location="cpu") -> tuple[Path, dict, list[str]]:
    """The newest checkpoint of a run that is intact (last.pt, else prev.pt, else best.pt, by step):
    (path, checkpoint, what was wrong with each newer one). CorruptCheckpoint if none is intact."""
    problems, found = [], []
    for name in ("last.pt", "prev.pt", "best.pt"):
        path = Path(ckpt_dir) / name
        if not path.is_file():
            continue
        try:
            found.append((path, load_verified(path, map_location)))
        except CorruptCheckpoint as exc:
            problems.append(str(exc))
        if found and found[0][0].name == "last.pt":  # an intact last.pt is the newest by construction
            break
    if not found:
        if not problems:
            raise CorruptCheckpoint(f"no checkpoint in {ckpt_dir}")
        raise CorruptCheckpoint("; ".join(problems) + ": no intact checkpoint remains")
    path, ckpt = max(found, key=lambda pc: pc[1]["state"]["step"])
    return path, ckpt, problems


def load_checkpoint(path: Path | str, map_location="cpu") -> dict:
    """Load a checkpoint without running any code from it (weights_only=True)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


# ---------------------------------------------------------------------------------------------
# Resuming a run


# Top-level keys that decide what a run is: resuming with one of them changed would not continue it.
RESUME_FIXED = ("data", "model", "seed", "batch_size", "optim", "decay", "dropout", "aug")


class NothingToDo(Exception):
    """The run has finished what its config asks for; the message says how to ask for more."""


def resume_config(run_dir: Path, overrides: list[str], *, force: bool = False):
    """The saved config with `overrides` applied, checked; ConfigError (one line) for bad input,
    NothingToDo when the run already did what the config asks."""
    from omegaconf import OmegaConf

    from regx import config
    from regx.errors import explain

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise config.ConfigError(f"no such run directory: {run_dir}")
    if (run_dir / "multirun.yaml").is_file():
        raise config.ConfigError(f"{run_dir} is a sweep directory: finish it with regx sweep-resume {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise config.ConfigError(f"{run_dir} is not a regx run directory (no config.yaml)")
    if not any((run_dir / "checkpoints" / f).is_file() for f in ("last.pt", "prev.pt", "best.pt")):
        raise config.ConfigError(f"{run_dir} has no checkpoint (it stopped before its first one): start it again with regx train")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise config.ConfigError(f"cannot parse override '{bad[0]}': expected key=value")
    try:
        saved = read_config(run_dir)
    except Interpolated as exc:
        raise config.ConfigError(str(exc)) from None
    except DamagedFile as exc:
        raise config.ConfigError(f"{exc}; the checkpoints still hold the run: repair the file or copy it from "
                                 ".hydra/config.yaml") from None
    if isinstance(saved.get("logger"), str):  # before the logger group (regx 0.1 runs): logger: none|tensorboard
        saved.logger = {"tensorboard": saved.logger == "tensorboard"}
    try:
        base = OmegaConf.merge(OmegaConf.structured(config.TrainConfig), saved)
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise config.ConfigError(explain(exc, overrides)) from exc
    config.validate(cfg)
    changed = [k for k in config.flat_keys(cfg) if OmegaConf.select(cfg, k) != OmegaConf.select(base, k)
               and not OmegaConf.is_dict(OmegaConf.select(cfg, k))]
    fixed = [k for k in changed if k.split(".")[0] in RESUME_FIXED]
    if fixed and not force:
        raise config.ConfigError(f"resuming with changed {', '.join(fixed)} would not continue the same run; "
                                 "pass --force to do it anyway")
    try:
        summary = read_summary(run_dir)
    except DamagedFile:
        summary = {}  # train() rebuilds it from the newest checkpoint
    done = _epochs_done(run_dir, summary)
    if cfg.epochs < done:
        raise config.ConfigError(f"epochs={cfg.epochs} is below the {done} epochs {run_dir} has trained already; "
                                 f"a resume only trains further (epochs > {done})")
    if summary.get("status") == "completed" and summary.get("epochs_done", 0) >= cfg.epochs:
        raise NothingToDo(f"{run_dir} already completed {summary['epochs_done']} epochs; nothing to do "
                          f"(pass epochs=N with N > {summary['epochs_done']} to train further)")
    stopped = summary.get("stopped_early")
    if summary.get("status") == "completed" and stopped and cfg.early_stop.patience == base.early_stop.patience:
        raise NothingToDo(f"{run_dir} stopped early after epoch {stopped['epoch']} ({stopped['reason']}); nothing to do "
                          "(pass early_stop.patience=0, or a larger patience, to train on)")
    return cfg


def _epochs_done(run_dir: Path, summary: dict) -> int:
    """The epochs a run has finished: its summary's count or its newest checkpoint's (from the
    manifests, without loading a checkpoint), whichever is larger."""
    done = [summary.get("epochs_done") or 0]
    for manifest in (run_dir / "checkpoints").glob("*.pt.json"):
        try:
            done.append(int(read_json(manifest).get("epoch") or 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return max(done)


def resume(run_dir: Path | str, overrides: list[str] = (), *, force: bool = False, hooks=()) -> dict:
    """Continue a run from its newest intact checkpoint (mid-epoch if it was killed mid-epoch), with
    `overrides` applied (epochs=N to train further); return its summary. Under torchrun every rank
    calls it and resumes from the same checkpoint."""
    from regx import train

    cfg = resume_config(Path(run_dir), list(overrides), force=force)
    return train.train(cfg, Path(run_dir), resume=True, hooks=hooks)

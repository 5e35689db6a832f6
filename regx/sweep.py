"""Sweeps: the job function Hydra's launchers call, machine sharing between parallel jobs, failures
read back from the jobs' summaries, and `regx sweep-resume`.

A sweep directory holds multirun.yaml and one directory per job, named from the job's overrides, so
running the same command into the same directory again finds each job's own directory.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import signal
import sys
from pathlib import Path

from omegaconf import OmegaConf

from regx.files import job_dirs, slug
from regx.signals import StopSignals
from regx.study import ARMS_DIR, Untrusted, as_plain_run, check_dir


class Jobs:
    """One `regx train` invocation's jobs (one for a single run). `task` is what hydra.main wraps;
    with `resume`, completed jobs are skipped and stopped ones resumed."""

    def __init__(self, *, resume: bool = False, record_hydra: bool = False):
        self.resume = resume
        self.record_hydra = record_hydra  # write .hydra/ here (cli sets hydra.output_subdir=null)
        self.count = 0
        self.failed: list[tuple[str, str]] = []  # (run directory, error)
        self.jobs: list[Path] = []
        self.stopped: int | None = None  # the signal that stopped a job of this process
        self.late: LateStop | None = None  # a single run's signals outside its training (cli)
        self.completed = 0

    def task(self, cfg):
        from hydra.core.hydra_config import HydraConfig

        from regx import train
        from regx.files import DamagedFile, RunBusy, read_summary

        self.count += 1
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        multirun = str(hc.mode) == "RunMode.MULTIRUN"
        record = functools.partial(write_hydra_record, run_dir, copy.deepcopy(cfg)) if self.record_hydra else None
        if multirun and (self.stopped or (run_dir.parent / STOPPING).exists()):
            if record is not None:
                record()  # a job of the sweep all the same: its overrides are there to resume it by
            print(f"regx: {run_dir.name}: not started (the sweep is stopping)")
            return None
        if not multirun and self.late is not None and self.late():
            print(f"regx: {signal.Signals(self.late.signum).name} before the run started: not started")
            return None
        share_machine(cfg, hc)
        absolute_paths(cfg)
        if cfg.ablate.vary_split:  # regx ablate --vary-split: each seed draws its own subset and split
            from omegaconf import open_dict

            with open_dict(cfg):
                cfg.data.seed = cfg.seed
        resume = False
        if self.resume:
            try:
                summary = read_summary(run_dir)
            except DamagedFile:
                summary = {}  # train() rebuilds it from the checkpoint
            if summary.get("status") == "completed" and summary.get("epochs_done", 0) >= cfg.epochs:
                print(f"regx: {run_dir.name}: completed already, skipped")
                return summary
            resume = any((run_dir / "checkpoints" / f).is_file() for f in ("last.pt", "prev.pt", "best.pt"))
            if not resume:  # it died before its first checkpoint: nothing in it to keep
                (run_dir / "summary.json").unlink(missing_ok=True)
            print(
                f"regx: {run_dir.name}: " + (f"resuming ({summary.get('status', 'unknown')})" if resume else "starting")
            )
        optuna = "optuna" in str(hc.sweeper.get("_target_", "")).lower()
        try:
            summary = train.train(
                cfg, run_dir, resume=resume, overrides=as_plain_run(list(hc.overrides.task), run_dir), owned=record
            )
        except (train.RunFailed, RunBusy) as exc:  # recorded in the run's summary.json; the sweep goes on
            self.failed.append((str(run_dir), str(exc)))
            return float("nan") if optuna else None  # a NaN objective marks the trial failed
        except train.Interrupted as exc:  # checkpointed; in a sweep no further job starts
            if not multirun:
                raise
            self.stopped = exc.code - 128  # the signal's number
            (run_dir.parent / STOPPING).touch()
            return float("nan") if optuna else None
        self.completed += summary.get("status") == "completed"
        return summary["best_val_acc"] if optuna else summary  # an optimizing sweeper needs the objective

    def collect(self, sweep_dir: str | Path) -> None:
        """Jobs may have run in other processes (joblib, submitit): their summaries say how they ended."""
        self.jobs = job_dirs(sweep_dir)
        self.failed = failed_jobs(self.jobs)
        self.count = max(self.count, len(self.jobs))

    def table(self) -> list[tuple[str, str, float | None]]:
        """(job directory name, status, best validation accuracy) of each collected job."""
        rows = []
        for job in self.jobs:
            try:
                s = json.loads((job / "summary.json").read_text())
            except (OSError, ValueError):
                s = {"status": "not started" if (job.parent / STOPPING).exists() else "no summary"}
            rows.append((job.name, s.get("status", "?"), s.get("best_val_acc")))
        return rows


def write_hydra_record(run_dir: Path, cfg) -> None:
    """Hydra's .hydra/ record of a job (config.yaml, hydra.yaml, overrides.yaml), as Hydra's run_job writes
    it, written by regx once the job owns `run_dir` (`cfg`: the job's config as Hydra handed it over)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from regx.files import write_text

    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))  # a writable copy
    hydra_cfg.hydra.output_subdir = ".hydra"  # what it was before regx took the writing over
    given = hydra_cfg.hydra.overrides.hydra
    hydra_cfg.hydra.overrides.hydra = [o for o in given if o != "hydra.output_subdir=null"]
    folder = Path(run_dir) / ".hydra"
    write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


STOPPING = ".stopping"  # in a sweep directory: a stop was asked for; no job starts (sweep-resume clears it)


NAMING = "REGX_SWEPT"  # the environment (inherited by a launcher's worker processes): swept keys;job count


def name_jobs_by(overrides: list[str]) -> None:
    """Before a sweep starts: which keys it sweeps and how many jobs it has, for job_name (through the
    environment, which joblib's and submitit's workers inherit)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # the preflight has said what is wrong with them already
        return
    keys, count = [], 1
    for o in parsed:
        if o.is_sweep_override():
            keys.append(o.get_key_element())
            try:
                count *= len(list(o.sweep_string_iterator()))
            except Exception:  # a range or interval the sweeper draws from: the count is unknown
                count = 0
    os.environ[NAMING] = f"{','.join(keys)};{count if keys else 0}"


def job_name(sweep_dir: str, num, dirname: str) -> str:
    """A sweep job's directory name: its number, zero-padded to the sweep's job count so they sort, and
    the values of the keys the sweep varies (`03_aug=flip,wd=0.0001`); every override where the swept
    keys are not known. A job that has a directory already (a sweep resumed, named before) keeps it."""
    num = int(num)
    root = Path(sweep_dir)
    if root.is_dir():
        mine = re.compile(rf"0*{num}_")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and mine.match(p.name))
        if found:
            return found[0]
    keys, _, count = os.environ.get(NAMING, ";").partition(";")
    swept, count = {k for k in keys.split(",") if k}, int(count or 0)
    items: list[str] = []
    for part in str(dirname).split(","):  # a value's own commas ([a,b]) belong to the item before
        if "=" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    shown = [i for i in items if i.split("=", 1)[0] in swept] if swept else items
    width = len(str(count - 1)) if count > 1 else 1 if count == 1 else 3  # 3: a count the sweeper decides
    return f"{num:0{width}d}_{slug(','.join(shown or items))}"


class LateStop(StopSignals):
    """A single run's process outside the run's own stop handling (train.StopRequest): a SIGTERM or
    SIGINT before the run starts keeps it from starting; one after it has finished leaves its results
    as they are. Either way it is noted (`signum`), not fatal halfway through a write."""

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum


class SweepStop(StopSignals):
    """A sweep's parent process, for the life of the sweep. The first SIGTERM or SIGINT marks the sweep
    as stopping (no job starts after it) and passes SIGTERM on to the job processes (joblib's
    workers), which checkpoint and stop while this process waits for them; a second SIGINT passes
    SIGINT on, which stops them at once. Jobs that run in this process (the basic launcher) get the
    signal themselves. `signum`: the first signal, or None."""

    def __init__(self, sweep_dir: str | Path):
        super().__init__()
        self.sweep_dir = Path(sweep_dir)

    def __enter__(self):
        (self.sweep_dir / STOPPING).unlink(missing_ok=True)
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.signum is not None and "joblib.externals.loky" in sys.modules:
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)  # its workers end before this process does
        return False

    def _handle(self, signum, frame):
        first = self.signum is None
        if first:
            self.signum = signum
            (self.sweep_dir / STOPPING).touch()
            os.write(
                2,
                f"regx: {signal.Signals(signum).name}: stopping the sweep: running jobs checkpoint and stop, "
                "no new job starts\n".encode(),
            )
        for pid in job_processes():
            try:
                os.kill(pid, signal.SIGTERM if first else signal.SIGINT)
            except ProcessLookupError:
                pass


def job_processes() -> list[int]:
    """This process's children that may run jobs (not multiprocessing's resource tracker), from /proc
    (Linux; elsewhere none are found and only the jobs in this process hear a stop)."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if text[text.rindex(")") + 2 :].split()[1] != me:
                continue
            if b"resource_tracker" in (stat.parent / "cmdline").read_bytes():
                continue
        except (OSError, ValueError, IndexError):
            continue
        found.append(int(stat.parent.name))
    return found


def share_machine(cfg, hc) -> None:
    """Parallel jobs on one machine (joblib launcher): split the cores between them so N jobs do not
    oversubscribe, and give CUDA jobs one visible GPU each, round robin."""
    import torch
    from omegaconf import open_dict

    if "joblib" not in str(hc.launcher.get("_target_", "")).lower():
        return
    n_jobs = hc.launcher.get("n_jobs", -1) or 1
    cores = os.cpu_count() or 1
    parallel = cores if n_jobs < 0 else min(n_jobs, cores)
    torch.set_num_threads(max(1, cores // max(1, parallel)))
    if cfg.device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        with open_dict(cfg):
            cfg.device = f"cuda:{hc.job.num % torch.cuda.device_count()}"


def absolute_paths(cfg) -> None:
    """Paths the user typed are relative to where they typed them, also when Hydra changes into the
    run directory (hydra.job.chdir=true)."""
    from hydra.utils import to_absolute_path
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.data.root = to_absolute_path(cfg.data.root)  # downloads and caches
        if cfg.data.path:
            cfg.data.path = to_absolute_path(cfg.data.path)
        if cfg.finetune.weights and cfg.finetune.weights != "imagenet":
            cfg.finetune.weights = to_absolute_path(cfg.finetune.weights)


def failed_jobs(jobs: list[Path]) -> list[tuple[str, str]]:
    failed = []
    for job in jobs:
        try:
            s = json.loads((job / "summary.json").read_text())
        except (OSError, ValueError):
            if not (job.parent / STOPPING).exists():  # else the stop came before it started
                failed.append((str(job), "no summary.json: the job died before training"))
            continue
        if s.get("status") == "failed":
            failed.append((str(job), s.get("error") or "failed"))
    return failed


# A sweep or run directory is input from whoever could write to it: regx replays from it only the jobs'
# own overrides (keys of regx's schema and groups, values without interpolations) and the Hydra settings
# regx writes itself. Anything else (callbacks, `_target_`, launchers, search paths) is refused by name;
# the user may give a launcher's settings again on the command line, where they are the user's own.
REPLAYED = {"hydra/launcher": r"joblib", "hydra.launcher.n_jobs": r"-?\d+"}  # what regx ablate --jobs writes
# regx sets them again: for the directory as it is now, and .hydra/ written by regx (cli.cmd_train)
RECOMPUTED = ("hydra.mode", "hydra.sweep.dir", "hydra.output_subdir=null")
OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a config group option's name: no path, no ..
SUGGESTABLE = ("hydra/launcher", "hydra.launcher.", "hydra.sweeper.", "hydra.job.chdir", "hydra.searchpath")


def resume_args(sweep_dir: str | Path, extra: list[str] = ()) -> list[str]:
    """The `regx train` arguments that rerun a sweep in place: its recorded task overrides, checked, and
    `extra` Hydra settings from the command line. ValueError: not a sweep directory; Untrusted: the
    record asks for something regx does not replay (the line names it)."""
    sweep = Path(sweep_dir)
    record = sweep / "multirun.yaml"
    if not record.is_file():
        raise ValueError(f"{sweep} is not a regx sweep directory (no multirun.yaml)")
    not_hydra = [o for o in extra if not o.lstrip("+~").startswith("hydra")]
    if not_hydra:
        raise ValueError(
            f"{not_hydra[0]}: sweep-resume replays the jobs' own overrides from {record}; on the command "
            "line it takes only Hydra settings (hydra/launcher=..., hydra.launcher.KEY=...)"
        )
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(record), resolve=False)  # never resolved: see Untrusted
        overrides = recorded["hydra"]["overrides"]
        task, hydra = [str(o) for o in overrides.get("task") or []], [str(o) for o in overrides.get("hydra") or []]
    except Exception as exc:  # yaml's and OmegaConf's errors, a record of another shape
        raise ValueError(f"{record} is damaged ({' '.join(str(exc).split())[:200]})") from None
    groups = check_dir(sweep, check_task_override) if (sweep / ARMS_DIR).exists() else {}
    for o in task:
        check_task_override(o, record, groups)
    given = {o.split("=", 1)[0].lstrip("+") for o in extra}
    recomputed = (*RECOMPUTED, "hydra.searchpath=") if (sweep / ARMS_DIR).exists() else RECOMPUTED  # a study's folder
    refused = [
        o
        for o in hydra
        if not _replayed(o) and not o.startswith(recomputed) and o.split("=", 1)[0].lstrip("+") not in given
    ]
    if refused:
        key = refused[0].split("=", 1)[0].lstrip("+~")
        unsafe = [
            o
            for o in refused
            if "_target_" in o or "@" in o.split("=", 1)[0] or not o.lstrip("+~").startswith(SUGGESTABLE)
        ]
        if unsafe:
            raise Untrusted(
                f"{record} asks for {unsafe[0].split('=', 1)[0]}, which regx never replays from a file "
                "(a sweep directory must not run code): the sweep was not resumed"
            )
        raise Untrusted(
            f"{record} asks for {', '.join(refused)}: regx replays only the Hydra settings it writes "
            f"itself ({key} is not one); if you trust them, pass them again: regx sweep-resume {sweep} "
            + " ".join(refused)
        )
    searchpath = [f"hydra.searchpath=[file://{(sweep / ARMS_DIR).resolve()}]"] if (sweep / ARMS_DIR).exists() else []
    return ["-m", *task, *[o for o in hydra if _replayed(o)], *extra, *searchpath, f"hydra.sweep.dir={sweep}"]


def _replayed(override: str) -> bool:
    key, _, value = override.partition("=")
    return key in REPLAYED and re.fullmatch(REPLAYED[key], value) is not None


def check_task_override(text: str, where: Path, groups: dict[str, list[str]]) -> str:
    """One recorded task override, checked as the Hydra grammar parses it: a key of regx's schema or
    a group of regx's (or `groups`: the sweep's own, with their options), no package (`@`), no
    `_target_`, no interpolation in any value, group options by name only. Returns the key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from regx.config import GROUPS, TrainConfig

    try:
        o = OverridesParser.create().parse_override(text)
    except Exception:  # noqa: BLE001 - Hydra's grammar errors
        raise Untrusted(f"{where}: the override '{text}' does not parse") from None
    key = o.key_or_group
    top = re.split(r"[./]", key, maxsplit=1)[0]
    if (
        o.package is not None
        or "_target_" in key.split(".")
        or top not in {*TrainConfig.__dataclass_fields__, *GROUPS, *groups}
    ):
        raise Untrusted(
            f"{where} asks for {key}{'@' + o.package if o.package else ''}, which is not a regx setting: "
            "the sweep was not resumed"
        )
    values = _leaves(o.value()) if o.value_type is not None else []
    interpolated = next((v for v in values if "${" in v), None)
    if interpolated is not None:
        raise Untrusted(
            f"{where}: {key}={interpolated} holds an interpolation; regx replays recorded values as they "
            "are, never resolved: write the value itself"
        )
    if key in GROUPS or key in groups:
        bad = next((v for v in values if not OPTION.fullmatch(v) or (key in groups and v not in groups[key])), None)
        if bad is not None and o.value_type.name != "GLOB_CHOICE_SWEEP":
            raise Untrusted(f"{where}: {key}={bad} is not an option of the group {key}: the sweep was not resumed")
    return key


def _leaves(value) -> list[str]:
    """Every string inside an override's parsed value (a sweep's choices, a glob's patterns, a list)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_leaves(k), *_leaves(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _leaves(v)]
    parts = [getattr(value, a) for a in ("list", "include", "exclude") if hasattr(value, a)]  # ChoiceSweep, Glob
    return [s for part in parts for s in _leaves(part)]

"""`regx <command>`: thin subcommands over library functions; nothing heavy is imported until one runs.

Bad input exits 2 with one line, a failed run exits 1, a stopped run 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

USAGE = """\
usage: regx <command> [args]      (regx <command> --help for its own)

commands:
  train   [overrides]             train one run; -m for a sweep (regx train --help lists the groups)
  resume  RUN_DIR [key=value]     continue a run from its last checkpoint (e.g. epochs=20)
  sweep-resume SWEEP_DIR          rerun a sweep in place: skip completed jobs, resume stopped ones
  ablate  [overrides] --seeds N   baseline, each technique alone, all together: a table with paired 95% CIs
  curve   [overrides] --sizes S,..  accuracy and gap against the training-set size, per arm, bands over seeds
  path    KEY=V1,V2|LO:HI:N [overrides]  accuracy and gap against a regularizer's strength: the U-curve
  show-aug [overrides] [--out F]  a PNG grid: originals, then rows of augmented copies
  lr-plot  [overrides] [--out F]  a PNG of the learning rate over the whole run
  plot     RUN_DIR                redraw RUN_DIR/curves.png from its metrics.csv
  report   DIR... [--group-by K]  runs and sweeps as one table: report.csv, report.md, report.png
  eval     RUN_DIR [--last] [data=...]  per-class accuracy and confusion matrix: eval.json, confusion.png
  predict  RUN_DIR PATH...        label new images (files, folders, globs): CSV or JSONL, top-k
  export   RUN_DIR --format F     TorchScript or ONNX, checked against the PyTorch model
  check-data [overrides]          decode every image of the data without training; list unreadable files

examples:
  regx train                                   the default experiment on the embedded shapes data
  regx train aug=flip_rotate wd=1e-4           a technique or two
  regx train -m aug=none,flip_rotate wd=0,1e-4 a sweep: four runs under outputs/sweeps/
  regx train debug=smoke                       a seconds-long CPU run
  regx resume outputs/runs/<run> epochs=20
  regx report outputs/sweeps/<stamp> --sort best_val
  regx train -m aug=none,all seed=0,1,2 && regx report outputs/sweeps/<stamp> --group-by aug
  regx show-aug aug=all aug.rotate.degrees=30  see an augmentation before training with it
  regx lr-plot sched=onecycle epochs=30

Bad input exits with status 2 and one line; REGX_DEBUG=1 shows tracebacks.
Shell completion: eval "$(regx -sc install=bash)" (or install=zsh).
"""


class BadInput(Exception):
    """One line for the user; exit status 2."""


def _error(message: str, code: int = 2) -> int:
    print(f"regx: error: {message}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (BadInput) instead of a usage block and exit(2)."""

    def error(self, message):
        message = message.replace(", KEY=VALUE", "")  # intermixed parsing lists the optional overrides too
        raise BadInput(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):  # options may come between key=value overrides
        return self.parse_intermixed_args(args, namespace)


EXAMPLES = {
    "resume": [
        "regx resume outputs/runs/<run>                 # continue a stopped run where it stopped",
        "regx resume outputs/runs/<run> epochs=20 sched.restart=true   # train a finished run further, a new LR cycle",
        "regx resume outputs/runs/<run> epochs=20       # ... where its schedule ended above lr 0 (step, constant)",
    ],
    "sweep-resume": [
        "regx sweep-resume outputs/sweeps/<time>",
        "regx sweep-resume outputs/sweeps/<time> hydra/launcher=slurm hydra.launcher.partition=gpu",
    ],
    "curve": [
        "regx curve data=fashion_mnist --sizes 250,500,1000,2000,4000 --seeds 3",
        "regx curve debug=smoke --sizes 100,200,400 --seeds 2 --arms each",
        "regx curve --resume outputs/curves/<time>",
    ],
    "path": [
        "regx path wd=1e-6:1e-2:9 data=fashion_mnist data.train_size=1000 --seeds 3",
        "regx path dropout.p=0,0.2,0.4,0.6 dropout=fc data=fashion_mnist --sizes 1000,8000",
        "regx path --resume outputs/paths/<time>",
    ],
    "ablate": [
        "regx ablate data=fashion_mnist data.train_size=2000 epochs=15 --seeds 3",
        "regx ablate experiment=overfit --seeds 3 --jobs 2",
        "regx ablate debug=smoke '+ablate.arms.mixup=[\"aug=mixup\"]' --seeds 2   # a technique of your own",
        "regx ablate --resume outputs/ablations/<time>      # finish a stopped one, then tabulate it",
    ],
    "show-aug": ["regx show-aug aug=all aug.rotate.degrees=30", "regx show-aug aug=crop_flip --out grid.png"],
    "lr-plot": ["regx lr-plot sched=onecycle epochs=30", "regx lr-plot sched=cosine sched.warmup_epochs=2"],
    "check-data": ["regx check-data data=imagefolder data.path=~/photos data.image_size=96"],
    "plot": ["regx plot outputs/runs/<run>"],
    "report": [
        "regx report outputs/sweeps/<time> --sort best_val",
        "regx report outputs/sweeps/<time> --group-by aug     # mean ± std over seeds",
        "regx report 'outputs/runs/*'",
    ],
    "predict": [
        "regx predict outputs/runs/<run> photos/ --out labels.csv",
        "regx predict outputs/runs/<run> 'new/*.jpg' --top-k 3 --out labels.jsonl",
        "regx predict outputs/runs/<run> cat.png               # CSV on stdout",
    ],
    "export": [
        "regx export outputs/runs/<run> --format onnx          # -> RUN_DIR/export/model.onnx",
        "regx export outputs/runs/<run> --format torchscript --out model.pt",
    ],
    "eval": [
        "regx eval outputs/runs/<run>                   # best.pt on the test split",
        "regx eval outputs/runs/<run> data=imagefolder data.path=new_photos --split all   # classes by name",
        "regx eval outputs/runs/<run> --last data.n_test=5000 data.seed=7",
        "regx eval outputs/runs/<run> --corrupt all --severity 1..5   # accuracy on corrupted images",
    ],
}


def _parser(command: str, description: str, *positionals: str, overrides: str | None = None) -> _Parser:
    """A subcommand's parser: its positional arguments, then key=value overrides when it takes them."""
    p = _Parser(
        prog=f"regx {command}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[command]),
    )
    for name in positionals:
        p.add_argument(name.lower(), metavar=name)
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides)
    return p


# ---------------------------------------------------------------------------------------------
# train and sweeps: the arguments go to Hydra

# Flags that Hydra's own argument parser takes, and which of them take a value.
_HYDRA_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--shell-completion",
    "-sc",
}
_HYDRA_INFO_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--version",
    "--shell-completion",
    "-sc",
}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _split_args(args: list[str]) -> tuple[list[str], bool, bool, dict[str, str]]:
    """(overrides, info_only, multirun, {"-cd"/"-cp"/"-cn": value}) from `regx train` arguments."""
    overrides, info, multirun, where = [], False, False, {}
    long = {"--config-dir": "-cd", "--config-path": "-cp", "--config-name": "-cn"}
    i = 0
    while i < len(args):
        a = args[i]
        info = info or a in _HYDRA_INFO_FLAGS
        multirun = multirun or a in ("-m", "--multirun")
        if long.get(a, a) in ("-cd", "-cp", "-cn") and i + 1 < len(args):
            where[long.get(a, a)] = args[i + 1]
        if a in _HYDRA_FLAGS_WITH_VALUE or (
            a in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in _INFO_VALUES
        ):
            i += 2
            continue
        if not a.startswith("-"):
            overrides.append(a)
        i += 1
    return overrides, info, multirun, where


def _absolute_config_path(args: list[str]) -> list[str]:
    """-cp/--config-path relative to where the user is (Hydra would take it relative to cli.py)."""
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a in ("-cp", "--config-path"):
            out[i + 1] = str(Path(out[i + 1]).expanduser().resolve())
    return out


def _given(args: list[str], key: str) -> str | None:
    """The value of `key=` on a command line, as Hydra takes it: the last one given."""
    return next((a.split("=", 1)[1] for a in reversed(args) if a.startswith(f"{key}=")), None)


def _refuse_existing(args: list[str], multirun: bool, resume_jobs: bool) -> None:
    """A run or sweep directory named on the command line that holds a run or a sweep already is never
    overwritten, nor made the other kind."""
    named = _given(args, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    if named is None or resume_jobs:
        return
    if not multirun and (Path(named) / "summary.json").is_file():
        raise BadInput(
            f"{named} holds a run already; continue it with: regx resume {named} (or pick another hydra.run.dir)"
        )
    if multirun and (Path(named) / "multirun.yaml").is_file():
        raise BadInput(
            f"{named} holds a sweep already; finish it with: regx sweep-resume {named} "
            "(or pick another hydra.sweep.dir)"
        )
    if multirun and (Path(named) / "summary.json").is_file():  # its jobs' folders would land among its files
        raise BadInput(
            f"{named} holds a run, not a sweep: pick another hydra.sweep.dir (continue the run: regx resume {named})"
        )
    if not multirun and (Path(named) / "multirun.yaml").is_file():
        raise BadInput(
            f"{named} holds a sweep, not a run: pick another hydra.run.dir "
            f"(finish the sweep: regx sweep-resume {named})"
        )


MIN_FREE = 1 << 20  # bytes: less free space where runs go, and a run could not write its first files


def _check_output(args: list[str], multirun: bool) -> None:
    """Where the run or sweep directory will go: names the file system takes, a folder this process
    can write in, with room for a run's first files. One line (exit 2 or 1) instead of a traceback."""
    import shutil
    import tempfile

    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    target = Path(next((a.split("=", 1)[1] for a in args if a.startswith(key)), "outputs")).expanduser()
    for part in target.parts:
        if len(part.encode()) > 255:
            raise BadInput(
                f"{key[:-1]}: the name '{part[:30]}...' is {len(part.encode())} bytes long; a file name "
                "can have at most 255"
            )
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".regx-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot create {target}: {existing} is not writable ({exc.strerror}); pick another place with {key}DIR",
        ) from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE:
        raise OSError(
            28,
            f"cannot start a run in {target}: {free // 1024} KiB free on its file system "
            f"(at least {MIN_FREE >> 20} MiB needed)",
        )


def cmd_train(args: list[str], *, resume_jobs: bool = False) -> int:
    from regx import config, errors
    from regx.files import owner

    if "--version" in args:
        return _version()
    for flag in ("-sc", "--shell-completion"):  # what Hydra users type: regx's completion, not Hydra's
        if flag in args and args.index(flag) + 1 < len(args):
            return _shell_completion(args[args.index(flag) + 1 : args.index(flag) + 2])
    overrides, info_only, multirun, where = _split_args(args)
    multirun = multirun or any(o.startswith(("hparams_search=", "hydra.mode=MULTIRUN")) for o in overrides)
    args = _absolute_config_path(args)
    primary = str(Path(where["-cp"]).expanduser().resolve()) if "-cp" in where else None
    config.register()
    _register_resolvers()
    if not info_only:
        _check_output(args, multirun)
        _refuse_existing(args, multirun, resume_jobs)
        for warning in errors.preflight(overrides, where.get("-cd"), primary, where.get("-cn", "train")):
            print(f"regx: warning: {warning}", file=sys.stderr)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # errors reach _guarded: one line, not Hydra's traceback
    import hydra

    from regx import sweep

    args, sweep_dir = _directories(args, overrides, info_only, multirun, where)
    # regx writes Hydra's .hydra/ record itself, once the job owns its directory (sweep.write_hydra_record):
    # a process refused a directory another trains in writes nothing into it
    record = not info_only and not any(a.startswith("hydra.output_subdir=") for a in args)
    args = [*args, "hydra.output_subdir=null"] if record else args
    jobs = sweep.Jobs(resume=resume_jobs, record_hydra=record)
    if multirun:
        sweep.name_jobs_by(overrides)
    main = hydra.main(config_path=str(config.conf_dir()), config_name="train", version_base="1.3")(jobs.task)
    argv = sys.argv
    sys.argv = ["regx train", *args]
    try:
        if not multirun or sweep_dir is None:
            memo = not (info_only or multirun or where)  # the preflight composed it: Hydra need not again
            with sweep.LateStop() as late, _composed_by_regx(memo):
                jobs.late = late
                main()
            late_code = None if jobs.failed else _late(late, jobs.completed > 0)
            if late_code is not None:
                return late_code
        else:  # the sweep directory is this process's while the sweep runs; a stop reaches every job
            Path(sweep_dir).mkdir(parents=True, exist_ok=True)
            with owner(sweep_dir), sweep.SweepStop(sweep_dir) as stop:
                main()
                return _sweep_summary(jobs, sweep_dir, stop.signum or jobs.stopped)
    finally:
        sys.argv = argv
    if jobs.failed:
        print(f"regx: error: {jobs.failed[0][1]} (run dir {jobs.failed[0][0]})", file=sys.stderr)
    return 1 if jobs.failed else 0


@contextlib.contextmanager
def _composed_by_regx(memo: bool):
    """Hydra's launch of a single run composes the whole config twice (Hydra.get_mode, then Hydra.run:
    about 0.2 s each), and the preflight composed it already: with `memo`, Hydra.compose_config takes
    the config from compose's memo (config.hydra_config, equal to Hydra's own). Not for --cfg, --help,
    sweeps, -cd/-cp/-cn or hydra.verbose (Hydra's debug output), which Hydra composes itself."""
    if not memo:
        yield
        return
    from hydra._internal.hydra import Hydra
    from hydra.core.utils import configure_log

    from regx import config

    composing = Hydra.compose_config

    def compose_config(self, config_name, overrides, run_mode, with_log_configuration=False, **kwargs):
        cfg = config.hydra_config(overrides, config_name) if config_name == "train" else None
        if cfg is None or cfg.hydra.verbose:
            return composing(self, config_name, overrides, run_mode, with_log_configuration, **kwargs)
        if with_log_configuration:  # as Hydra.compose_config does
            configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        return cfg

    Hydra.compose_config = compose_config
    try:
        yield
    finally:
        Hydra.compose_config = composing


def _register_resolvers() -> None:
    """The resolvers conf/train.yaml's `hydra:` section names: run and sweep directories claimed
    atomically (use_cache: Hydra copies the cache into each sweep job's config, so a directory is
    claimed once), and job directory names made safe."""
    from omegaconf import OmegaConf

    from regx.files import claim_dir, slug

    if not OmegaConf.has_resolver("regx_dir"):
        OmegaConf.register_new_resolver("regx_dir", claim_dir, use_cache=True)
        OmegaConf.register_new_resolver("regx_slug", slug)
    if not OmegaConf.has_resolver("regx_job"):
        from regx.sweep import job_name

        OmegaConf.register_new_resolver("regx_job", job_name)


def _directories(args: list[str], overrides: list[str], info_only: bool, multirun: bool, where: dict):
    """Claim the run or sweep directory before Hydra starts: one for all ranks under torchrun, one
    per sweep (so regx knows where the jobs went, whatever the launcher)."""
    from regx import config
    from regx.files import claim_dir

    if info_only:
        return args, None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun
        from regx import distributed

        if multirun:
            raise BadInput("under torchrun regx trains one run; sweep DDP runs with a launcher instead")
        distributed.setup()
        if not any(a.startswith("hydra.run.dir=") for a in args):  # one run directory, picked by rank 0
            name = str(config.compose(overrides, where.get("-cd")).name) if distributed.is_main() else ""
            args.append(f"hydra.run.dir={distributed.broadcast(claim_dir('outputs/runs', name) if name else None)}")
        if not distributed.is_main():
            args.append("hydra.output_subdir=null")  # rank 0 writes .hydra/
    sweep_dir = _given(args, "hydra.sweep.dir")
    if multirun and sweep_dir is None:
        sweep_dir = claim_dir("outputs/sweeps", "")
        args.append(f"hydra.sweep.dir={sweep_dir}")
    return args, sweep_dir


def _sweep_summary(jobs, sweep_dir: str, stopped: int | None) -> int:
    """A sweep's end: one line per job, how many failed, and the command that tabulates them (or,
    when a signal stopped it, the command that finishes it)."""
    jobs.collect(sweep_dir)
    if not stopped:
        from regx.trackers import end_sweep

        end_sweep(Path(sweep_dir), failed=bool(jobs.failed))
    if jobs.count == 0:  # the directory holds at most Hydra's multirun.yaml: nothing to keep
        for f in [*Path(sweep_dir).glob("multirun.yaml"), *Path(sweep_dir).glob(".lock")]:
            f.unlink()
        if Path(sweep_dir).is_dir() and not any(Path(sweep_dir).iterdir()):
            Path(sweep_dir).rmdir()
        raise BadInput("the sweep ran no job: a sweep value matched nothing (a glob, a range or a choice)")
    for job, status, best in jobs.table():
        print(f"  {job}  {status}" + (f"  best val {100 * best:.2f}%" if best is not None else ""))
    if jobs.failed:
        print(f"regx: {len(jobs.failed)} of {jobs.count} jobs failed:", file=sys.stderr)
        for run_dir, message in jobs.failed:
            print(f"  {run_dir}: {message}", file=sys.stderr)
    kind = _study_kind(Path(sweep_dir))  # a study's own --resume also tabulates it
    if stopped:
        import signal

        finish = f"regx {kind} --resume" if kind else "regx sweep-resume"
        print(
            f"regx: {signal.Signals(stopped).name} stopped the sweep; finish it with: {finish} {sweep_dir}",
            file=sys.stderr,
        )
        return 128 + stopped
    table = f"its table: regx {kind} --resume {sweep_dir}; every run: " if kind else "compare them with: "
    print(f"{jobs.count} jobs in {sweep_dir}; {table}regx report {sweep_dir}")
    return 1 if jobs.failed else 0


def _study_kind(sweep: Path) -> str | None:
    """ablate, curve or path for a study's sweep directory (regx sweep-resume finishes one too), else None."""
    from regx import study

    if not (sweep / study.ARMS_DIR).is_dir():
        return None
    try:
        kind = json.loads((sweep / "study.json").read_text()).get("kind")
    except FileNotFoundError:
        return "ablate"  # a curve or path writes study.json before its sweep starts
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in ("curve", "path") else None


def cmd_sweep_resume(args: list[str]) -> int:
    from regx import sweep

    p = _parser(
        "sweep-resume",
        "Rerun a sweep's command into the same directory: job directories are named from "
        "their overrides, so each job finds its own; completed ones are skipped, stopped "
        "ones resumed. Only the jobs' own overrides and the Hydra settings regx writes "
        "itself are replayed from the directory; give any other Hydra setting (a launcher) "
        "again on the command line.",
        "SWEEP_DIR",
        overrides="Hydra settings: hydra/launcher=NAME, hydra.launcher.KEY=VALUE",
    )
    a = p.parse_args(args)
    try:
        again = sweep.resume_args(a.sweep_dir, a.overrides)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return cmd_train(again, resume_jobs=True)


def _study_options(p: _Parser) -> None:
    """The options regx ablate, curve and path share."""
    from regx.study import METRICS

    p.add_argument("--seeds", type=int, default=3, help="seeds per arm and point, 0..N-1 (default 3)")
    p.add_argument("--jobs", type=int, help="jobs in parallel with the joblib launcher (default: one per 4 cores)")
    p.add_argument(
        "--metric",
        choices=list(METRICS),
        help="what the table compares (default test; test_corrupt with --corrupt)",
    )
    p.add_argument(
        "--corrupt",
        metavar="LIST",
        help="also score every run's test split corrupted (all, or some of gaussian_noise,gaussian_blur,contrast,"
        "brightness,jpeg,saturate; severities: diagnose.corrupt_severities) and compare the mean (test_corrupt)",
    )
    p.add_argument("--resume", metavar="DIR", help="finish a study a stop interrupted, then tabulate it")
    p.add_argument(
        "--vary-split",
        action="store_true",
        help="each seed draws its own training subset and validation split (data.seed = seed)",
    )


def _study_args(p: _Parser, args: list[str]):
    """Parse a study's arguments; --metric defaults to test, or test_corrupt with --corrupt."""
    a = p.parse_args(args)
    a.metric = a.metric or ("test_corrupt" if a.corrupt else "test")
    a.options = [t.split("=", 1)[0] for t in args if t.startswith("--")]  # as typed, for --resume's check
    return a


def _warn_few_steps_ahead(kind: str, runs: list[list[str]]) -> None:
    """Said once before a study's jobs start (each run says it again in its log): the fewest optimizer
    steps its baseline runs will take, where that is too few to judge a regularizer by."""
    from regx import config
    from regx.data import train_count
    from regx.diagnose import FEW_STEPS
    from regx.schedules import steps_per_epoch

    try:
        fewest = min(
            steps_per_epoch(train_count(cfg.data), cfg.batch_size) * cfg.epochs
            for cfg in (config.compose(o) for o in runs)
        )
    except Exception:  # counted without loading the data where it can be; never a reason to stop here
        return
    if fewest < FEW_STEPS:
        study = "ablation" if kind == "ablate" else kind
        print(
            f"regx: warning: this {study}'s runs take as few as {fewest} optimizer steps: too few to judge a "
            f"regularizer by (under {FEW_STEPS}); train longer, or in smaller batches",
            file=sys.stderr,
        )


def _run_study(kind: str, a, arms: dict[str, list[str]], points: dict[str, list[str]], plan=None) -> tuple[Path, int]:
    """Check every arm and point before any directory exists, then run the study as one sweep under
    outputs/<kind>s/; (its directory, the sweep's exit status). With --resume: finish the one given."""
    from regx import study
    from regx.files import claim_dir

    if a.resume:
        return Path(a.resume), _resume_study(kind, a)
    launcher, named = _check_study(kind, a, arms, points)
    runs = len(arms) * max(1, len(points)) * a.seeds
    jobs = 1 if launcher not in (None, "joblib") else a.jobs or max(1, min(runs, (os.cpu_count() or 1) // 4))
    if named:
        Path(named).mkdir(parents=True, exist_ok=True)
        a.overrides = [o for o in a.overrides if not o.startswith("hydra.sweep.dir=")]
    sweep = Path(named or claim_dir(f"outputs/{'ablations' if kind == 'ablate' else kind + 's'}", ""))
    study.write_group(sweep, study.ARM, arms)
    groups = {study.ARM: list(arms)}
    if points:
        study.write_group(sweep, study.POINT, points)
        groups[study.POINT] = list(points)
    if plan is not None:
        from regx.curve import write_plan

        write_plan(sweep, plan)
    shape = f"{len(arms)} arms" + (f" x {len(points)} points" if points else "")
    print(
        f"regx {kind}: {shape} x {a.seeds} seeds = {runs} runs in {sweep}" + (f", {jobs} at a time" if jobs > 1 else "")
    )
    overrides = [*a.overrides, *(["ablate.vary_split=true"] if a.vary_split else [])]
    return sweep, cmd_train(study.sweep_args(groups, a.seeds, overrides, sweep, jobs))


def _resume_study(kind: str, a) -> int:
    """`regx KIND --resume DIR`: the study as it began (only ablate's --metric may change, for its table)."""
    if a.overrides:
        raise BadInput(f"--resume takes no overrides: the {kind} keeps the ones it began with")
    unread = [o for o in a.options if o != "--resume" and not (kind == "ablate" and o == "--metric")]
    if unread:
        kept = "; only --metric applies (to the table)" if kind == "ablate" else ""
        raise BadInput(
            f"{unread[0]}: --resume finishes the {kind} as it began (its seeds, arms, points and budget){kept}"
        )
    return cmd_sweep_resume([a.resume])


def _check_study(
    kind: str, a, arms: dict[str, list[str]], points: dict[str, list[str]]
) -> tuple[str | None, str | None]:
    """Every refusal before a study's directory exists: counts, the overrides the study sets itself, the
    launcher's, the folder the user names, and each arm and point preflighted; (launcher, named folder)."""
    from regx import ablate, config, errors

    if a.seeds < 1 or (a.jobs is not None and a.jobs < 1):
        raise BadInput("--seeds and --jobs must be at least 1")
    if a.corrupt:
        a.overrides = [*a.overrides, f"diagnose.corrupt=[{a.corrupt}]"]
    owned = next(
        (o for o in a.overrides if o.lstrip("+~").startswith(("hydra.searchpath=", "hydra.sweep.subdir="))), None
    )
    if owned:
        raise BadInput(
            f"{owned.split('=', 1)[0]}: the {kind} sets it itself (its arms' folder and its jobs' folder names)"
        )
    launcher = _given(a.overrides, "hydra/launcher")
    if launcher not in (None, "joblib") and a.jobs is not None:
        raise BadInput(f"--jobs runs jobs in parallel with joblib; with hydra/launcher={launcher} set its own")
    if launcher in (None, "joblib") and _given(a.overrides, "hydra.launcher.n_jobs") is not None:
        raise BadInput(f"hydra.launcher.n_jobs: the {kind} runs joblib's jobs in parallel with --jobs N")
    named = _given(a.overrides, "hydra.sweep.dir")  # the study's folder, if the user picks it
    if named:
        if Path(named).exists() and (not Path(named).is_dir() or any(Path(named).iterdir())):
            raise BadInput(
                f"hydra.sweep.dir={named}: the folder is not empty; a {kind} begins in a new or empty folder "
                f"(finish one a stop interrupted with: regx {kind} --resume {named})"
            )
    varied = ablate.varied_keys({**arms, **points}) | {"seed"} | ({"data.seed"} if a.vary_split else set())
    clash = next((o for o in a.overrides if o.split("=", 1)[0].lstrip("+~") in varied), None)
    if clash:
        raise BadInput(
            f"{clash}: the {kind} sets {clash.split('=', 1)[0].lstrip('+~')} itself (its arms, points and seeds); "
            "an override here would make them all the same"
            + (
                "; the optimizer steps of every run are --steps N (or --budget epochs)"
                if clash.startswith("epochs=")
                else ""
            )
        )
    first_point, baseline = next(iter(points.values()), []), next(iter(arms.values()))
    for what, extra in [
        *((f"arm {n}", [*o, *first_point]) for n, o in arms.items() if o or not points),  # a path's one arm: none
        *((f"point {n}", [*baseline, *o]) for n, o in points.items()),
    ]:
        try:
            errors.preflight([*a.overrides, *extra])
        except config.ConfigError as exc:
            raise BadInput(f"{kind} {what} ({' '.join(extra)}): {exc}") from None
    _warn_few_steps_ahead(kind, [[*a.overrides, *baseline, *o] for o in (points.values() or [[]])])
    return launcher, named


def _show_study(kind: str, sweep: Path, header, rows, files, notes, warnings, caption: str) -> None:
    from regx.console import print_table

    print_table(f"regx {kind}: {sweep}", header, rows, caption=caption, right=set(header[2:-1]))
    for line in notes:
        print(line)
    for line in warnings:
        print(f"regx: warning: {line}", file=sys.stderr)
    print(f"wrote {', '.join(f.name for f in files)} in {sweep}; every run: regx report {sweep}")


def cmd_ablate(args: list[str]) -> int:
    from regx import ablate, config, errors

    p = _parser(
        "ablate",
        "The baseline, each technique alone (added to the baseline) and all together, over "
        "--seeds seeds paired across arms, as one sweep under outputs/ablations/; then one table "
        "and one chart: mean ± std per arm, the paired difference against the baseline with a 95% "
        "confidence interval, the verdicts. The arms are the config's ablate.baseline and "
        "ablate.arms (the course's four by default).",
        overrides="overrides every arm shares: the data, the model, epochs, ...",
    )
    _study_options(p)
    a = _study_args(p, args)
    arms = {}
    if not a.resume:
        errors.preflight(a.overrides)
        arms = ablate.arms_of(config.compose(a.overrides))
    sweep, code = _run_study("ablate", a, arms, {})
    if code in (130, 143):
        return code
    header, rows, files, warnings = ablate.report(sweep, a.metric)
    _show_study(
        "ablate",
        sweep,
        header,
        rows,
        files,
        [],
        warnings,
        f"{a.metric} accuracy in %; differences paired by seed, ± the 95% confidence interval; p Holm-adjusted "
        "across arms (ablation.md says more)",
    )
    return code


def _arms_for_curve(cfg, which: str) -> dict[str, list[str]]:
    """regx curve's arms: the baseline and the course's techniques together (`together`), regx ablate's
    whole set (`each`: every technique alone too), or the baseline and the arms named (`NAME,NAME`)."""
    from regx import ablate

    arms = ablate.arms_of(cfg)
    if which == "each":
        return arms
    if which == "together":
        together = "all" if "all" in arms else next(n for n in arms if n != "baseline")
        return {"baseline": arms["baseline"], together: arms[together]}
    names = [n.strip() for n in which.split(",") if n.strip() and n.strip() != "baseline"]
    unknown = [n for n in names if n not in arms]
    if unknown or not names:
        raise BadInput(
            f"--arms {which}: {'no arm ' + ', '.join(unknown) if unknown else 'name at least one arm'} "
            f"(together, each, or names among: {', '.join(n for n in arms if n != 'baseline')})"
        )
    return {"baseline": arms["baseline"], **{n: arms[n] for n in names}}


def _budget_options(p: _Parser) -> None:
    p.add_argument(
        "--budget",
        choices=["steps", "epochs"],
        default="steps",
        help="steps (default): every run about the same optimizer steps, its epochs derived from its size; "
        "epochs: every run the config's epochs",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="the optimizer steps of every run (default: the config's epochs at the sizes' geometric mean)",
    )


def _steps(a, cfg, sizes: list[int]) -> int | None:
    """The optimizer steps of every run of a curve or path (--budget steps over --sizes), else None; a
    --steps that nothing would read is refused."""
    from regx import curve

    if a.budget == "steps" and sizes:
        return a.steps or curve.default_steps(cfg, sizes)
    if a.steps is not None:
        why = (
            "--budget epochs trains every run the config's epochs"
            if sizes
            else "a path at one size trains the config's epochs"
        )
        raise BadInput(f"--steps {a.steps}: {why}; set epochs=N instead, or drop --steps")
    return None


def _sizes_checked(cfg, spec: str | None) -> list[int]:
    """--sizes, each at most the training images the data has."""
    from omegaconf import open_dict

    from regx.curve import parse_sizes
    from regx.data import DataError, train_count

    sizes = parse_sizes(spec)
    if sizes:
        data = cfg.data.copy()
        with open_dict(data):
            data.train_size = None
        try:
            available = train_count(data)
        except DataError as exc:
            raise BadInput(str(exc)) from None
        if sizes[-1] > available:
            raise BadInput(
                f"--sizes {spec}: {sizes[-1]:,} is above the {available:,} training images data={cfg.data.name} has"
            )
    return sizes


def cmd_curve(args: list[str]) -> int:
    from regx import config, curve, errors

    p = _parser(
        "curve",
        "Learning curves over the training-set size: for each size (--sizes), each arm and each seed one run, "
        "as one sweep under outputs/curves/; then curve.csv, curve.md and curve.png: the metric and the clean gap "
        "against the images (log x), 95% bands over seeds, each arm's paired difference from the baseline at every "
        "size, and where it stops helping. The arms are regx ablate's (ablate.baseline, ablate.arms).",
        overrides="overrides every run shares: the data, the model, the batch, ...",
    )
    p.add_argument("--sizes", help="training images, e.g. 250,500,1000,2000,4000")
    p.add_argument(
        "--arms",
        default="together",
        metavar="together|each|NAME,...",
        help="together (default): the baseline and the techniques together; each: regx ablate's arms; or "
        "the baseline and the arms named, e.g. augmentation,ls with '+ablate.arms.ls=[label_smoothing=0.1]'",
    )
    _budget_options(p)
    _study_options(p)
    a = _study_args(p, args)
    arms, points, plan = {}, {}, None
    if not a.resume:
        errors.preflight(a.overrides)
        cfg = config.compose(a.overrides)
        sizes = _sizes_checked(cfg, a.sizes)
        if len(sizes) < 2:
            raise BadInput("--sizes: a curve needs at least two sizes, e.g. --sizes 250,500,1000,2000,4000")
        steps = _steps(a, cfg, sizes)
        planned = curve.plan_points(cfg, sizes=sizes, key=None, values=None, budget=a.budget, steps=steps)
        arms, points = _arms_for_curve(cfg, a.arms), {n: q["overrides"] for n, q in planned.items()}
        plan = curve.Plan("curve", a.metric, None, True, a.budget, steps, planned)
    return _curve_or_path("curve", a, arms, points, plan, "(curve.md says more)")


def _curve_or_path(kind: str, a, arms, points, plan, more: str) -> int:
    """Run a curve or path study (or finish one: --resume), then tabulate and show it."""
    from regx import curve

    sweep, code = _run_study(kind, a, arms, points, plan)
    if code in (130, 143):
        return code
    header, rows, files, notes, warnings = curve.report(sweep)
    caption = "accuracies and gaps in %, ± 95% intervals over seeds" + (" " if more.startswith("(") else "") + more
    _show_study(kind, sweep, header, rows, files, notes[1:], warnings, caption)
    return code


def cmd_path(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from regx import config, curve, errors

    p = _parser(
        "path",
        "A regularizer's strength against accuracy: for each value of KEY (V1,V2,... or a log range LO:HI:N), "
        "each seed (and each of --sizes) one run, as one sweep under outputs/paths/; then path.csv, path.md and "
        "path.png: clean training, validation and test accuracy and the clean gap against the strength, 95% bands "
        "over seeds, each point's verdict, the best strength marked with its interval.",
        overrides="KEY=VALUES first (the swept key), then overrides every run shares",
    )
    p.add_argument("--sizes", help="also one path per training-set size, e.g. 1000,8000")
    _budget_options(p)
    _study_options(p)
    a = _study_args(p, args)
    arms, points, plan = {}, {}, None
    if not a.resume:
        if not a.overrides:
            raise BadInput("regx path needs KEY=V1,V2,... or KEY=LO:HI:N first, e.g. regx path wd=1e-6:1e-2:9")
        swept, a.overrides = a.overrides[0], a.overrides[1:]
        key, sep, spec = swept.partition("=")
        key = key.lstrip("+")
        if not sep or not key:
            raise BadInput(f"{swept}: expected KEY=V1,V2,... or KEY=LO:HI:N, e.g. wd=1e-6:1e-2:9")
        if key in config.GROUPS:
            raise BadInput(
                f"{key}: regx path sweeps a numeric key (wd, dropout.p, label_smoothing, ...), given first; "
                f"{key} is a config group"
            )
        values, log_x = curve.parse_values(spec)
        errors.preflight(a.overrides)
        cfg = config.compose(a.overrides)
        current = OmegaConf.select(cfg, key, default="<missing>")
        if isinstance(current, bool) or not isinstance(current, int | float | None):
            raise BadInput(
                f"{key}: regx path sweeps a numeric key (wd, dropout.p, label_smoothing, ...); {key} is "
                f"{current!r}, not a number"
            )
        sizes = _sizes_checked(cfg, a.sizes)
        steps = _steps(a, cfg, sizes)
        planned = curve.plan_points(cfg, sizes=sizes, key=key, values=values, budget=a.budget, steps=steps)
        arms, points = {"run": []}, {n: q["overrides"] for n, q in planned.items()}
        plan = curve.Plan("path", a.metric, key, log_x, a.budget, steps, planned)
    return _curve_or_path("path", a, arms, points, plan, "; ★ the best (path.md says more)")


def cmd_resume(args: list[str]) -> int:
    from regx.device import RunFailed
    from regx.files import RunBusy
    from regx.runs import NothingToDo, resume

    p = _parser(
        "resume",
        "Continue a run from its newest intact checkpoint (mid-epoch if it was stopped "
        "mid-epoch); key=value overrides such as epochs=20 train it further.",
        "RUN_DIR",
        overrides="overrides of the saved config; data, model, optimizer and regularization keys need --force",
    )
    p.add_argument("--force", action="store_true", help="resume even with keys changed that define the run")
    a = p.parse_args(args)
    from regx.sweep import LateStop

    try:
        with LateStop() as late:  # a signal before the resume starts (not started) or after it ended
            if late():
                return 128 + late.signum
            summary = resume(
                a.run_dir, a.overrides, force=a.force
            )  # under torchrun: every rank, from the same checkpoint
    except NothingToDo as exc:
        print(f"regx: {exc}")
    except (RunFailed, RunBusy) as exc:
        return _error(str(exc), 1)
    else:
        return _late(late, summary.get("status") == "completed") or 0
    return 0


def _late(late, completed: bool) -> int | None:
    """A single run's command after its run: a stop signal that came outside the run's own handling
    (train.StopRequest) either ended nothing (the run had completed: exit 0, said once) or kept the run
    from starting (128 + the signal)."""
    if late.signum is None:
        return None
    if completed:
        print(f"regx: {signal.Signals(late.signum).name} came after the run completed; its results are whole")
        return 0
    return 128 + late.signum


# ---------------------------------------------------------------------------------------------
# pictures and checks before training


def _composed(args: list[str], command: str, description: str, out: bool = True):
    """Parse `command`'s arguments; compose and check the config its overrides give."""
    from regx import config, errors

    p = _parser(command, description, overrides="config overrides, as for regx train")
    if out:
        p.add_argument("--out", metavar="FILE.png", help="where to write the picture (default: under outputs/)")
    a = p.parse_args(args)
    errors.preflight(a.overrides, sources=command != "check-data")
    return a, config.compose(a.overrides)


def _picture_path(a, what: str):
    from datetime import datetime
    from pathlib import Path

    from regx.files import slug

    out = (
        Path(a.out)
        if a.out
        else Path("outputs")
        / what
        / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{slug(','.join(a.overrides) or 'default')}.png"
    )
    if out.suffix.lower() != ".png":
        raise BadInput(f"--out {out}: the file name must end in .png")
    return out


def cmd_show_aug(args: list[str]) -> int:
    from regx.data import iterate, load_config
    from regx.plots import pick_examples, save_aug_grid

    a, cfg = _composed(args, "show-aug", "A PNG grid: 8 training images, then rows of augmented copies of them.")
    out = _picture_path(a, "show-aug")
    data = load_config(cfg.data)
    examples = data.train.subset(pick_examples(data.train.y, 8))
    print(save_aug_grid(out, next(iterate(examples, 8))[0], cfg.aug, seed=cfg.seed))
    return 0


def cmd_lr_plot(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from regx.data import train_count
    from regx.plots import lr_plot
    from regx.schedules import lr_schedule, steps_per_epoch, unreached

    a, cfg = _composed(args, "lr-plot", "A PNG of the learning rate at every optimizer step of the run.")
    out = _picture_path(a, "lr-plot")
    steps = steps_per_epoch(train_count(cfg.data), cfg.batch_size)  # the training split's size, not its images
    sched = OmegaConf.to_container(cfg.sched, resolve=True)
    lr_at = lr_schedule(sched, lr=cfg.lr, epochs=cfg.epochs, steps=steps, average=OmegaConf.to_container(cfg.average))
    title = f"sched={sched['name']} lr={cfg.lr:g} epochs={cfg.epochs} ({steps} steps/epoch)"
    if sched["name"] == "plateau":
        title += ": plateau cuts depend on validation loss and are not shown"
    print(lr_plot(out, [lr_at(s) for s in range(steps * cfg.epochs)], steps, title))
    for line in unreached(sched, epochs=cfg.epochs, lr=cfg.lr):
        print(f"note: {line}", file=sys.stderr)
    return 0


def cmd_check_data(args: list[str]) -> int:
    from regx.data.folders import check_data

    _, cfg = _composed(
        args,
        "check-data",
        "Decode every image of the configured data without training, and "
        "list the unreadable files (exit 1 if there are any).",
        out=False,
    )
    lines, bad, problems, warnings = check_data(cfg.data)
    print("\n".join(lines))
    for path, why in bad:
        print(f"unreadable: {path} ({why})")
    for w in warnings:
        print(f"warning: {w}")
    for e in problems:
        print(f"error: {e}")
    if problems:
        print(
            f"regx: {len(problems)} problem(s) a run would stop at"
            + ("; unreadable images: fix or remove them, or train with data.on_bad_image=skip" if bad else ""),
            file=sys.stderr,
        )
        return 1
    print("ok: every image decodes" + (f"; {len(warnings)} warning(s) above" if warnings else ""))
    return 0


# ---------------------------------------------------------------------------------------------
# after training


def cmd_plot(args: list[str]) -> int:
    from pathlib import Path

    from regx.files import read_json, read_metrics
    from regx.plots import curves_plot

    p = _parser("plot", "Redraw RUN_DIR/curves.png from its metrics.csv.", "RUN_DIR")
    run = Path(p.parse_args(args).run_dir)
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        raise BadInput(f"{metrics} not found: not a regx run directory, or no epoch has finished yet")
    try:
        rows = read_metrics(metrics)
        name = read_json(run / "summary.json").get("name", "") if (run / "summary.json").is_file() else ""
        print(curves_plot(run / "curves.png", rows, f"{name}: {run.resolve().name}"))
    except (KeyError, ValueError) as exc:
        raise BadInput(f"{metrics} is not a regx metrics file ({exc})") from None
    return 0


def cmd_report(args: list[str]) -> int:
    from regx import report
    from regx.console import print_table

    p = _parser("report", "Runs and sweeps as one table, and report.csv, report.md and report.png.")
    p.add_argument("paths", nargs="+", metavar="DIR|GLOB", help="run directories, sweep directories or globs")
    p.add_argument("--sort", metavar="COLUMN", help="sort by a column (metrics best first)")
    p.add_argument("--group-by", metavar="KEY[,KEY]", help="one row per value: mean ± std over seeds and the rest")
    p.add_argument("--metric", default="best_val", help="the metric of the bar chart (default best_val)")
    p.add_argument("--out", metavar="DIR", help="where to write the files (default: the sweep directory)")
    a = p.parse_args(args)
    group_by = [k for k in (a.group_by or "").split(",") if k] or None
    try:
        r = report.build(a.paths, sort=a.sort, group_by=group_by, metric=a.metric, out=a.out)
    except report.ReportError as exc:
        raise BadInput(str(exc)) from None
    print_table(f"regx report: {r.title}", r.header, r.rows, caption=r.caption, right=set(report.METRICS))
    for line in r.notes:
        print(line)
    for line in r.skipped:
        print(f"regx: warning: left out a run: {line}", file=sys.stderr)
    print(f"wrote {', '.join(f.name for f in r.files)} in {r.out}")
    return 0


def cmd_eval(args: list[str]) -> int:
    from pathlib import Path

    from regx.corrupt import CorruptionError
    from regx.evalrun import EvalError, eval_run

    p = _parser(
        "eval",
        "A run's best (or last) checkpoint on the test split, or on other data: accuracy, per-class "
        "accuracy and the confusion matrix, into eval.json and confusion.png.",
        "RUN_DIR",
        overrides="data=OPTION, data.KEY=VALUE, device, precision or eval_batch_size",
    )
    p.add_argument(
        "--checkpoint", choices=["best", "last"], default="best", help="best.pt (default) or last.pt, as for predict"
    )
    p.add_argument("--last", action="store_true", help=argparse.SUPPRESS)  # the old spelling of --checkpoint last
    p.add_argument(
        "--split",
        choices=["test", "val", "train", "all"],
        help="which images: all scores every image (a flat folder, a test-only folder); default test, else val",
    )
    p.add_argument(
        "--unknown",
        action="store_true",
        help="count images of classes the model does not know apart from the accuracy, instead of refusing",
    )
    p.add_argument(
        "--corrupt",
        metavar="LIST",
        help="also score the images corrupted (ImageNet-C / CIFAR-10-C definitions), each at every --severity: "
        "all, or some of gaussian_noise,gaussian_blur,contrast,brightness,jpeg,saturate; writes corruption.png",
    )
    p.add_argument("--severity", metavar="S", help="severities for --corrupt: 1..5 (default), 3, 1,3,5")
    p.add_argument("--out", metavar="DIR", help="where to write eval.json and confusion.png (default: RUN_DIR)")
    a = p.parse_args(args)
    if a.severity is not None and not a.corrupt:
        raise BadInput(f"--severity {a.severity}: severities are --corrupt's; add --corrupt all (or a list)")
    try:
        eval_run(
            Path(a.run_dir),
            a.overrides,
            last=a.last or a.checkpoint == "last",
            out=a.out,
            split=a.split,
            unknown=a.unknown,
            corrupt=a.corrupt,
            severity=a.severity or "1..5",
        )
    except (EvalError, CorruptionError) as exc:
        raise BadInput(str(exc)) from None
    return 0


def cmd_predict(args: list[str]) -> int:
    from regx.console import interactive
    from regx.predict import LoadError, run_predict

    p = _parser(
        "predict",
        "Label new images with a run's model, preprocessed exactly as the run trained: one row "
        "per image (path, top-k classes with probabilities); unreadable images are listed at the "
        "end and skipped (exit 1 when none could be read).",
        "RUN_DIR",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or globs")
    p.add_argument("--out", metavar="FILE", help="FILE.csv or FILE.jsonl (default: CSV on stdout)")
    p.add_argument("--top-k", type=int, default=1, help="classes per image (default 1)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch on the device (default 256)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="best.pt (default) or last.pt")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2; 0: in this process)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    a = p.parse_args(args)
    bar = _ProgressLine() if interactive() and a.out else None
    try:
        r = run_predict(
            a.run_dir,
            a.paths,
            out=a.out,
            top_k=a.top_k,
            batch_size=a.batch_size,
            checkpoint=a.checkpoint,
            workers=a.workers,
            device=a.device,
            progress=bar,
        )
    except LoadError as exc:
        raise BadInput(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    report = sys.stderr if a.out is None else sys.stdout  # stdout carries the rows when there is no --out
    for path, why in r.unreadable:
        print(f"unreadable: {path} ({why})", file=report)
    counts = ", ".join(f"{label} {n}" for label, n in r.histogram.most_common())
    print(
        f"{r.count} image{'s' * (r.count != 1)}{' -> ' + a.out if a.out else ''}"
        + (f"; {len(r.unreadable)} unreadable, skipped" if r.unreadable else "")
        + (f"; predicted: {counts}" if counts else ""),
        file=report,
    )
    return 1 if r.unreadable and not r.count else 0  # nothing labelled: a script must not take the file as done


def cmd_export(args: list[str]) -> int:
    from regx.predict import LoadError, export

    p = _parser(
        "export",
        "Write a run's model as TorchScript or ONNX: uint8 images in (normalization inside), logits "
        "out, a dynamic batch axis, class names and input size in the file's metadata. The file is "
        "then checked against the PyTorch model on the run's own validation images.",
        "RUN_DIR",
    )
    p.add_argument(
        "--format", required=True, choices=["torchscript", "onnx"], help="onnx needs pip install 'regx[export]'"
    )
    p.add_argument("--out", metavar="FILE", help="default: RUN_DIR/export/model.pt or model.onnx")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="best.pt (default) or last.pt")
    a = p.parse_args(args)
    try:
        check = export(a.run_dir, a.format, a.out, a.checkpoint)
    except LoadError as exc:
        raise BadInput(str(exc)) from None
    print(
        f"wrote {check.path}; on {check.images} validation images: max |logit difference| {check.max_abs_diff:.2g}, "
        f"top-1 agreement {100 * check.top1_agreement:.2f}%"
    )
    if check.top1_agreement < 0.99:
        return _error(
            f"the export disagrees with the PyTorch model on {100 * (1 - check.top1_agreement):.1f}% of the "
            "images; do not use it",
            1,
        )
    return 0


class _ProgressLine:
    """A one-line counter on a terminal's stderr."""

    def __call__(self, done: int) -> None:
        print(f"\rpredicted {done} images", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)


COMMANDS = {
    "train": cmd_train,
    "curve": cmd_curve,
    "path": cmd_path,
    "resume": cmd_resume,
    "ablate": cmd_ablate,
    "show-aug": cmd_show_aug,
    "lr-plot": cmd_lr_plot,
    "plot": cmd_plot,
    "report": cmd_report,
    "eval": cmd_eval,
    "check-data": cmd_check_data,
    "sweep-resume": cmd_sweep_resume,
    "predict": cmd_predict,
    "export": cmd_export,
}


def _shell_completion(args: list[str]) -> int:
    """-sc install=bash|zsh, uninstall=..., or query=bash (the installed function's question)."""
    from regx import completion

    if len(args) != 1:
        raise BadInput("-sc takes one of install=bash, install=zsh, uninstall=bash, uninstall=zsh")
    if args[0].startswith("query="):
        print(" ".join(completion.complete(os.environ.get("COMP_LINE", "regx "), list(COMMANDS))))
        return 0
    try:
        print(completion.script(args[0]), end="")
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return 0


def _version() -> int:
    from importlib.metadata import PackageNotFoundError, version

    from regx.__about__ import __version__

    def of(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    print(
        f"regx {__version__} (torch {of('torch')}, torchvision {of('torchvision')}, hydra-core {of('hydra-core')}, "
        f"Python {sys.version.split()[0]})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        print(USAGE, end="", file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-V", "--version"):
        return _version()
    if args[0] in ("-sc", "--shell-completion"):
        return _guarded(_shell_completion, args[1:])
    command = COMMANDS.get(args[0])
    if command is None:
        import difflib

        close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return _error(f"unknown command '{args[0]}'{hint} (commands: {', '.join(COMMANDS)})")
    return _guarded(command, args[1:])


MEMORY_SIGNS = ("failed to map segment", "cannot allocate memory", "can't allocate memory", "out of memory")


def _out_of_memory(exc: BaseException) -> str | None:
    """One line for an error that means the process ran out of memory (a low `ulimit -v`, a full
    machine): where it showed and the limit, from anywhere in the exception's chain; else None."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, MemoryError) and "ulimit -v" in text:  # _check_address_space's own line
            return text
        if isinstance(exc, MemoryError) or any(sign in text.lower() for sign in MEMORY_SIGNS):
            limit = _address_space()
            shown = f"; this process may use {limit / 2**30:.1f} GiB (ulimit -v)" if limit else ""
            return f"out of memory: {text}{shown}"
        exc = exc.__cause__ or exc.__context__
    return None


# below this torch's import fails or aborts in C++ (ulimit -v of 2.4, 2.9 and 3.3 GiB tried; 3.8 GiB ran a smoke run)
TORCH_ADDRESS_SPACE = int(3.5 * 2**30)


def _address_space() -> int | None:
    """This process's address-space limit in bytes (`ulimit -v`), or None where there is none."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def _check_address_space() -> None:
    """Before torch loads: with less address space than it needs, torch fails to map its libraries or
    aborts in C++ (std::bad_alloc, exit 134) where nothing can catch it; say so in one line instead."""
    limit = _address_space()
    if limit is not None and limit < TORCH_ADDRESS_SPACE:
        raise MemoryError(
            f"this process may use {limit / 2**30:.1f} GiB of address space (ulimit -v) and torch needs about "
            "4 GiB to load and run: raise it (ulimit -v unlimited)"
        )


def _guarded(command, args: list[str]) -> int:
    """Run a subcommand; turn what goes wrong into an exit status and, for bad input, one line."""
    debug, code = os.environ.get("REGX_DEBUG", "") not in ("", "0"), None
    from regx.signals import TermAsInterrupt, Terminated

    try:
        with TermAsInterrupt():
            if not any(a in ("-h", "--help") for a in args):
                _check_address_space()
            code = command(args)
        return code
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:  # `regx report ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:  # Interrupted carries 143 for SIGTERM
        print("regx: stopped by SIGTERM" if isinstance(exc, Terminated) else "regx: interrupted", file=sys.stderr)
        return getattr(exc, "code", 130)
    except Exception as exc:
        if debug:
            raise
        from regx.config import ConfigError

        memory = _out_of_memory(exc)
        if memory:  # the machine's limit, not the input's fault, wherever it surfaced (an import included)
            return _error(memory, 1)
        if isinstance(exc, BadInput | ConfigError):
            return _error(str(exc))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if type(exc).__name__ in ("DataError", "RunBusy"):  # a failure, not a typo; the line says it all
            return _error(first, 1)
        if isinstance(exc, OSError):  # a full disk, a read-only folder, a name too long: the file and why
            from regx.files import WriteFailed

            text = first if isinstance(exc, WriteFailed) else (exc.strerror or first)
            if exc.filename and str(exc.filename) not in text:
                text += f": {exc.filename}"
            return _error(text, 1)
        return _error(f"{type(exc).__name__}: {first}", 1)
    finally:
        if "regx.distributed" in sys.modules:  # under torchrun: leave the process group together
            sys.modules["regx.distributed"].teardown(succeeded=code == 0)

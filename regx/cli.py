"""`regx <command>`: a dispatcher that imports nothing heavy until a command runs."""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: regx <command> [args]

commands:
  train   [overrides]             train one run; -m for a sweep (regx train --help lists the groups)
  resume  RUN_DIR [key=value]     continue a run from its last checkpoint (e.g. epochs=20)
  sweep-resume SWEEP_DIR          rerun a sweep in place: skip completed jobs, resume stopped ones
  show-aug [overrides] [--out F]  a PNG grid: originals, then rows of augmented copies
  lr-plot  [overrides] [--out F]  a PNG of the learning rate over the whole run
  plot     RUN_DIR                redraw RUN_DIR/curves.png from its metrics.csv
  report   DIR... [--group-by K]  runs and sweeps as one table: report.csv, report.md, report.png
  eval     RUN_DIR [--last] [data=...]  per-class accuracy and confusion matrix: eval.json, confusion.png
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
"""

# Flags that Hydra's own argument parser takes, and which of them take a value.
_HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                           "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
_HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version",
                     "--shell-completion", "-sc"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _error(message: str, code: int = 2) -> int:
    print(f"regx: error: {message}", file=sys.stderr)
    return code


def _split_args(args: list[str]) -> tuple[list[str], bool, bool]:
    """(overrides, info_only, multirun) from `regx train` arguments."""
    overrides, info, multirun = [], False, False
    i = 0
    while i < len(args):
        a = args[i]
        if a in _HYDRA_INFO_FLAGS:
            info = True
        if a in ("-m", "--multirun"):
            multirun = True
        if a in _HYDRA_FLAGS_WITH_VALUE or (a in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in _INFO_VALUES):
            i += 2
            continue
        if not a.startswith("-"):
            overrides.append(a)
        i += 1
    return overrides, info, multirun


class _Jobs:
    count = 0
    failed: list[tuple[str, str]] = []
    resume = False  # regx sweep-resume: skip completed jobs, resume stopped ones


def _task(cfg) -> dict | None:
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from regx.runs import read_json
    from regx.train import RunFailed, train

    _Jobs.count += 1
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    _share_machine(cfg, hc)
    resume = False
    if _Jobs.resume:
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
        if summary.get("status") == "completed" and summary.get("epochs_done", 0) >= cfg.epochs:
            print(f"regx: {run_dir.name}: completed already, skipped")
            return summary
        resume = any((run_dir / "checkpoints" / f).is_file() for f in ("last.pt", "prev.pt", "best.pt"))
        print(f"regx: {run_dir.name}: " + (f"resuming ({summary.get('status', 'unknown')})" if resume else "starting"))
    optuna = "optuna" in str(hc.sweeper.get("_target_", "")).lower()
    try:
        summary = train(cfg, run_dir, resume=resume)
    except RunFailed as exc:  # recorded in the run's summary.json; the sweep goes on
        _Jobs.failed.append((str(run_dir), str(exc)))
        return float("nan") if optuna else None  # a NaN objective marks the trial failed
    return summary["best_val_acc"] if optuna else summary  # an optimizing sweeper needs the objective


def _share_machine(cfg, hc) -> None:
    """Parallel jobs on one machine (joblib launcher): split the cores between them so N jobs do not
    oversubscribe, and give CUDA jobs one visible GPU each, round robin."""
    import torch
    from omegaconf import open_dict

    target = str(hc.launcher.get("_target_", ""))
    if "joblib" not in target.lower():
        return
    n_jobs = hc.launcher.get("n_jobs", -1) or 1
    cores = os.cpu_count() or 1
    parallel = cores if n_jobs < 0 else min(n_jobs, cores)
    torch.set_num_threads(max(1, cores // max(1, parallel)))
    if cfg.device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        with open_dict(cfg):
            cfg.device = f"cuda:{hc.job.num % torch.cuda.device_count()}"


def _job_dirs(sweep: str):
    from pathlib import Path

    root = Path(sweep)
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / ".hydra").is_dir()) if root.is_dir() else []


def _failed_jobs(sweep: str) -> list[tuple[str, str]]:
    import json

    failed = []
    for job in _job_dirs(sweep):
        try:
            s = json.loads((job / "summary.json").read_text())
        except (OSError, ValueError):
            failed.append((str(job), "no summary.json: the job died before training"))
            continue
        if s.get("status") == "failed":
            failed.append((str(job), s.get("error") or "failed"))
    return failed


def _job_count(sweep: str) -> int:
    return len(_job_dirs(sweep))


def cmd_train(args: list[str]) -> int:
    from regx import config

    overrides, info_only, multirun = _split_args(args)
    multirun = multirun or any(o.startswith(("hparams_search=", "hydra.mode=MULTIRUN")) for o in overrides)
    config.register()
    if not info_only:
        try:
            config.preflight(overrides)
        except config.ConfigError as exc:
            if config.debug_enabled():
                raise
            return _error(str(exc))
    import hydra

    from regx import distributed

    if distributed.requested() and not info_only:
        if multirun:
            return _error("under torchrun regx trains one run; sweep DDP runs with a launcher instead")
        distributed.setup()
        args = list(args)
        if not any(a.startswith("hydra.run.dir=") for a in args):  # one run directory, picked by rank 0
            run_dir = None
            if distributed.is_main():
                run_dir = config._claim_dir("outputs/runs", str(config.compose(overrides).name))
            args.append(f"hydra.run.dir={distributed.broadcast(run_dir)}")
        if not distributed.is_main():
            args.append("hydra.output_subdir=null")  # rank 0 writes .hydra/
    main = hydra.main(config_path=str(config.conf_dir()), config_name="train", version_base="1.3")(_task)
    argv0 = sys.argv[0]
    sys.argv = ["regx train", *args]
    try:
        main()
    finally:
        sys.argv[0] = argv0
    if multirun:  # jobs may have run in other processes (joblib, submitit): their summaries say
        sweep = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")), config.last_claimed)
        _Jobs.failed = _failed_jobs(sweep) if sweep else _Jobs.failed
        _Jobs.count = max(_Jobs.count, _job_count(sweep) if sweep else 0)
    if not _Jobs.failed:
        return 0
    if multirun:
        print(f"regx: {len(_Jobs.failed)} of {_Jobs.count} jobs failed:", file=sys.stderr)
        for run_dir, message in _Jobs.failed:
            print(f"  {run_dir}: {message}", file=sys.stderr)
    else:
        print(f"regx: error: {_Jobs.failed[0][1]} (run dir {_Jobs.failed[0][0]})", file=sys.stderr)
    return 1


def cmd_sweep_resume(args: list[str]) -> int:
    """Run a sweep's command again into the same directory: job directories are named from their
    overrides, so each job finds its own; completed ones are skipped, stopped ones resumed."""
    from pathlib import Path

    from omegaconf import OmegaConf

    if len(args) != 1 or args[0].startswith("-"):
        return _error("usage: regx sweep-resume SWEEP_DIR")
    sweep = Path(args[0])
    if not (sweep / "multirun.yaml").is_file():
        return _error(f"{sweep} is not a regx sweep directory (no multirun.yaml)")
    recorded = OmegaConf.load(sweep / "multirun.yaml")
    overrides = [str(o) for o in OmegaConf.select(recorded, "hydra.overrides.task", default=[])]
    hydra_overrides = [str(o) for o in OmegaConf.select(recorded, "hydra.overrides.hydra", default=[])
                       if not str(o).startswith(("hydra.mode", "hydra.sweep.dir"))]
    _Jobs.resume = True
    try:
        return cmd_train(["-m", *overrides, *hydra_overrides, f"hydra.sweep.dir={sweep}"])
    finally:
        _Jobs.resume = False


def cmd_resume(args: list[str]) -> int:
    from pathlib import Path

    from omegaconf import OmegaConf

    from regx import config
    from regx.runs import read_json
    from regx.train import RunFailed, train

    force = "--force" in args
    args = [a for a in args if a != "--force"]
    if not args or args[0].startswith("-"):
        return _error("usage: regx resume RUN_DIR [key=value ...] [--force]")
    run_dir, overrides = Path(args[0]), args[1:]
    if not run_dir.is_dir():
        return _error(f"no such run directory: {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        return _error(f"{run_dir} is not a regx run directory (no config.yaml)")
    if not any((run_dir / "checkpoints" / f).is_file() for f in ("last.pt", "prev.pt", "best.pt")):
        return _error(f"{run_dir} has no checkpoint (it stopped before its first one): start it again with regx train")
    try:
        saved = OmegaConf.load(run_dir / "config.yaml")
        base = OmegaConf.merge(OmegaConf.structured(config.TrainConfig), saved)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise config.ConfigError(f"cannot parse override '{bad[0]}': expected key=value")
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
        config.validate(cfg)
    except config.ConfigError as exc:
        return _error(str(exc))
    except Exception as exc:
        return _error(config.explain(exc, overrides))
    changed = [k for k in config.flat_keys(cfg) if OmegaConf.select(cfg, k) != OmegaConf.select(base, k)
               and not isinstance(OmegaConf.select(cfg, k), dict | type(cfg))]
    frozen = [k for k in changed if k.split(".")[0] in ("data", "model", "seed", "batch_size", "optim", "decay", "dropout", "aug")]
    if frozen and not force:
        return _error(f"resuming with changed {', '.join(frozen)} would not continue the same run; pass --force to do it anyway")
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    if summary.get("status") == "completed" and summary.get("epochs_done", 0) >= cfg.epochs:
        print(f"regx: {run_dir} already completed {summary['epochs_done']} epochs; nothing to do "
              f"(pass epochs=N with N > {summary['epochs_done']} to train further)")
        return 0
    stopped = summary.get("stopped_early")
    if summary.get("status") == "completed" and stopped and cfg.early_stop.patience == base.early_stop.patience:
        print(f"regx: {run_dir} stopped early after epoch {stopped['epoch']} ({stopped['reason']}); nothing to do "
              "(pass early_stop.patience=0, or a larger patience, to train on)")
        return 0
    try:
        train(cfg, run_dir, resume=True)  # under torchrun: every rank, from the same checkpoint
    except RunFailed as exc:
        return _error(str(exc), 1)
    return 0


def _picture_args(args: list[str], what: str):
    """(cfg, out path) for show-aug and lr-plot, or an exit status for bad input."""
    from datetime import datetime
    from pathlib import Path

    from regx import config

    out = None
    if "--out" in args:
        i = args.index("--out")
        if i + 1 >= len(args):
            return _error("--out needs a file name"), None
        out = Path(args[i + 1])
        args = args[:i] + args[i + 2 :]
    try:
        config.preflight(args)
        cfg = config.compose(args)
    except config.ConfigError as exc:
        return _error(str(exc)), None
    if out is None:
        out = Path("outputs") / what / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{config._slug(','.join(args) or 'default')}.png"
    if out.suffix.lower() != ".png":
        return _error(f"--out {out}: the file name must end in .png"), None
    return cfg, out


def cmd_show_aug(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from regx.data import DataError, iterate, load_data
    from regx.report import pick_examples, save_aug_grid

    cfg, out = _picture_args(args, "show-aug")
    if out is None:
        return cfg
    try:
        data = load_data(**OmegaConf.to_container(cfg.data, resolve=True))
    except DataError as exc:
        return _error(str(exc), 1)
    examples = data.train.subset(pick_examples(data.train.y, 8))
    save_aug_grid(out, next(iterate(examples, 8))[0], cfg.aug, seed=cfg.seed)
    print(out)
    return 0


def cmd_lr_plot(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from regx.data import DataError, load_data
    from regx.report import lr_plot
    from regx.schedules import lr_schedule, steps_per_epoch

    cfg, out = _picture_args(args, "lr-plot")
    if out is None:
        return cfg
    try:  # the number of steps depends on the training split's size
        n_train = len(load_data(**OmegaConf.to_container(cfg.data, resolve=True)).train)
    except DataError as exc:
        return _error(str(exc), 1)
    steps = steps_per_epoch(n_train, cfg.batch_size)
    sched = OmegaConf.to_container(cfg.sched, resolve=True)
    lr_at = lr_schedule(sched, lr=cfg.lr, epochs=cfg.epochs, steps=steps)
    title = f"sched={sched['name']} lr={cfg.lr:g} epochs={cfg.epochs} ({steps} steps/epoch)"
    if sched["name"] == "plateau":
        title += ": plateau cuts depend on validation loss and are not shown"
    lr_plot(out, [lr_at(s) for s in range(steps * cfg.epochs)], steps, title)
    print(out)
    return 0


def cmd_plot(args: list[str]) -> int:
    from pathlib import Path

    from regx.report import curves_plot
    from regx.runs import read_json, read_metrics

    if len(args) != 1 or args[0].startswith("-"):
        return _error("usage: regx plot RUN_DIR")
    metrics = Path(args[0]) / "metrics.csv"
    if not metrics.is_file():
        return _error(f"{metrics} not found: not a regx run directory, or no epoch has finished yet")
    try:
        rows = read_metrics(metrics)
        run = Path(args[0])
        name = read_json(run / "summary.json").get("name", "") if (run / "summary.json").is_file() else ""
        print(curves_plot(run / "curves.png", rows, f"{name}: {run.resolve().name}"))
    except (KeyError, ValueError) as exc:
        return _error(f"{metrics} is not a regx metrics file ({exc})")
    return 0


def _options(args: list[str], names: tuple[str, ...], flags: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """Pull `--name VALUE` / `--name=VALUE` options and bare flags out of args; raise ValueError on misuse."""
    opts, rest, i = {}, [], 0
    while i < len(args):
        a = args[i]
        name, _, inline = a.partition("=")
        if name in names:
            if inline:
                opts[name] = inline
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                opts[name] = args[i + 1]
                i += 1
            else:
                raise ValueError(f"{name} needs a value")
        elif a in flags:
            opts[a] = True
        elif a.startswith("--"):
            raise ValueError(f"unknown option {a}")
        else:
            rest.append(a)
        i += 1
    return opts, rest


REPORT_USAGE = "usage: regx report DIR|GLOB ... [--sort COLUMN] [--group-by KEY[,KEY]] [--metric COLUMN] [--out DIR]"


def cmd_report(args: list[str]) -> int:
    from datetime import datetime
    from pathlib import Path

    from regx import report
    from regx.console import console

    if not args or args[0] in ("-h", "--help"):
        print(REPORT_USAGE)
        return 0 if args else 2
    try:
        opts, paths = _options(args, ("--sort", "--group-by", "--metric", "--out"))
        if not paths:
            raise ValueError("name at least one run or sweep directory")
        runs = report.find_runs(paths)
        records = [report.run_record(r) for r in runs]
    except (ValueError, report.ReportError) as exc:
        return _error(f"{exc}\n{REPORT_USAGE}" if "needs a value" in str(exc) or "unknown option" in str(exc) else str(exc))
    keys = report.varying_keys(records)
    group_by = [k for k in opts.get("--group-by", "").split(",") if k] or None
    metric = opts.get("--metric", "best_val")
    sort = opts.get("--sort")
    sortable = ["run", *report.COLUMNS, *keys]
    if metric not in report.METRICS:
        return _error(f"--metric {metric}: must be one of {', '.join(report.METRICS)}")
    if sort is not None and sort not in sortable:
        return _error(f"--sort {sort}: must be one of {', '.join(sortable)}")
    for key in group_by or []:
        if all(report._value(r, key) == "-" for r in records):
            return _error(f"--group-by {key}: no run has this key (varying keys: {', '.join(keys) or 'none'})")
    if sort:
        records = report.sort_records(records, sort)
    if "--out" in opts:
        out = Path(opts["--out"])
    elif len(paths) == 1 and Path(paths[0]).is_dir() and not report._is_run(Path(paths[0])):
        out = Path(paths[0])
    elif len({Path(r["path"]).parent for r in records}) == 1 and (Path(records[0]["path"]).parent / "multirun.yaml").is_file():
        out = Path(records[0]["path"]).parent
    else:
        out = Path("outputs") / "reports" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    title = f"{len(records)} run{'s' * (len(records) != 1)}" + (f", grouped by {','.join(group_by)}" if group_by else "")
    header, shown, raw = report.report_table(records, keys, group_by)

    from rich.table import Table

    table = Table(title=f"regx report: {title}", caption="accuracies and gap in %; " + (
        "mean ± sample std over each group's completed runs" if group_by else "gap: clean train minus val"))
    for h in header:
        table.add_column(h, overflow="fold", justify="right" if h in report.METRICS else "left")
    for row in shown:
        table.add_row(*row)
    console().print(table)
    if group_by:
        averaged = [k for k in keys if k not in group_by]
        print(f"averaged over: {', '.join(averaged) or 'nothing (each group is one run)'}")
    for r in records:
        if r["status"] != "completed":
            print(f"{r['status']}: {r['path']}{': ' + r['error'] if r['error'] else ''}")
    files = report.write_report(out, header, shown, raw, records, keys, metric, group_by, title)
    print(f"wrote {', '.join(f.name for f in files)} in {out}")
    return 0


def cmd_eval(args: list[str]) -> int:
    from pathlib import Path

    from regx.config import ConfigError
    from regx.data import DataError
    from regx.evalrun import EvalError, eval_run

    usage = "usage: regx eval RUN_DIR [--last] [--out DIR] [data=OPTION] [data.KEY=VALUE ...]"
    try:
        opts, rest = _options(args, ("--out",), ("--last",))
    except ValueError as exc:
        return _error(f"{exc}\n{usage}")
    if not rest:
        return _error(usage)
    try:
        eval_run(Path(rest[0]), rest[1:], last=bool(opts.get("--last")), out=opts.get("--out"))
    except (EvalError, ConfigError) as exc:
        return _error(str(exc))
    except DataError as exc:
        return _error(str(exc), 1)
    return 0


def cmd_check_data(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from regx import config
    from regx.data import DataError, check_data

    try:
        config.preflight(args)
        cfg = config.compose(args)
    except config.ConfigError as exc:
        return _error(str(exc))
    try:
        lines, bad = check_data(**OmegaConf.to_container(cfg.data, resolve=True))
    except DataError as exc:
        return _error(str(exc), 1)
    print("\n".join(lines))
    for path in bad:
        print(f"unreadable: {path}")
    if bad:
        print(f"regx: {len(bad)} unreadable image(s); fix or remove them, or train with data.on_bad_image=skip",
              file=sys.stderr)
        return 1
    print("ok: every image decodes")
    return 0


COMMANDS = {"train": cmd_train, "resume": cmd_resume, "show-aug": cmd_show_aug, "lr-plot": cmd_lr_plot,
            "plot": cmd_plot, "report": cmd_report, "eval": cmd_eval,
            "check-data": cmd_check_data, "sweep-resume": cmd_sweep_resume}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-V", "--version"):
        from regx import __version__

        print(f"regx {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        import difflib

        close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return _error(f"unknown command '{args[0]}'{hint} (commands: {', '.join(COMMANDS)})")
    try:
        return command(args[1:])
    except KeyboardInterrupt as exc:  # Interrupted carries 143 for SIGTERM
        print("regx: interrupted", file=sys.stderr)
        return getattr(exc, "code", 130)
    except Exception as exc:
        if os.environ.get("REGX_DEBUG", "") not in ("", "0"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _error(f"{type(exc).__name__}: {first}", 1)

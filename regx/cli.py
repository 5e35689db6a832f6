"""`regx <command>`: a dispatcher that imports nothing heavy until a command runs."""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: regx <command> [args]

commands:
  train   [overrides]             train one run; -m for a sweep (regx train --help lists the groups)
  resume  RUN_DIR [key=value]     continue a run from its last checkpoint (e.g. epochs=20)
  show-aug [overrides] [--out F]  a PNG grid: originals, then rows of augmented copies
  lr-plot  [overrides] [--out F]  a PNG of the learning rate over the whole run
  plot     RUN_DIR                redraw RUN_DIR/curves.png from its metrics.csv

examples:
  regx train                                   the default experiment on the embedded shapes data
  regx train aug=flip_rotate wd=1e-4           a technique or two
  regx train -m aug=none,flip_rotate wd=0,1e-4 a sweep: four runs under outputs/sweeps/
  regx train debug=smoke                       a seconds-long CPU run
  regx resume outputs/runs/<run> epochs=20
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


def _task(cfg) -> dict | None:
    from hydra.core.hydra_config import HydraConfig

    from regx.train import RunFailed, train

    _Jobs.count += 1
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        return train(cfg, run_dir)
    except RunFailed as exc:  # recorded in the run's summary.json; the sweep goes on
        _Jobs.failed.append((run_dir, str(exc)))
        return None


def cmd_train(args: list[str]) -> int:
    from regx import config

    overrides, info_only, multirun = _split_args(args)
    config.register()
    if not info_only:
        try:
            config.preflight(overrides)
        except config.ConfigError as exc:
            if config.debug_enabled():
                raise
            return _error(str(exc))
    import hydra

    main = hydra.main(config_path=str(config.conf_dir()), config_name="train", version_base="1.3")(_task)
    argv0 = sys.argv[0]
    sys.argv = ["regx train", *args]
    try:
        main()
    finally:
        sys.argv[0] = argv0
    if not _Jobs.failed:
        return 0
    if multirun:
        print(f"regx: {len(_Jobs.failed)} of {_Jobs.count} jobs failed:", file=sys.stderr)
        for run_dir, message in _Jobs.failed:
            print(f"  {run_dir}: {message}", file=sys.stderr)
    else:
        print(f"regx: error: {_Jobs.failed[0][1]} (run dir {_Jobs.failed[0][0]})", file=sys.stderr)
    return 1


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
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return _error(f"{run_dir} has no checkpoint (it stopped during its first epoch): start it again with regx train")
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
    try:
        train(cfg, run_dir, resume=True)
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


COMMANDS = {"train": cmd_train, "resume": cmd_resume, "show-aug": cmd_show_aug, "lr-plot": cmd_lr_plot,
            "plot": cmd_plot}


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
    except KeyboardInterrupt:
        print("regx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("REGX_DEBUG", "") not in ("", "0"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _error(f"{type(exc).__name__}: {first}", 1)

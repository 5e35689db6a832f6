"""Resuming a run: `regx resume RUN_DIR [key=value ...]` checks the saved config with the overrides, then
continues the run from its newest intact checkpoint."""

from __future__ import annotations

from pathlib import Path

from regx.files import DamagedFile, Interpolated, read_config, read_json, read_summary

# Top-level keys that decide what a run is: resuming with one of them changed would not continue it.
RESUME_FIXED = ("data", "model", "seed", "batch_size", "optim", "decay", "dropout", "aug", "tta")


class NothingToDo(Exception):
    """The run has finished what its config asks for; the message says how to ask for more."""


def resume_config(run_dir: Path, overrides: list[str], *, force: bool = False):
    """The saved config with `overrides` applied, checked; ConfigError (one line) for bad input,
    NothingToDo when the run already did what the config asks."""
    from omegaconf import OmegaConf

    from regx import config
    from regx.errors import check, explain

    run_dir = Path(run_dir)
    saved = _saved_config(run_dir, overrides)
    try:
        base = OmegaConf.merge(OmegaConf.structured(config.TrainConfig), saved)
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise config.ConfigError(explain(exc, overrides)) from exc
    check(cfg)
    changed = [
        k
        for k in config.flat_keys(cfg)
        if OmegaConf.select(cfg, k) != OmegaConf.select(base, k) and not OmegaConf.is_dict(OmegaConf.select(cfg, k))
    ]
    fixed = [k for k in changed if k.split(".")[0] in RESUME_FIXED]
    if fixed and not force:
        raise config.ConfigError(
            f"resuming with changed {', '.join(fixed)} would not continue the same run; pass --force to do it anyway"
        )
    _refuse_done(run_dir, base, cfg)
    return cfg


def _saved_config(run_dir: Path, overrides: list[str]):
    """A run directory's config.yaml as this regx reads it (older runs' keys brought up to date), after
    checking that `run_dir` is a run and `overrides` parse; ConfigError otherwise."""
    from regx import config

    if not run_dir.is_dir():
        raise config.ConfigError(f"no such run directory: {run_dir}")
    if (run_dir / "multirun.yaml").is_file():
        raise config.ConfigError(f"{run_dir} is a sweep directory: finish it with regx sweep-resume {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise config.ConfigError(f"{run_dir} is not a regx run directory (no config.yaml)")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise config.ConfigError(f"cannot parse override '{bad[0]}': expected key=value")
    try:
        saved = read_config(run_dir)
    except Interpolated as exc:
        raise config.ConfigError(str(exc)) from None
    except DamagedFile as exc:
        raise config.ConfigError(
            f"{exc}; the checkpoints still hold the run: repair the file or copy it from .hydra/config.yaml"
        ) from None
    if saved.get("data", {}).get("name") != "shapes" and saved.get("data", {}).get("channels") == 3:
        saved.data.channels = None  # before data.channels was shapes' alone, every run recorded its default 3
    if isinstance(saved.get("logger"), str):  # before the logger group (regx 0.1 runs): logger: none|tensorboard
        saved.logger = {"tensorboard": saved.logger == "tensorboard"}
    return saved


def _refuse_done(run_dir: Path, base, cfg) -> None:
    """ConfigError for epochs below those trained; NothingToDo where the run already completed them or
    stopped early and the patience is unchanged (`base`: its saved config, `cfg`: with the overrides)."""
    from regx import config

    try:
        summary = read_summary(run_dir)
    except DamagedFile:
        summary = {}  # train() rebuilds it from the newest checkpoint
    done = _epochs_done(run_dir, summary)
    if cfg.epochs < done:
        raise config.ConfigError(
            f"epochs={cfg.epochs} is below the {done} epochs {run_dir} has trained already; "
            f"a resume only trains further (epochs > {done})"
        )
    if summary.get("status") == "completed" and summary.get("epochs_done", 0) >= cfg.epochs:
        raise NothingToDo(
            f"{run_dir} already completed {summary['epochs_done']} epochs; nothing to do "
            f"(pass epochs=N with N > {summary['epochs_done']} to train further)"
        )
    _refuse_epochs_at_zero(run_dir, base, cfg)
    stopped = summary.get("stopped_early")
    if summary.get("status") == "completed" and stopped and cfg.early_stop.patience == base.early_stop.patience:
        raise NothingToDo(
            f"{run_dir} stopped early after epoch {stopped['epoch']} ({stopped['reason']}); nothing to do "
            "(pass early_stop.patience=0, or a larger patience, to train on)"
        )


def _refuse_epochs_at_zero(run_dir: Path, base, cfg) -> None:
    """More epochs than the run's schedule spans go on at the rate it ended with: refused when that rate is
    (nearly) zero, where they would train nothing (a finished cosine or linear schedule)."""
    from omegaconf import OmegaConf

    from regx import config
    from regx.schedules import lr_schedule

    if cfg.epochs <= base.epochs or cfg.sched.restart:
        return
    steps = 100  # the rate at the schedule's end does not depend on the steps per epoch
    container = OmegaConf.to_container
    schedule = lr_schedule(
        container(base.sched), lr=base.lr, epochs=base.epochs, steps=steps, average=container(base.average)
    )
    final = schedule(base.epochs * steps)  # as train's _continue_schedule computes it (SWA's rate included)
    if final < 1e-3 * base.lr:
        raise config.ConfigError(
            f"epochs={cfg.epochs}: the {base.sched.name} schedule of {run_dir} ended at lr {final:.3g} after epoch "
            f"{base.epochs}, and epochs past it would train at that rate, moving nothing; for a new cycle over the "
            f"added epochs: regx resume {run_dir} epochs={cfg.epochs} sched.restart=true"
        )


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
    try:
        recorded = read_summary(run_dir).get("overrides")
    except DamagedFile:
        recorded = None  # train() rebuilds the summary from the checkpoint
    given = {o.split("=", 1)[0] for o in overrides}
    merged = None if recorded is None else [*(o for o in recorded if o.split("=", 1)[0] not in given), *overrides]
    started = any((Path(run_dir) / "checkpoints" / f).is_file() for f in ("last.pt", "prev.pt", "best.pt"))
    if not started:  # stopped before its first checkpoint: its config is all there is, so start it again
        print(f"regx: {run_dir} stopped before its first checkpoint: starting it again from the beginning")
    return train.train(cfg, Path(run_dir), resume=started, hooks=hooks, overrides=merged)

"""Experiment trackers (`logger=...`): TensorBoard, MLflow and Weights & Biases behind one interface.

The Recorder calls each tracker at three moments:

    start(history)        once the run is built: catch up on finished epochs the tracker lacks (a resume)
    epoch(row)            after each epoch's checkpoint: metrics.csv's row
    finish(summary)       however the run ended: final figures, tags, artifacts, the tracker's end

A tracker that fails (an unreachable server, a full disk, a missing package) is one warning line;
the run goes on without it and summary.json's `loggers` records the failure. A tracker's run is
continued by `regx resume`: its id is kept in the run directory's tracking.json. A sweep's jobs are
grouped: nested under one MLflow parent run, in one W&B group (the sweep directory's name).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from regx.files import METRIC_COLUMNS, DamagedFile, read_json, read_overrides, write_json

TRACKING = "tracking.json"  # in a run directory: the trackers' run ids; in a sweep directory: the parent's
FINAL = (
    "best_val_acc",
    "best_epoch",
    "final_train_acc",
    "final_clean_train_acc",
    "final_val_acc",
    "test_acc",
    "test_loss",
    "mc_test_acc",
    "epochs_done",
    "wall_s",
)
ARTIFACTS = ("curves.png", "aug_preview.png", "config.yaml", "summary.json")


def numeric_row(row: dict) -> dict[str, float]:
    """metrics.csv's numeric columns of a row (the `trainable` label aside), as floats."""
    out = {}
    for key in METRIC_COLUMNS:
        value = row.get(key)
        if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys and string values (lists as their YAML)."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = str(value)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def sweep_of(run_dir: Path) -> Path | None:
    """The sweep directory a run directory is a job of, if it is one."""
    return run_dir.parent if (run_dir.parent / "multirun.yaml").is_file() else None


def _ids(directory: Path) -> dict:
    try:
        return read_json(directory / TRACKING)
    except (OSError, ValueError):
        return {}


def _keep_id(directory: Path, tracker: str, value: dict) -> None:
    write_json(directory / TRACKING, {**_ids(directory), tracker: value})


class Guarded:
    """A tracker whose failures are one warning: after the first, it is left out for the rest of the run.
    `status` is what summary.json's `loggers` says of it."""

    def __init__(self, name: str, make, log):
        self.name, self.log, self.tracker, self.status = name, log, None, "ok"
        self._call(make, setup=True)

    def _call(self, fn, *args, setup: bool = False):
        if self.status != "ok":
            return
        try:
            result = fn(*args)
            if setup:
                self.tracker = result
        except Exception as exc:  # noqa: BLE001 - a tracker never fails the run
            first = " ".join(str(exc).split())[:300] or type(exc).__name__
            self.status = f"failed: {first}"
            self.log.warning("logger=%s failed (%s); the run goes on without it", self.name, first)

    def start(self, history: list[dict]) -> None:
        self._call(lambda: self.tracker.start(history))

    def epoch(self, row: dict) -> None:
        self._call(lambda: self.tracker.epoch(row))

    def finish(self, summary: dict) -> None:
        self._call(lambda: self.tracker.finish(summary))


def make_trackers(cfg: DictConfig, run_dir: Path, first_epoch: int, log) -> list[Guarded]:
    """The trackers `cfg.logger` asks for, each guarded."""
    lc, out = cfg.logger, []
    if lc.tensorboard:
        out.append(Guarded("tensorboard", lambda: _tensorboard(cfg, run_dir, first_epoch), log))
    if lc.mlflow:
        out.append(Guarded("mlflow", lambda: MLflowTracker(cfg, run_dir), log))
    if lc.wandb:
        out.append(Guarded("wandb", lambda: WandbTracker(cfg, run_dir), log))
    return out


def _tensorboard(cfg: DictConfig, run_dir: Path, first_epoch: int):
    from regx.tblog import TensorBoardLogger, hparams_of

    try:
        overrides = read_overrides(run_dir)
    except DamagedFile:
        overrides = []
    tb = TensorBoardLogger(run_dir, hparams_of(cfg, overrides), first_epoch=first_epoch)
    if (run_dir / "aug_preview.png").is_file():
        tb.image("augmentation", run_dir / "aug_preview.png")
    return tb


# ---------------------------------------------------------------------------------------------
# MLflow


def default_outputs() -> Path:
    """Where the embedded stores go: outputs/ under the directory regx was started from."""
    return Path.cwd() / "outputs"


class MLflowTracker:
    """One MLflow run per regx run, in the experiment named by logger.experiment (default: the run's
    name), nested under the sweep's parent run for a sweep job; continued on resume."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server: fail fast
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import logging

        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        lc = cfg.logger
        embedded = lc.tracking_uri is None
        outputs = default_outputs()
        if embedded:
            outputs.mkdir(parents=True, exist_ok=True)
        self.uri = lc.tracking_uri or f"sqlite:///{outputs / 'mlflow.db'}"
        self.client, self.run_dir, self.cfg = MlflowClient(tracking_uri=self.uri), run_dir, cfg
        name = lc.experiment or str(cfg.name)
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            exp.experiment_id
            if exp is not None
            else self.client.create_experiment(
                name, artifact_location=(outputs / "mlartifacts").as_uri() if embedded else None
            )
        )
        saved = _ids(run_dir).get("mlflow", {})
        if saved.get("tracking_uri") == self.uri and saved.get("run_id"):
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {"regx.run_dir": str(run_dir.resolve())}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        sweep = sweep_of(run_dir)
        if sweep is not None:
            tags["mlflow.parentRunId"] = self._parent(sweep)
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        _keep_id(
            run_dir, "mlflow", {"run_id": self.run_id, "tracking_uri": self.uri, "experiment_id": self.experiment_id}
        )

    def _parent(self, sweep: Path) -> str:
        """The sweep's parent run, made by the first job to get here (jobs may run in parallel)."""
        import fcntl

        with open(sweep / ".tracking.lock", "a") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            saved = _ids(sweep).get("mlflow", {})
            if saved.get("tracking_uri") == self.uri and saved.get("experiment_id") == self.experiment_id:
                return saved["run_id"]
            parent = self.client.create_run(
                self.experiment_id, run_name=sweep.name, tags={"regx.sweep_dir": str(sweep.resolve())}
            )
            _keep_id(
                sweep,
                "mlflow",
                {"run_id": parent.info.run_id, "tracking_uri": self.uri, "experiment_id": self.experiment_id},
            )
            return parent.info.run_id

    def _logged_epochs(self) -> int:
        history = self.client.get_metric_history(self.run_id, "val_acc")
        return max((m.step for m in history), default=0)

    def start(self, history: list[dict]) -> None:
        done = self._logged_epochs()
        for row in history:
            if int(row["epoch"]) > done:
                self.epoch(row)

    def epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numeric_row(row).items()])

    def finish(self, summary: dict) -> None:
        from mlflow.entities import Metric, RunTag

        now, step = int(time.time() * 1000), int(summary.get("epochs_done") or 0)
        metrics = [
            Metric(f"final/{k}", float(summary[k]), now, step) for k in FINAL if isinstance(summary.get(k), int | float)
        ]
        tags = [RunTag("verdict", str(summary.get("verdict", "-"))), RunTag("status", str(summary.get("status")))]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        best = self.run_dir / "checkpoints" / "best.pt"
        if self.cfg.logger.log_model and best.is_file():
            self.client.log_artifact(self.run_id, str(best), artifact_path="checkpoints")
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(summary.get("status"), "FAILED")
        self.client.set_terminated(self.run_id, status=status)


def end_sweep(sweep_dir: Path, failed: bool) -> None:
    """After a sweep's last job: end its MLflow parent run (if it has one)."""
    saved = _ids(Path(sweep_dir)).get("mlflow")
    if not saved:
        return
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=saved["tracking_uri"]).set_terminated(
            saved["run_id"], status="FAILED" if failed else "FINISHED"
        )
    except Exception:  # noqa: BLE001 - the jobs' own runs are complete; the parent's end is cosmetic
        pass


# ---------------------------------------------------------------------------------------------
# Weights & Biases


class WandbTracker:
    """One W&B run per regx run, in project logger.experiment (default regx), grouped by sweep; the
    same run id on resume. logger.mode=offline writes under outputs/wandb with no network."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        import wandb

        self.run_dir, self.cfg = run_dir, cfg
        saved = _ids(run_dir).get("wandb", {})
        run_id = saved.get("run_id") or secrets.token_hex(4)  # W&B's own ids: 8 characters of [0-9a-z]
        outputs = default_outputs()
        outputs.mkdir(parents=True, exist_ok=True)
        sweep = sweep_of(run_dir)
        self.run = wandb.init(
            project=cfg.logger.experiment or "regx",
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(outputs),
            mode=cfg.logger.mode,
            config=flat_params(cfg),
            group=sweep.name if sweep is not None else None,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.logged = int(saved.get("logged_epochs", 0))
        _keep_id(run_dir, "wandb", {"run_id": run_id, "logged_epochs": self.logged})

    def start(self, history: list[dict]) -> None:
        for row in history:
            if int(row["epoch"]) > self.logged:
                self.epoch(row)

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        self.run.log({**numeric_row(row), "epoch": step}, step=step)
        self.logged = step
        _keep_id(self.run_dir, "wandb", {"run_id": self.run.id, "logged_epochs": step})

    def finish(self, summary: dict) -> None:
        import wandb

        self.run.summary.update({f"final/{k}": summary[k] for k in FINAL if isinstance(summary.get(k), int | float)})
        self.run.summary.update({"verdict": str(summary.get("verdict", "-")), "status": str(summary.get("status"))})
        files = Path(self.run.dir) / self.run_dir.name  # files/<run name>/: W&B keeps its own config.yaml in files/
        files.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:  # what is in the run's files directory is uploaded with it (now, or by `wandb sync`)
            if (self.run_dir / name).is_file():
                shutil.copy2(self.run_dir / name, files / name)
        best = self.run_dir / "checkpoints" / "best.pt"
        if self.cfg.logger.log_model and best.is_file():
            art = wandb.Artifact(f"model-{self.run.id}", type="model")
            art.add_file(str(best))
            self.run.log_artifact(art)
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)


def status_of(trackers: list[Guarded]) -> dict[str, str]:
    return {t.name: t.status for t in trackers}

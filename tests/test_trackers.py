"""Experiment trackers on their embedded stores: MLflow's SQLite store queried with MlflowClient, and
a W&B offline run directory read record by record. Skipped where an extra is not installed."""

import json
import struct
from pathlib import Path

import pytest

from regx.train import Interrupted, train
from tests.conftest import run_regx, smoke_cfg
from tests.fault_main import Fault

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "gap", "lr", "clean_train_acc")


def summary(run):
    return json.loads((run / "summary.json").read_text())


@pytest.fixture
def mlflow_client(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the embedded store is outputs/mlflow.db where regx starts
    return lambda: MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")


def only_run(client, experiment="smallcnn_shapes", parent=False):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if ("mlflow.parentRunId" in r.data.tags) != parent or not parent]


def steps(client, run_id, metric):
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_mlflow_holds_params_every_epoch_once_final_metrics_tags_and_artifacts(tmp_path, mlflow_client):
    run = tmp_path / "run"
    train(smoke_cfg("epochs=2", "logger=mlflow", "logger.log_model=true", "pictures=true"), run)
    client = mlflow_client()
    (r,) = client.search_runs([client.get_experiment_by_name("smallcnn_shapes").experiment_id])
    assert r.info.run_id == json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    assert r.info.status == "FINISHED" and r.info.run_name == "run"
    assert r.data.params["lr"] == "0.05" and r.data.params["aug.name"] == "none" and r.data.params["epochs"] == "2"
    for metric in METRICS:
        assert steps(client, r.info.run_id, metric) == [1, 2], metric
    s = summary(run)
    assert r.data.metrics["final/test_acc"] == pytest.approx(s["test_acc"])
    assert r.data.tags["verdict"] == s["verdict"] and r.data.tags["status"] == "completed"
    assert r.data.tags["regx.run_dir"] == str(run.resolve())
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"curves.png", "aug_preview.png", "config.yaml", "summary.json", "checkpoints"} <= names
    assert s["loggers"] == {"mlflow": "ok"}
    assert (tmp_path / "outputs" / "mlartifacts").is_dir()


@pytest.mark.slow  # a killed subprocess and a resume (8 s); make test-all runs it
def test_mlflow_continues_the_same_run_after_a_kill_with_no_duplicate_step(tmp_path, mlflow_client, cli):
    args = [
        "train",
        "debug=smoke",
        "epochs=3",
        "checkpoint.every_steps=2",
        "logger=mlflow",
        f"hydra.run.dir={tmp_path / 'k'}",
    ]
    assert run_regx(args, tmp_path, fault="kill@9").returncode == -9  # mid epoch 2
    res = cli("resume", str(tmp_path / "k"))
    assert res.returncode == 0, res.stderr
    client = mlflow_client()
    (r,) = client.search_runs([client.get_experiment_by_name("smallcnn_shapes").experiment_id])
    assert r.info.status == "FINISHED"
    for metric in METRICS:
        assert steps(client, r.info.run_id, metric) == [1, 2, 3], metric


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_a_sweep_is_one_parent_run_with_its_jobs_nested(tmp_path, mlflow_client, cli):
    res = cli("train", "-m", "debug=smoke", "epochs=1", "seed=0,1", "logger=mlflow")
    assert res.returncode == 0, res.stderr
    client = mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("smallcnn_shapes").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED" and {c.data.params["seed"] for c in children} == {"0", "1"}


def test_an_unreachable_tracker_is_one_warning_and_the_run_goes_on(tmp_path, mlflow_client, cli):
    res = cli(
        "train",
        "debug=smoke",
        "epochs=2",
        "logger=[mlflow]",
        "logger.tracking_uri=http://127.0.0.1:9",
        "hydra.run.dir=r",
    )
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stdout.splitlines() if "logger=mlflow failed" in line]
    assert len(warnings) == 1 and "the run goes on without it" in warnings[0]
    s = summary(tmp_path / "r")
    assert s["status"] == "completed" and s["loggers"]["mlflow"].startswith("failed: ")


# ---------------------------------------------------------------------------------------------
# W&B, offline


def wandb_records(path: Path):
    """The records of a W&B run file (a LevelDB-style log: 32 KiB blocks of CRC, length, type, data)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last part
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def wandb_history(outputs: Path, run_id: str) -> list[dict]:
    rows = []
    # a resume in the same second as the run gets the directory name with a -1 suffix
    for f in sorted(outputs.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb")):
        for rec in wandb_records(f):
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
                )
    return rows


def test_wandb_offline_holds_the_history_and_resume_continues_the_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "w"
    cfg = smoke_cfg("epochs=3", "logger=wandb", "logger.mode=offline", "pictures=true")
    with pytest.raises(Interrupted):
        train(cfg, run, hooks=[Fault("term@9")])  # stopped in epoch 2
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]["run_id"]
    first = wandb_history(tmp_path / "outputs", run_id)
    assert [r.get("epoch") for r in first] == [1], first
    train(cfg, run, resume=True)
    history = wandb_history(tmp_path / "outputs", run_id)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(set(METRICS) <= r.keys() for r in history)
    assert summary(run)["loggers"] == {"wandb": "ok"}
    assert any(
        (d / "files" / "w" / "curves.png").is_file()
        for d in (tmp_path / "outputs" / "wandb").glob(f"offline-run-*-{run_id}*")
    )


@pytest.mark.slow  # 3.5 s; each tracker has its own fast test above
def test_several_trackers_at_once(tmp_path, mlflow_client):
    pytest.importorskip("tensorboard")
    run = tmp_path / "both"
    train(smoke_cfg("epochs=1", "logger=[tensorboard,mlflow]"), run)
    assert summary(run)["loggers"] == {"tensorboard": "ok", "mlflow": "ok"}
    assert list((run / "tensorboard").glob("events.*"))
    client = mlflow_client()
    assert len(client.search_runs([client.get_experiment_by_name("smallcnn_shapes").experiment_id])) == 1

"""One owner per run directory, and stop signals that reach every process of a run or a sweep.

Each test here runs real processes: a run kept alive by tests/fault_main.py's `wait` fault while a
second process tries to take its directory, a group SIGTERM to a run whose DataLoader workers
decode a streamed folder, and a SIGTERM to a joblib sweep's parent.
"""

import importlib.util
import json
import os
import platform
import signal
import time

import pytest

from regx import checkpoint
from regx.files import RunBusy, owner, read_metrics
from tests.conftest import run_regx, start_regx, write_images


def summary(run):
    return json.loads((run / "summary.json").read_text())


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("waited too long")
        time.sleep(0.02)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # 7.6 s of subprocesses; test_the_lock_is_per_directory_and_released_on_exit is its fast relative
def test_a_live_run_keeps_its_directory_from_a_second_owner(tmp_path, cli):
    run = tmp_path / "run"
    live = start_regx(
        ["train", "debug=smoke", "epochs=2", "checkpoint.every_steps=1", f"hydra.run.dir={run}"],
        tmp_path,
        fault="wait@3",
    )
    try:
        wait_for(lambda: (tmp_path / "waiting").exists())
        stray = run / "checkpoints" / ".last.pt.tmp-999999"  # what a killed writer leaves; the owner's to clean
        stray.write_bytes(b"x")
        before = sorted(p.name for p in run.rglob("*"))
        for attempt in (["resume", str(run)], ["resume", str(run), "epochs=4", "sched.restart=true"]):
            res = cli(*attempt)
            assert res.returncode == 1, res.stderr
            line = res.stderr.strip()
            assert "\n" not in line and f"in use by pid {live.pid} on {platform.node()}" in line
        assert sorted(p.name for p in run.rglob("*")) == before  # nothing removed, nothing written
        (tmp_path / "go").touch()
        assert live.wait(timeout=120) == 0, (tmp_path / "out.txt").read_text()
    finally:
        live.kill()
    s = summary(run)
    assert s["status"] == "completed" and s["epochs_done"] == 2 and s["pid"] == live.pid
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == ["1", "2"]
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/2") == 1 and log.count("epoch 2/2") == 1
    res = cli("resume", str(run))  # the owner is gone: the lock went with it
    assert res.returncode == 0 and "nothing to do" in res.stdout


def test_the_lock_is_per_directory_and_released_on_exit(tmp_path):
    with owner(tmp_path / "a"):
        with pytest.raises(RunBusy, match="in use by this process"):
            with owner(tmp_path / "a"):
                pass
        with owner(tmp_path / "b"):  # another directory: another owner
            pass
    with owner(tmp_path / "a"):  # released
        pass


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_a_group_sigterm_stops_a_streaming_run_with_a_checkpoint(tmp_path, cli):
    """SLURM, docker and systemd signal the whole group: the DataLoader workers must leave the stop
    to the main process (on main before this, they died and the run failed with no checkpoint)."""
    root = tmp_path / "imgs"
    write_images(root, per_class=12)
    run = tmp_path / "run"
    args = [
        "train",
        "debug=smoke",
        "data=imagefolder",
        f"data.path={root}",
        "data.image_size=16",
        "data.stream=true",
        "data.workers=2",
        "batch_size=8",
        "epochs=3",
        f"hydra.run.dir={run}",
    ]
    stopped = run_regx(args, tmp_path, fault="termgroup@5", new_session=True)
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    assert summary(run)["status"] == "interrupted"
    checkpoint.verify(run / "checkpoints" / "last.pt")
    res = cli("resume", str(run))
    assert res.returncode == 0, res.stderr
    assert summary(run)["status"] == "completed"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="needs hydra-joblib-launcher (pip install 'regx[sweeps]')",
)
def test_sigterm_to_a_joblib_sweep_stops_every_job_and_sweep_resume_finishes_them(tmp_path, cli):
    sweeps = tmp_path / "outputs" / "sweeps"
    parent = start_regx(
        ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke", "epochs=12", "seed=0,1,2"],
        tmp_path,
    )
    try:

        def running():
            jobs = [j for j in sweeps.glob("*/*") if (j / "checkpoints" / "last.pt").is_file()]
            return len(jobs) >= 2

        wait_for(running)
        os.kill(parent.pid, signal.SIGTERM)
        assert parent.wait(timeout=120) == 143
    finally:
        parent.kill()
    out = (tmp_path / "out.txt").read_text()
    (sweep,) = sweeps.iterdir()
    assert f"finish it with: regx sweep-resume {sweep.relative_to(tmp_path)}" in out
    wait_for(lambda: not group_alive(parent.pid), timeout=15)  # no job process is left training as an orphan
    statuses = {j.name: summary(j)["status"] for j in sweep.iterdir() if (j / "summary.json").is_file()}
    assert list(statuses.values()).count("interrupted") >= 2 and "running" not in statuses.values()
    res = cli("sweep-resume", str(sweep))
    assert res.returncode == 0, res.stderr
    jobs = [j for j in sweep.iterdir() if j.is_dir()]
    assert len(jobs) == 3 and all(summary(j)["status"] == "completed" and summary(j)["epochs_done"] == 12 for j in jobs)
    for job in jobs:
        assert [int(r["epoch"]) for r in read_metrics(job / "metrics.csv")] == list(range(1, 13))


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_a_stopped_sweep_in_one_process_starts_no_further_job(tmp_path, monkeypatch, cli):
    """The basic launcher runs jobs in this process: the job that hears SIGTERM checkpoints, the rest
    do not start, and sweep-resume finishes both."""
    import regx.train
    from tests.fault_main import Fault

    original, calls = regx.train.train, []

    def first_is_stopped(cfg, run_dir, **kw):
        calls.append(run_dir)
        return original(cfg, run_dir, hooks=[Fault("term@3")] if len(calls) == 1 else [], **kw)

    monkeypatch.setattr(regx.train, "train", first_is_stopped)
    res = cli("train", "-m", "debug=smoke", "epochs=2", "seed=0,1")
    assert res.returncode == 143, res.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert f"finish it with: regx sweep-resume {sweep.relative_to(tmp_path)}" in res.stderr
    assert "jobs failed" not in res.stderr and len(calls) == 1
    jobs = sorted(j for j in sweep.iterdir() if j.is_dir())
    assert summary(jobs[0])["status"] == "interrupted" and not (jobs[1] / "summary.json").exists()
    monkeypatch.undo()
    res = cli("sweep-resume", str(sweep))
    assert res.returncode == 0, res.stderr
    assert all(summary(j)["status"] == "completed" for j in jobs)


def test_a_train_refused_a_directory_writes_nothing_into_it(tmp_path, cli):
    run = tmp_path / "run"
    with owner(run):  # another process trains there (before its first summary.json)
        res = cli("train", "debug=smoke", "lr=0.5", f"hydra.run.dir={run}")
    assert res.returncode == 1 and "in use by" in res.stderr, res.stderr
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # Hydra's .hydra/ record included


def test_regx_writes_hydras_record_as_hydra_does(tmp_path, cli):
    import yaml

    ours, hydras = tmp_path / "ours", tmp_path / "hydras"
    assert cli("train", "debug=smoke", "epochs=1", "lr=0.01", f"hydra.run.dir={ours}").returncode == 0
    res = cli("train", "debug=smoke", "epochs=1", "lr=0.01", f"hydra.run.dir={hydras}", "hydra.output_subdir=.hydra")
    assert res.returncode == 0, res.stderr
    for name in ("config.yaml", "overrides.yaml"):
        assert (ours / ".hydra" / name).read_text() == (hydras / ".hydra" / name).read_text(), name
    mine, theirs = (yaml.safe_load((d / ".hydra/hydra.yaml").read_text())["hydra"] for d in (ours, hydras))
    for h in (mine, theirs):
        del h["run"], h["runtime"]["output_dir"]
        h["overrides"]["hydra"] = [
            o for o in h["overrides"]["hydra"] if not o.startswith(("hydra.run.dir", "hydra.output_subdir"))
        ]
    assert mine == theirs

"""Sweeps: `regx sweep-resume` after a sweep was killed midway."""

import json

from tests.conftest import run_regx
from tests.test_train import metric_rows


def test_a_killed_sweep_resumes_in_place(tmp_path):
    # kill@8: job 0 (1 epoch, 6 steps) finishes; job 1 dies in its second epoch; job 2 never starts
    killed = run_regx(["train", "-m", "debug=smoke", "epochs=1,2,3"], tmp_path, env={"REGX_FAULT": "kill@8"})
    assert killed.returncode == -9
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_debug=smoke,epochs=1", "1_debug=smoke,epochs=2"]
    done = sweep / jobs[0] / "checkpoints" / "last.pt"
    before = done.stat().st_mtime_ns

    res = run_regx(["sweep-resume", str(sweep)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"{jobs[0]}: completed already, skipped" in res.stdout
    assert f"{jobs[1]}: resuming (running)" in res.stdout and "2_debug=smoke,epochs=3: starting" in res.stdout
    assert done.stat().st_mtime_ns == before  # the finished job was not rerun
    for job in sweep.iterdir():
        if job.is_dir():
            assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    reference = run_regx(["train", "debug=smoke", "epochs=2", "hydra.run.dir=ref"], tmp_path)
    assert reference.returncode == 0
    assert metric_rows(tmp_path / "ref") == metric_rows(sweep / jobs[1])  # resumed exactly

    again = run_regx(["sweep-resume", str(sweep)], tmp_path)
    assert again.returncode == 0 and again.stdout.count("completed already, skipped") == 3


def test_sweep_resume_bad_input(tmp_path):
    res = run_regx(["sweep-resume", str(tmp_path)], tmp_path)
    assert res.returncode == 2 and "not a regx sweep directory (no multirun.yaml)" in res.stderr

"""torchrun with 2 CPU processes (gloo): one run directory, the same weights on both ranks, and a
killed DDP run that resumes to exactly the uninterrupted one."""

import json
import os
import subprocess
import sys

import pytest

from regx import checkpoint
from tests.conftest import FAULTY, assert_same_state, metric_rows

COMMON = ["debug=smoke", "epochs=3", "aug=flip_rotate", "dropout=fc", "checkpoint.every_steps=2"]


def torchrun(args, cwd, fault=None):
    """`torchrun -m regx ARGS` with 2 processes; with `fault`, tests/fault_main.py as the script instead."""
    full = {k: v for k, v in os.environ.items() if k != "REGX_DEBUG"}
    full.update(OMP_NUM_THREADS="1", TMPDIR=str(cwd))  # torchrun's torchelastic_* folders stay with the test
    script = [FAULTY[1], fault] if fault else ["-m", "regx"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script, *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ddp_run(tmp_path):
    full = torchrun(["train", *COMMON], tmp_path)  # the run directory is picked, not given
    assert full.returncode == 0, full.stderr[-2000:]
    (run,) = list((tmp_path / "outputs" / "runs").iterdir())  # rank 0 picked it; rank 1 used it
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["ddp"]["world_size"] == 2 and s["ddp"]["backend"] == "gloo"
    assert s["ddp"]["weights_identical"] is True
    assert s["ddp"]["val_acc_by_rank"] == [s["final_val_acc"]] * 2
    assert full.stdout.count("epoch 1/3") == 1  # only rank 0 talks
    return run


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_a_ddp_run_has_one_directory_and_the_same_weights_on_every_rank(tmp_path):
    ddp_run(tmp_path)


@pytest.mark.slow  # three torchrun launches; make test-all runs it
def test_a_killed_ddp_run_resumes_to_exactly_the_uninterrupted_one(tmp_path):
    run = ddp_run(tmp_path)
    killed = torchrun(["train", *COMMON, "hydra.run.dir=k"], tmp_path, fault="kill@8")
    assert killed.returncode != 0
    state = checkpoint.read(tmp_path / "k/checkpoints/last.pt").to_dict()["state"]
    assert (state["epoch"], state["batch"]) == (1, 2)  # mid-epoch, with each rank's tally and RNG
    resumed = torchrun(["resume", "k"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metric_rows(run) == metric_rows(tmp_path / "k")
    assert_same_state(
        checkpoint.read(run / "checkpoints/last.pt").to_dict(),
        checkpoint.read(tmp_path / "k/checkpoints/last.pt").to_dict(),
    )

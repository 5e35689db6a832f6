"""torchrun with 2 CPU processes (gloo): one run directory, the same weights on both ranks, and a
killed DDP run that resumes to exactly the uninterrupted one."""

import json
import os
import subprocess
import sys

from regx.runs import load_checkpoint
from tests.test_train import assert_same_state, metric_rows

COMMON = ["debug=smoke", "epochs=3", "aug=flip_rotate", "dropout=fc", "checkpoint.every_steps=2"]


def torchrun(args, cwd, env=None):
    full = {k: v for k, v in os.environ.items() if k not in ("REGX_FAULT", "REGX_DEBUG")}
    full.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "regx", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


def test_two_processes_share_one_run_directory_and_end_with_the_same_weights(tmp_path):
    res = torchrun(["train", "debug=smoke"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1  # rank 0 picked it; rank 1 used it
    s = json.loads((runs[0] / "summary.json").read_text())
    assert s["status"] == "completed" and s["ddp"]["world_size"] == 2 and s["ddp"]["backend"] == "gloo"
    assert s["ddp"]["weights_identical"] is True
    assert s["ddp"]["val_acc_by_rank"] == [s["final_val_acc"]] * 2
    assert res.stdout.count("epoch 1/2") == 1  # only rank 0 talks


def test_a_killed_ddp_run_resumes_bit_for_bit(tmp_path):
    full = torchrun(["train", *COMMON, "hydra.run.dir=full"], tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = torchrun(["train", *COMMON, "hydra.run.dir=k"], tmp_path, env={"REGX_FAULT": "kill@8"})
    assert killed.returncode != 0
    state = load_checkpoint(tmp_path / "k/checkpoints/last.pt")["state"]
    assert (state["epoch"], state["batch"]) == (1, 2)  # mid-epoch, with each rank's tally and RNG
    resumed = torchrun(["resume", "k"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "k")
    assert_same_state(load_checkpoint(tmp_path / "full/checkpoints/last.pt"), load_checkpoint(tmp_path / "k/checkpoints/last.pt"))

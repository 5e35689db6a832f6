"""The runner end to end: run directory contents, determinism, resume, sweeps."""

import json
import os
import time

import pytest
import torch

from regx import config
from regx.runs import METRIC_COLUMNS, TIMING_COLUMNS, load_checkpoint, read_metrics
from regx.train import train


def only_run(root):
    runs = sorted((root / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def metric_rows(run):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_metrics(run / "metrics.csv")]


def assert_same_state(a, b):
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name, value in sa[k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[k][name])), (k, name)


def test_smoke_run_writes_a_self_explaining_run_directory(regx, tmp_path):
    t0 = time.time()
    res = regx("train", "debug=smoke")
    assert res.returncode == 0, res.stderr
    assert time.time() - t0 < 60
    run = only_run(tmp_path)
    assert run.name.endswith("_smallcnn_shapes")
    assert str(run) in res.stdout  # the user is told where the run went
    for f in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.csv", "summary.json",
              "checkpoints/last.pt", "checkpoints/best.pt", "train.log", "aug_preview.png", "curves.png"):
        assert (run / f).is_file(), f

    rows = read_metrics(run / "metrics.csv")
    assert list(rows[0].keys()) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["val_acc"]) <= 1
        assert float(r["gap"]) == pytest.approx(float(r["clean_train_acc"]) - float(r["val_acc"]), abs=1e-5)
        assert float(r["lr"]) > 0 and float(r["img_per_s"]) > 0
    assert 0 < float(rows[0]["wall_s"]) < float(rows[1]["wall_s"]) <= json.loads((run / "summary.json").read_text())["wall_s"]

    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs_done"] == 2 and s["error"] is None
    for key in ("best_epoch", "best_val_acc", "final_train_acc", "final_val_acc", "test_acc", "params",
                "trainable_params", "device", "wall_s"):
        assert s[key] is not None, key
    assert s["device"] == "cpu" and s["params"] == s["trainable_params"] > 0
    assert s["final_val_acc"] == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-5)
    assert s["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-5)

    last = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True
    assert {"model", "optimizer", "rng", "state", "config"} <= last.keys()
    assert last["state"]["epoch"] == 2 and last["config"]["epochs"] == 2
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["state"]["epoch"] == s["best_epoch"]

    saved = (run / "config.yaml").read_text()
    assert "epochs: 2" in saved and "${" not in saved  # resolved
    log = (run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log


def test_used_by_command(regx, tmp_path):
    res = regx("train", "aug=flip_rotate", "wd=1e-4", "debug=smoke")
    assert res.returncode == 0, res.stderr
    run = only_run(tmp_path)
    cfg = (run / "config.yaml").read_text()
    assert "name: flip_rotate" in cfg and "wd: 0.0001" in cfg
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_bad_input_exits_2_with_one_line_and_no_run_dir(regx, tmp_path):
    for args, text in [(["lrr=1"], "did you mean 'lr'"), (["aug=nope"], "valid options"), (["wd=-1"], ">= 0")]:
        res = regx("train", *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("regx: error: ") and text in lines[0]
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "outputs").exists()


def smoke_cfg(*overrides):
    return config.compose(["debug=smoke", *overrides])


def test_same_seed_same_run_and_other_seed_differs(tmp_path):
    a = train(smoke_cfg("aug=flip_rotate", "dropout=fc"), tmp_path / "a")
    b = train(smoke_cfg("aug=flip_rotate", "dropout=fc"), tmp_path / "b")
    train(smoke_cfg("aug=flip_rotate", "dropout=fc", "seed=1"), tmp_path / "c")
    assert a["status"] == b["status"] == "completed"
    assert metric_rows(tmp_path / "a") == metric_rows(tmp_path / "b")
    assert metric_rows(tmp_path / "a") != metric_rows(tmp_path / "c")
    ka, kb, kc = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in "abc")
    assert_same_state(ka, kb)
    assert not all(torch.equal(ka["model"][k], kc["model"][k]) for k in ka["model"])


def test_resume_can_extend_and_refuses_bad_targets(regx, tmp_path):
    assert regx("train", "debug=smoke", "epochs=1", "hydra.run.dir=r").returncode == 0
    more = regx("resume", "r", "epochs=2")
    assert more.returncode == 0, more.stderr
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "r" / "metrics.csv")] == [1, 2]
    early = regx("train", "debug=smoke", "hydra.run.dir=early", env={"REGX_FAULT": "kill@1"})
    assert early.returncode == -9
    no_ckpt = regx("resume", "early")
    assert no_ckpt.returncode == 2 and "has no checkpoint" in no_ckpt.stderr
    missing = regx("resume", "nowhere")
    assert missing.returncode == 2 and "no such run directory: nowhere" in missing.stderr
    changed = regx("resume", "r", "epochs=3", "model.fc=[64]")
    assert changed.returncode == 2 and "model.fc" in changed.stderr and "--force" in changed.stderr


def test_sweep_runs_every_job_and_reports_failures(regx, tmp_path):
    (tmp_path / "empty").mkdir()  # a folder without class folders: those jobs fail when they load it
    res = regx("train", "-m", "debug=smoke", "epochs=1", "aug=none,flip_rotate", "data=shapes,imagefolder",
               f"data.path={tmp_path / 'empty'}")
    assert res.returncode == 1
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert len(jobs) == 4
    status = {j.name: json.loads((j / "summary.json").read_text()) for j in jobs}
    failed = [n for n, s in status.items() if s["status"] == "failed"]
    assert sorted(failed) == sorted(n for n in status if "data=imagefolder" in n)
    assert all(str(tmp_path / "empty") in status[n]["error"] for n in failed)
    assert all(s["status"] == "completed" for n, s in status.items() if n not in failed)
    assert "2 of 4 jobs failed" in res.stderr


def test_streamed_image_folder_trains(tmp_path):
    from tests.test_data import write_images

    write_images(tmp_path / "imgs", per_class=8)
    cfg = smoke_cfg("data=imagefolder", f"data.path={tmp_path / 'imgs'}", "data.image_size=16", "data.stream=true",
                    "data.workers=0", f"data.root={tmp_path}")
    s = train(cfg, tmp_path / "run")
    assert s["status"] == "completed" and s["n_train"] + s["n_val"] == 24 and s["num_classes"] == 3


def test_failure_is_recorded_in_the_summary(tmp_path):
    from regx.train import RunFailed

    cfg = smoke_cfg("data=imagefolder", f"data.path={tmp_path / 'nothing'}")
    with pytest.raises(RunFailed, match="no such directory"):
        train(cfg, tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and "no such directory" in s["error"]
    assert "run failed" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("overrides", [
    ["precision=32"], ["precision=16"], ["precision=bf16", "channels_last=false"],
    ["optim=adamw", "sched=plateau", "decay=decoupled"], ["optim=adam", "sched=onecycle", "decay=l1"],
    ["data.channels=1", "model=tv", "model.name=resnet18", "model.small_input=true", "dropout=fc"],
    ["aug=[crop_flip,mixup]", "label_smoothing=0.1"], ["aug=[all,erasing,cutmix]", "dropout=both"],
], ids=lambda o: " ".join(o))
def test_training_variants_complete(tmp_path, overrides):
    s = train(smoke_cfg("epochs=1", *overrides), tmp_path / "run")
    assert s["status"] == "completed" and s["epochs_done"] == 1 and 0 <= s["test_acc"] <= 1


def test_default_recipe_learns(tmp_path):
    cfg = config.compose(["device=cpu", "epochs=5", "batch_size=64", "data.n_train=3000", "data.image_size=24",
                          "model.channels=[16,32]"])
    s = train(cfg, tmp_path / "run")
    assert s["best_val_acc"] > 0.3  # chance is 0.1; measured 0.41-0.47 over seeds 0-2


def test_run_directories_are_unique_within_a_second(tmp_path):
    made = {config._claim_dir(str(tmp_path), "same") for _ in range(5)}
    assert len(made) == 5 and all(os.path.isdir(p) for p in made)


@pytest.mark.slow
def test_compiled_model_trains(tmp_path):  # reduce-overhead's CUDA graphs are skipped on a CPU: the mode passes
    s = train(smoke_cfg("compile=true", "compile_mode=reduce-overhead", "epochs=1"), tmp_path / "run")
    assert s["status"] == "completed"


def test_curves_are_redrawn_only_when_drawing_is_cheap_next_to_the_epochs_and_always_at_the_end(tmp_path, monkeypatch):
    """Short epochs would spend much of their time drawing: a drawing that took 0.3 s waits for
    6 s of training before the next; the last one shows every epoch."""
    drawn = []

    def slow_plot(path, rows, title=""):
        time.sleep(0.3)
        drawn.append(len(rows))

    monkeypatch.setattr("regx.train.curves_plot", slow_plot)
    train(smoke_cfg("epochs=4"), tmp_path / "run")  # epochs of well under a second each
    assert drawn[0] == 1 and drawn[-1] == 4 and len(drawn) < 4

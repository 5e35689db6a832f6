"""The runner end to end: run directory contents, determinism, resume, sweeps."""

import json

import pytest
import torch

from regx import checkpoint, config
from regx.engine import Hook
from regx.files import METRIC_COLUMNS, claim_dir, read_metrics
from regx.train import RunFailed, train
from tests.conftest import assert_same_state, metric_rows, only_run, smoke_cfg, write_images


def test_smoke_run_writes_a_self_explaining_run_directory(regx, tmp_path):
    res = regx("train", "debug=smoke", "pictures=true")  # as a user starts it: a new process
    assert res.returncode == 0, res.stderr
    run = only_run(tmp_path)
    assert run.name.endswith("_smallcnn_shapes")
    assert f"run dir: {run}" in res.stdout.splitlines()  # where the run went, on one line (80 columns here)
    for f in (
        "config.yaml",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "metrics.csv",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "train.log",
        "aug_preview.png",
        "curves.png",
    ):
        assert (run / f).is_file(), f

    rows = read_metrics(run / "metrics.csv")
    assert tuple(rows[0].keys()) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["val_acc"]) <= 1
        assert float(r["gap"]) == pytest.approx(float(r["clean_train_acc"]) - float(r["val_acc"]), abs=1e-5)
        assert float(r["lr"]) > 0 and float(r["img_per_s"]) > 0
    assert (
        0
        < float(rows[0]["wall_s"])
        < float(rows[1]["wall_s"])
        <= json.loads((run / "summary.json").read_text())["wall_s"]
    )

    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs_done"] == 2 and s["error"] is None
    for key in (
        "best_epoch",
        "best_val_acc",
        "final_train_acc",
        "final_val_acc",
        "test_acc",
        "params",
        "trainable_params",
        "device",
        "wall_s",
    ):
        assert s[key] is not None, key
    assert s["device"] == "cpu" and s["params"] == s["trainable_params"] > 0
    assert s["final_val_acc"] == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-5)
    assert s["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-5)

    last = checkpoint.read(run / "checkpoints" / "last.pt").to_dict()  # weights_only=True
    assert {"model", "optimizer", "rng", "state", "config"} <= last.keys()
    assert last["state"]["epoch"] == 2 and last["config"]["epochs"] == 2
    best = checkpoint.read(run / "checkpoints" / "best.pt").to_dict()
    assert best["state"]["epoch"] == s["best_epoch"]
    for name in ("last.pt", "prev.pt", "best.pt"):  # each manifest names its own file
        assert json.loads((run / "checkpoints" / f"{name}.json").read_text())["file"] == name

    saved = (run / "config.yaml").read_text()
    assert "epochs: 2" in saved and "${" not in saved  # resolved
    log = (run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log


def test_used_by_command(cli, tmp_path):
    code, _, err = cli("train", "aug=flip_rotate", "wd=1e-4", "debug=smoke")
    assert code == 0, err
    run = only_run(tmp_path)
    cfg = (run / "config.yaml").read_text()
    assert "name: flip_rotate" in cfg and "wd: 0.0001" in cfg
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_bad_input_exits_2_with_one_line_and_no_run_dir(cli, tmp_path):
    for args, text in [(["lrr=1"], "did you mean 'lr'"), (["aug=nope"], "valid options"), (["wd=-1"], ">= 0")]:
        code, out, err = cli("train", *args)
        assert code == 2, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("regx: error: ") and text in lines[0]
    assert not (tmp_path / "outputs").exists()


def test_same_seed_same_run_and_other_seed_differs(tmp_path):
    a = train(smoke_cfg("aug=flip_rotate", "dropout=fc"), tmp_path / "a")
    b = train(smoke_cfg("aug=flip_rotate", "dropout=fc"), tmp_path / "b")
    train(smoke_cfg("aug=flip_rotate", "dropout=fc", "seed=1"), tmp_path / "c")
    assert a["status"] == b["status"] == "completed"
    assert metric_rows(tmp_path / "a") == metric_rows(tmp_path / "b")
    assert metric_rows(tmp_path / "a") != metric_rows(tmp_path / "c")
    ka, kb, kc = (checkpoint.read(tmp_path / r / "checkpoints" / "last.pt").to_dict() for r in "abc")
    assert_same_state(ka, kb)
    assert not all(torch.equal(ka["model"][k], kc["model"][k]) for k in ka["model"])


class Crash(Hook):
    def before_step(self, step):
        if step == 1:
            raise RuntimeError("crashed")


def test_resume_can_extend_and_refuses_bad_targets(cli, tmp_path):
    assert cli("train", "debug=smoke", "epochs=1", "hydra.run.dir=r")[0] == 0
    code, _, err = cli("resume", "r", "epochs=2")  # on main: an epoch at lr 0, marked *best*
    assert code == 2 and err.strip() == (
        "regx: error: epochs=2: the cosine schedule of r ended at lr 0 after epoch 1, and epochs past it would "
        "train at that rate, moving nothing; for a new cycle over the added epochs: regx resume r epochs=2 "
        "sched.restart=true"
    )
    code, _, err = cli("resume", "r", "epochs=2", "sched.restart=true")
    assert code == 0, err
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "r" / "metrics.csv")] == [1, 2]
    resumes = json.loads((tmp_path / "r" / "summary.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["changed"] == {"epochs": 2, "sched.restart": True}
    with pytest.raises(RunFailed, match="crashed"):  # before the first checkpoint: resume starts it again
        train(smoke_cfg(), tmp_path / "early", hooks=[Crash()])
    code, out, err = cli("resume", "early", "epochs=1")
    assert code == 0 and "starting it again from the beginning" in out, err
    for args, message in [
        (["nowhere"], "no such run directory: nowhere"),
        (["r", "epochs=3", "model.fc=[64]"], "model.fc"),
        ([], "required: RUN_DIR"),
    ]:
        code, _, err = cli("resume", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert "--force" in cli("resume", "r", "epochs=3", "model.fc=[64]")[2]


def test_sweep_runs_every_job_and_reports_failures(cli, tmp_path):
    # lr=1e4 diverges as it trains: those jobs fail and the others still run (an unusable input, such as an
    # empty image folder, is refused before the sweep starts instead)
    code, _, err = cli("train", "-m", "debug=smoke", "epochs=1", "wd=0", "aug=none,flip_rotate", "lr=0.05,1e4")
    assert code == 1
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert len(jobs) == 4
    status = {j.name: json.loads((j / "summary.json").read_text()) for j in jobs}
    failed = [n for n, s in status.items() if s["status"] == "failed"]
    hot = [j.name for j in jobs if "lr=10000" in (j / ".hydra" / "overrides.yaml").read_text()]
    assert sorted(failed) == sorted(hot) and len(hot) == 2
    assert all("diverged" in status[n]["error"] for n in failed)
    assert all(s["status"] == "completed" for n, s in status.items() if n not in failed)
    assert "2 of 4 jobs failed" in err
    assert cli("train", "debug=smoke", "epochs=1", "hydra.run.dir=after")[0] == 0  # nothing left over in-process


def test_streamed_image_folder_trains(tmp_path):
    write_images(tmp_path / "imgs", per_class=8)
    cfg = smoke_cfg(
        "data=imagefolder",
        f"data.path={tmp_path / 'imgs'}",
        "data.image_size=16",
        "data.stream=true",
        "data.workers=0",
        f"data.root={tmp_path}",
    )
    s = train(cfg, tmp_path / "run")
    assert s["status"] == "completed" and s["n_train"] + s["n_val"] == 24 and s["num_classes"] == 3


def test_failure_is_recorded_in_the_summary(tmp_path):
    cfg = smoke_cfg("data=imagefolder", f"data.path={tmp_path / 'nothing'}")
    with pytest.raises(RunFailed, match="no such directory"):
        train(cfg, tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and "no such directory" in s["error"]
    assert "run failed" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize(
    "overrides",
    [
        ["precision=32"],
        ["precision=16"],
        ["precision=bf16", "channels_last=false"],
        ["optim=adamw", "sched=plateau", "decay=decoupled"],
        ["optim=adam", "sched=onecycle", "decay=l1"],
        pytest.param(  # 5.6 s; make test-all runs it (torchvision models train in test_dropout and test_finetune)
            ["data.channels=1", "model=tv", "model.name=resnet18", "model.small_input=true", "dropout=fc"],
            marks=pytest.mark.slow,
        ),
        ["aug=[crop_flip,mixup]", "label_smoothing=0.1"],
        ["aug=[all,erasing,cutmix]", "dropout=both"],
    ],
    ids=lambda o: " ".join(o),
)
def test_training_variants_complete(tmp_path, overrides):
    s = train(smoke_cfg("epochs=1", *overrides), tmp_path / "run")
    assert s["status"] == "completed" and s["epochs_done"] == 1 and 0 <= s["test_acc"] <= 1


def test_default_recipe_learns(tmp_path):
    cfg = config.compose(
        ["device=cpu", "epochs=5", "batch_size=64", "data.n_train=3000", "data.image_size=24", "model.channels=[16,32]"]
    )
    s = train(cfg, tmp_path / "run")
    assert s["best_val_acc"] > 0.3  # chance is 0.1


def test_run_directories_are_unique_within_a_second(tmp_path):
    made = {claim_dir(str(tmp_path), "same") for _ in range(5)}
    assert len(made) == 5 and all(p.startswith(str(tmp_path)) and (tmp_path / p).is_dir() for p in made)


@pytest.mark.slow
def test_compiled_model_trains(tmp_path):  # reduce-overhead's CUDA graphs are skipped on a CPU: the mode passes
    s = train(smoke_cfg("compile=true", "compile_mode=reduce-overhead", "epochs=1"), tmp_path / "run")
    assert s["status"] == "completed"


@pytest.mark.slow  # compiles the augmentation for two batch shapes: about 25 s on 2 cores
def test_a_compiled_augmentation_trains_as_the_eager_one(tmp_path):
    """compile_aug=true on the CPU (where it is off by default): the same draws make the same batches
    to float rounding, so the run's first epoch matches the eager run's, and its header says so."""
    runs = {
        c: train(smoke_cfg("aug=all", "precision=32", f"compile_aug={c}", "epochs=1"), tmp_path / c)
        for c in ("false", "true")
    }
    assert runs["true"]["compiled"] == ["augmentation"] and runs["false"]["compiled"] == []
    for key in ("test_loss", "final_clean_train_acc", "final_val_acc"):
        assert runs["true"][key] == pytest.approx(runs["false"][key], rel=1e-4), key


class FakeClock:
    """time.perf_counter for regx.record: an epoch takes epoch_s, drawing a picture draw_s, nothing else any time."""

    def __init__(self, epoch_s, draw_s):
        self.now, self.epoch_s, self.draw_s = 0.0, epoch_s, draw_s

    def perf_counter(self):
        return self.now


@pytest.mark.parametrize(
    ("epoch_s", "draw_s", "expected"),
    [(0.0, 0.0, [4]), (2.0, 0.0, [4]), (11.0, 0.0, [1, 2, 3, 4]), (11.0, 1.0, [1, 3, 4])],
)
def test_curves_are_redrawn_only_when_drawing_is_cheap_next_to_the_epochs_and_always_at_the_end(
    tmp_path, monkeypatch, epoch_s, draw_s, expected
):
    """Short epochs would spend much of their time drawing: after a drawing that took d seconds the
    next waits for 20*d seconds of training (before the first, d is taken as 0.5 s: a run of under
    10 s draws once); the last one shows every epoch."""
    from regx.record import Recorder

    clock, drawn, epoch = FakeClock(epoch_s, draw_s), [], Recorder.epoch

    def plot(path, rows, title=""):
        clock.now += clock.draw_s
        drawn.append(len(rows))

    def timed_epoch(self, *a, **kw):
        clock.now += clock.epoch_s
        return epoch(self, *a, **kw)

    monkeypatch.setattr("regx.record.time", clock)
    monkeypatch.setattr("regx.plots.curves_plot", plot)
    monkeypatch.setattr(Recorder, "epoch", timed_epoch)
    train(smoke_cfg("epochs=4", "pictures=true"), tmp_path / "run")
    assert drawn == expected


@pytest.mark.parametrize("restart", [False, True])
def test_extending_a_finished_run_keeps_its_schedule_or_restarts_it(tmp_path, restart):
    from regx.runs import resume

    train(smoke_cfg("epochs=2", "sched=cosine" if restart else "sched=step"), tmp_path / "r")  # step: ends above 0
    resume(tmp_path / "r", ["epochs=4", f"sched.restart={str(restart).lower()}"])
    lrs = [float(r["lr"]) for r in read_metrics(tmp_path / "r" / "metrics.csv")]
    log = (tmp_path / "r" / "train.log").read_text()
    if restart:  # a new cosine cycle over the two added epochs: the same rates again
        assert lrs[2:] == lrs[:2] and "a new cosine cycle over epochs 3-4" in log
    else:  # no sawtooth: the rate the schedule ended with
        assert lrs[2] == lrs[3] <= lrs[1] and "sched.restart=true starts a new cycle instead" in log
        assert lrs[3] > 0


def test_the_progress_bar_moves_in_short_epochs_and_ends_full():
    from regx.engine import StepInfo, Tally
    from regx.train import Progress, refresh_every

    assert refresh_every(25, 6) == 1 and refresh_every(25, 100) == 5 and refresh_every(25, 10_000) == 25
    shown = []

    class Bar:
        def update(self, done, loss, acc, lr, rate):
            shown.append(done)

    hook, tally = Progress(Bar(), refresh_every(25, 7)), Tally.zero(torch.device("cpu"))
    for step in range(7):
        tally.batches, tally.images = step + 1, 8 * (step + 1)
        hook.after_step(StepInfo(step, torch.zeros(()), 0.1, tally, 1.0))
    hook.after_epoch(StepInfo(6, torch.zeros(()), 0.1, tally, 1.0))
    assert shown[0] == 1 and shown[-1] == 7


def test_each_training_accuracy_has_one_name_everywhere(tmp_path):
    from regx.plots import curves_figure

    s = train(smoke_cfg("epochs=3", "aug=flip"), tmp_path / "r")
    log = (tmp_path / "r" / "train.log").read_text()
    assert "(as trained)  clean train acc" in log  # the epoch line tells the two apart
    assert "train acc (as trained)" in log and "clean train acc" in log  # the closing table
    verdict = next(line for line in log.splitlines() if "verdict:" in line)
    assert "clean train acc" in verdict and round(s["final_clean_train_acc"], 4) == s["evidence"]["train_acc"]
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    fig = curves_figure(rows)
    labels = [t.get_text() for ax in fig.axes for legend in [ax.get_legend()] if legend for t in legend.get_texts()]
    assert "train accuracy (as trained)" in labels and "clean train accuracy (eval mode, no augmentation)" in labels
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())  # whole epochs on the axis


class _MaxNorm(Hook):
    """A user's hook that changes the weights after each step (a max-norm constraint on the head)."""

    def start(self, parts) -> None:
        self.w = parts.model.head.out.weight

    def after_step(self, info) -> None:
        with torch.no_grad():
            self.w.mul_(torch.clamp(0.5 / self.w.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0))


class _StopAt(Hook):
    def __init__(self, step: int):
        self.step = step

    def after_step(self, info) -> None:
        info.stop = info.stop or info.step == self.step


def test_a_users_hooks_in_any_order_give_the_same_checkpoint(tmp_path):
    """The loop's own steps (loss check, averaging, stop poll, mid-epoch checkpoint) run in a fixed order
    around the hooks: a hook's place in the list cannot change what a checkpoint holds."""
    from regx.train import Interrupted

    cfg = smoke_cfg("epochs=2", "average=ema", "average.decay=0.5", "checkpoint.every_steps=3", "dropout=fc")
    for name, hooks in (("first", (_MaxNorm(), _StopAt(8))), ("last", (_StopAt(8), _MaxNorm()))):
        with pytest.raises(Interrupted):
            train(cfg, tmp_path / name, hooks=hooks)
    a, b = (checkpoint.read(tmp_path / d / "checkpoints/last.pt") for d in ("first", "last"))
    assert a.step == b.step == 9 and a.state["batch"] == 3  # step 8 is batch 3 of epoch 2
    assert_same_state(a.to_dict(), b.to_dict())
    for key, value in a.average["model"].items():
        assert torch.equal(value, b.average["model"][key]), key
    assert torch.equal(a.rng["torch"], b.rng["torch"]) and torch.equal(a.rng["aug"], b.rng["aug"])
    assert metric_rows(tmp_path / "first") == metric_rows(tmp_path / "last")


def test_a_metric_that_is_not_a_declared_column_is_an_error(tmp_path):
    from regx.files import write_metrics

    with pytest.raises(ValueError, match="not in fieldnames"):
        write_metrics(tmp_path / "metrics.csv", [{"epoch": 1, "val_auroc": 0.9}])
    assert not (tmp_path / "metrics.csv").exists()

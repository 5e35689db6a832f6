"""average=ema and average=swa: averaged weights, evaluated, checkpointed, resumed and selected."""

import re

import pytest
import torch
from torch import nn

from regx import checkpoint, config, errors
from regx.average import Ema, Swa
from regx.files import read_metrics
from regx.schedules import lr_schedule
from regx.train import train
from tests.conftest import assert_same_state, metric_rows, regx_here, run_regx, smoke_cfg


def _trained_steps(model, n, hook):
    """n SGD steps of a model in training mode (its BatchNorm statistics move), `hook(step)` after each."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for step in range(n):
        opt.zero_grad()
        model(torch.randn(8, 2, generator=g)).square().mean().backward()
        opt.step()
        hook(step)


@pytest.mark.parametrize(
    "warmup,power,decay,every",
    [(True, 2 / 3, 0.99, 1), (True, 0.75, 0.9, 1), (False, 2 / 3, 0.8, 1), (True, 2 / 3, 0.99, 3)],
)
def test_the_ema_equals_timms_model_ema_v3_step_by_step(warmup, power, decay, every):
    """Oracle: timm.utils.ModelEmaV3 updated as timm's train.py updates it (step = optimizer steps so far),
    on a copy of the same model: every state-dict tensor, BatchNorm statistics included, equal."""
    timm_ema = pytest.importorskip("timm.utils.model_ema")

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).train()

    ours_model, ref_model = make(), make()
    ours = Ema(ours_model, decay=decay, warmup=warmup, warmup_power=power, every=every)
    ref = timm_ema.ModelEmaV3(ref_model, decay=decay, use_warmup=warmup, warmup_power=power)
    _trained_steps(ours_model, 9, ours.update)
    _trained_steps(ref_model, 9, lambda step: ref.update(ref_model, step=step + 1) if (step + 1) % every == 0 else None)
    theirs = ref.module.state_dict()
    for key, value in ours.module.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert ours.decay_at(1) == ref.get_decay(1) == 0.0 and ours.decay_at(50) == ref.get_decay(50)


def test_an_ema_run_records_both_and_its_checkpoints_stand_for_the_selected_weights(tmp_path):
    s = train(smoke_cfg("average=ema", "average.decay=0.9"), tmp_path / "ema")
    rows = read_metrics(tmp_path / "ema/metrics.csv")
    assert all(r["avg_val_acc"] and r["avg_val_loss"] for r in rows) and s["average"] == "ema"
    best = checkpoint.read(tmp_path / "ema/checkpoints/best.pt")
    last = checkpoint.read(tmp_path / "ema/checkpoints/last.pt")
    assert last.average["updates"] == s["evidence"]["optimizer_steps"] and best.average["updates"] == best.step
    assert not torch.equal(best.average["model"]["head.out.weight"], best.model["head.out.weight"])
    assert best.weights() is best.average["model"]
    assert s["best_val_acc"] == max(float(r["avg_val_acc"]) for r in rows)  # the averaged weights pick the best
    # and are what the verdict judges: their validation and clean training accuracy at the best epoch
    at = next(r for r in rows if int(r["epoch"]) == s["best_epoch"])
    e = s["evidence"]
    assert e["weights"] == "averaged" and e["val_acc"] == round(float(at["avg_val_acc"]), 4)
    assert e["train_acc"] == round(float(at["avg_clean_train_acc"]), 4) != round(float(at["clean_train_acc"]), 4)
    log = (tmp_path / "ema/train.log").read_text()
    assert log.count("(averaged weights: clean train acc") == len(rows)  # each epoch's line
    if s["verdict"] != "good_fit":
        assert "best.pt's averaged weights: clean train acc" in log
    raw = train(smoke_cfg("average=ema", "average.decay=0.9", "average.select=raw"), tmp_path / "raw")
    ckpt = checkpoint.read(tmp_path / "raw/checkpoints/best.pt")
    assert ckpt.weights() is ckpt.model
    rows = read_metrics(tmp_path / "raw/metrics.csv")
    assert raw["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    at = next(r for r in rows if int(r["epoch"]) == raw["best_epoch"])
    e = raw["evidence"]
    assert e["weights"] == "trained" and e["val_acc"] == round(float(at["val_acc"]), 4)
    assert e["train_acc"] == round(float(at["clean_train_acc"]), 4) and at["avg_clean_train_acc"] == ""
    # what regx eval, predict and export build: the averaged weights
    from regx.evalrun import build_from_checkpoint

    model = build_from_checkpoint(best, config.compose(["debug=smoke"]), device=torch.device("cpu"))
    assert torch.equal(model.state_dict()["head.out.weight"], best.average["model"]["head.out.weight"])
    assert regx_here(tmp_path, "eval", "ema").returncode == 0


def test_a_run_killed_mid_epoch_resumes_its_average_and_clipping_exactly(tmp_path):
    common = [
        "debug=smoke",
        "epochs=2",
        "average=ema",
        "average.decay=0.8",
        "clip_grad=0.3",
        "checkpoint.every_steps=2",
    ]
    assert regx_here(tmp_path, "train", *common, "hydra.run.dir=full").returncode == 0
    killed = run_regx(["train", *common, "hydra.run.dir=k"], tmp_path, fault="kill@9")
    assert killed.returncode == -9
    resumed = regx_here(tmp_path, "resume", "k")
    assert resumed.returncode == 0, resumed.stderr
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "k")  # clipped and avg_val_* included
    assert all(float(r["clipped"]) > 0 for r in read_metrics(tmp_path / "k/metrics.csv"))  # clipping at work
    a, b = (checkpoint.read(tmp_path / d / "checkpoints/last.pt").to_dict() for d in ("full", "k"))
    assert_same_state(a, b)
    assert a["average"]["updates"] == b["average"]["updates"]
    for key, value in a["average"]["model"].items():
        assert torch.equal(value, b["average"]["model"][key]), key


def test_averaging_switched_on_at_a_resume_starts_from_the_weights_then(tmp_path):
    assert regx_here(tmp_path, "train", "debug=smoke", "epochs=1", "sched=constant", "hydra.run.dir=r").returncode == 0
    res = regx_here(tmp_path, "resume", "r", "epochs=2", "average.name=ema")  # resume takes keys, not groups
    assert res.returncode == 0, res.stderr
    rows = read_metrics(tmp_path / "r/metrics.csv")
    assert rows[0]["avg_val_acc"] == "" and rows[1]["avg_val_acc"] != ""


def test_swa_averages_the_epochs_from_its_start_and_recomputes_batchnorm():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    swa = Swa(model, start_epoch=2)
    for epoch, w in ((1, 100.0), (2, 1.0), (3, 2.0), (4, 6.0)):
        with torch.no_grad():
            model[0].weight.fill_(w)
        swa.end_epoch(epoch)
    assert swa.updates == 3 and swa.module[0].weight.item() == pytest.approx(3.0)  # (1 + 2 + 6) / 3
    with torch.no_grad():
        swa.module[0].weight.fill_(1.0)
    batches = [torch.full((4, 1), 2.0), torch.full((2, 1), 8.0)]
    assert swa.update_bn(iter(batches), torch.autocast("cpu", enabled=False)) == 6
    assert swa.module[1].running_mean.item() == pytest.approx(5.0)  # the two batches' means, averaged
    assert not swa.module.training and swa.module[1].momentum == 0.1


def test_swa_lr_takes_over_from_the_schedule_at_its_start():
    from omegaconf import OmegaConf

    sched = OmegaConf.to_container(config.compose(["sched=cosine"]).sched)
    plain = lr_schedule(sched, lr=0.1, epochs=4, steps=10)
    swa = lr_schedule(
        sched, lr=0.1, epochs=4, steps=10, average={"name": "swa", "start_epoch": 3, "swa_lr": 0.01, "anneal_epochs": 1}
    )
    assert [swa(s) for s in range(20)] == [plain(s) for s in range(20)]
    assert swa(20 + 4) == pytest.approx(0.5 * plain(20) + 0.5 * 0.01)  # halfway through the anneal
    assert swa(30) == swa(39) == 0.01


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_an_swa_run_ends_with_the_averaged_weights_and_resumes_exactly(tmp_path):
    common = ["debug=smoke", "epochs=4", "average=swa", "average.swa_lr=0.01", "checkpoint.every_steps=2"]
    res = regx_here(tmp_path, "train", *common, "hydra.run.dir=full")
    assert res.returncode == 0, res.stderr
    rows = read_metrics(tmp_path / "full/metrics.csv")
    assert [r["avg_val_acc"] != "" for r in rows] == [False, False, True, True]  # from epoch ceil(0.75 * 4)
    assert float(rows[3]["lr"]) == pytest.approx(0.01)
    s = regx_here(tmp_path, "eval", "full")
    best = checkpoint.read(tmp_path / "full/checkpoints/best.pt").to_dict()
    assert best["state"]["best_epoch"] == 4 and best["average"]["updates"] == 2 and s.returncode == 0
    assert checkpoint.Checkpoint(**best).weights() is best["average"]["model"]
    assert "BatchNorm statistics recomputed over 360 training images" in (tmp_path / "full/train.log").read_text()
    killed = run_regx(["train", *common, "hydra.run.dir=k"], tmp_path, fault="kill@15")  # epoch 3, averaging
    assert killed.returncode == -9
    resumed = regx_here(tmp_path, "resume", "k")
    assert resumed.returncode == 0, resumed.stderr
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "k")
    a, b = (checkpoint.read(tmp_path / d / "checkpoints/best.pt").to_dict() for d in ("full", "k"))
    for key, value in a["average"]["model"].items():
        assert torch.equal(value, b["average"]["model"][key]), key
    # extended by a resume: the average started where the planned 4 epochs put it, and goes on at swa_lr
    assert regx_here(tmp_path, "resume", "full", "epochs=8").returncode == 0
    rows = read_metrics(tmp_path / "full/metrics.csv")
    assert [float(r["lr"]) for r in rows[3:]] == pytest.approx([0.01] * 5)
    assert checkpoint.read(tmp_path / "full/checkpoints/last.pt").to_dict()["average"]["updates"] == 6  # epochs 3-8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("average.start_epoch=9", "average.start_epoch=9 is invalid: must be <= epochs (4)"),
        ("average.decay=1", "average.decay=1.0 is invalid"),
        ("average.every=0", "average.every=0 is invalid"),
        ("average=sma", "unknown option average=sma"),
    ],
)
def test_bad_averaging_is_one_line(override, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        errors.preflight(
            ["average=swa", "epochs=4", override]
            if "start_epoch" in override
            else ["average=ema", override]
            if override != "average=sma"
            else [override]
        )


def test_swas_averaged_weights_pick_best_pt_only_once_batchnorm_is_recomputed(tmp_path):
    """Inside the SWA window the average's per-epoch validation uses the trained model's BatchNorm
    statistics (torch's recipe recomputes them only at the end): the trained weights pick the best epoch
    and drive early stopping there; the average takes over at the end."""
    s = train(smoke_cfg("epochs=4", "average=swa", "average.start_epoch=2", "average.swa_lr=0.01"), tmp_path / "r")
    rows = read_metrics(tmp_path / "r/metrics.csv")
    marked = [int(m) for m in re.findall(r"epoch (\d)/4 .*\*best\*", (tmp_path / "r/train.log").read_text())]
    best, expected = -1.0, []
    for r in rows:
        if float(r["val_acc"]) > best:
            best, expected = float(r["val_acc"]), [*expected, int(r["epoch"])]
    assert marked == expected  # chosen by val_acc, never by the per-epoch avg_val_acc
    assert s["best_epoch"] == 4 and s["test_checkpoint"] == "best.pt"  # the recomputed average, at the end
    # the verdict judges the average too: its clean training accuracy is measured once, in the last row
    assert [r["avg_clean_train_acc"] != "" for r in rows] == [False, False, False, True]
    e = s["evidence"]
    assert e["weights"] == "averaged" and e["val_acc"] == round(float(rows[3]["avg_val_acc"]), 4)
    assert e["train_acc"] == round(float(rows[3]["avg_clean_train_acc"]), 4)
    assert checkpoint.read(tmp_path / "r/checkpoints/best.pt").weights() is not None

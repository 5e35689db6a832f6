"""Each schedule against its closed form at the start, boundaries, after warmup and at the end."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from regx.config import SchedConfig
from regx.schedules import Plateau, lr_factor

SPE, TOTAL = 10, 100  # 10 steps per epoch, 10 epochs


def f(step, name, **kw):
    """lr_factor with the schema's defaults for every key not given, base lr 1."""
    defaults = OmegaConf.to_container(OmegaConf.structured(SchedConfig(name=name)))
    return lr_factor(step, total_steps=TOTAL, steps_per_epoch=SPE, **{**defaults, "base_lr": 1.0, **kw})


def test_constant():
    assert f(0, "constant") == f(99, "constant") == 1.0


def test_step():
    kw = dict(step_epochs=3, gamma=0.5)
    assert f(0, "step", **kw) == 1.0 and f(29, "step", **kw) == 1.0
    assert f(30, "step", **kw) == 0.5 and f(60, "step", **kw) == 0.25


def test_multistep():
    kw = dict(milestones=[2, 5], gamma=0.1)
    assert f(19, "multistep", **kw) == 1.0
    assert f(20, "multistep", **kw) == pytest.approx(0.1)
    assert f(50, "multistep", **kw) == pytest.approx(0.01)


def test_exponential_is_smooth_per_step():
    assert f(0, "exponential", gamma=0.8) == 1.0
    assert f(10, "exponential", gamma=0.8) == pytest.approx(0.8)
    assert f(15, "exponential", gamma=0.8) == pytest.approx(0.8**1.5)


def test_cosine_to_a_floor():
    kw = dict(base_lr=0.1, min_lr=0.01)
    assert f(0, "cosine", **kw) == pytest.approx(1.0)
    assert f(50, "cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(100, "cosine", **kw) == pytest.approx(0.1)


def test_onecycle_peaks_then_anneals():
    kw = dict(max_lr_mult=4.0, pct_start=0.25)
    assert f(0, "onecycle", **kw) == pytest.approx(4.0 / 25)
    assert f(24, "onecycle", **kw) == pytest.approx(4.0)  # OneCycleLR peaks at step pct_start*total - 1
    assert f(100, "onecycle", **kw) == pytest.approx(4.0 / 25 / 1e4)


def test_warmup_multiplies_any_schedule():
    assert f(0, "constant", warmup_epochs=2) == pytest.approx(1 / 20)
    assert f(19, "constant", warmup_epochs=2) == pytest.approx(1.0)
    assert f(20, "cosine", warmup_epochs=2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_plateau_cuts_after_patience():
    p = Plateau(factor=0.5, patience=1)
    for loss in [1.0, 0.9, 0.95, 0.95]:
        p.update(loss)
    assert p.scale == 0.5
    q = Plateau(factor=0.1, patience=5)
    q.load_state_dict(p.state_dict())
    assert q.scale == 0.5


def _torch_rates(scheduler_cls, steps, base_lr=0.1, optimizer=torch.optim.SGD, **kw):
    """torch's scheduler stepped once per optimizer step: (lr, momentum or first beta) before each step."""
    p = torch.nn.Parameter(torch.zeros(1))
    extra = {"momentum": 0.9} if optimizer is torch.optim.SGD else {}
    opt = optimizer([p], lr=base_lr, **extra)
    sched = scheduler_cls(opt, **kw)
    out = []
    for _ in range(steps):
        g = opt.param_groups[0]
        out.append((g["lr"], g["momentum"] if "momentum" in g else g["betas"][0]))
        opt.step()
        sched.step()
    return out


def _regx_schedule(name, **kw):
    from regx.schedules import lr_schedule

    sched = {**OmegaConf.to_container(OmegaConf.structured(SchedConfig(name=name))), **kw}
    return lr_schedule(sched, lr=0.1, epochs=TOTAL // SPE, steps=SPE)


@pytest.mark.parametrize(
    "name,kw,torch_cls,torch_kw",
    [
        ("step", dict(step_epochs=3, gamma=0.5), "StepLR", dict(step_size=30, gamma=0.5)),
        ("multistep", dict(milestones=[2, 5], gamma=0.1), "MultiStepLR", dict(milestones=[20, 50], gamma=0.1)),
        ("cosine", dict(min_lr=0.001), "CosineAnnealingLR", dict(T_max=TOTAL, eta_min=0.001)),
        ("exponential", dict(gamma=0.8), "ExponentialLR", dict(gamma=0.8 ** (1 / SPE))),  # per epoch, by step
        # a linear warmup of W steps: LinearLR from 1/W to 1 over W - 1 steps
        ("constant", dict(warmup_epochs=2.5), "LinearLR", dict(start_factor=1 / 25, total_iters=24)),
        (
            "onecycle",
            dict(max_lr_mult=4.0, pct_start=0.25),
            "OneCycleLR",
            dict(max_lr=0.4, total_steps=TOTAL, pct_start=0.25),
        ),
    ],
)
def test_each_schedule_equals_torchs_scheduler_stepped_every_step(name, kw, torch_cls, torch_kw):
    """Oracle: torch.optim.lr_scheduler's class with the same settings, stepped after every optimizer step
    (regx's schedules are per step); onecycle's momentum cycle too, as OneCycleLR sets it (SGD's momentum,
    Adam's first beta)."""
    ours = _regx_schedule(name, **kw)
    cls = getattr(torch.optim.lr_scheduler, torch_cls)
    for optimizer in (torch.optim.SGD, torch.optim.AdamW) if name == "onecycle" else (torch.optim.SGD,):
        for step, (lr, momentum) in enumerate(_torch_rates(cls, TOTAL, optimizer=optimizer, **torch_kw)):
            assert ours(step) == pytest.approx(lr, rel=1e-9, abs=1e-15), (name, step)
            if name == "onecycle":
                assert ours.momentum(step) == pytest.approx(momentum, rel=1e-12), (step, optimizer)
            else:
                assert ours.momentum(step) is None


def test_plateau_equals_torchs_reduce_lr_on_plateau():
    """Oracle: torch's ReduceLROnPlateau (mode min, threshold 0: any lower loss is an improvement, no
    cooldown) given the same validation losses, epoch by epoch, for a few factors and patiences. (Its base
    rate is 1e6 so that its eps, no cut smaller than 1e-8, never acts.)"""
    g = torch.Generator().manual_seed(0)
    for factor, patience in ((0.5, 0), (0.1, 2), (0.3, 4)):
        losses = (torch.linspace(2, 1, 60) + 0.3 * torch.rand(60, generator=g)).tolist()
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1e6)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=factor, patience=patience, threshold=0.0)
        ours = Plateau(factor, patience)
        for loss in losses:
            ref.step(loss)
            ours.update(loss)
            assert ours.scale * 1e6 == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (factor, patience)
        assert ours.scale < factor  # the losses plateau often enough to cut more than once


def test_onecycle_cycles_the_momentum_a_run_uses(tmp_path):
    from regx.train import train
    from tests.conftest import smoke_cfg

    seen = []

    class Watch(__import__("regx.engine", fromlist=["Hook"]).Hook):
        def start(self, parts):
            self.opt = parts.step.optimizer

        def after_step(self, info):
            seen.append(self.opt.param_groups[0]["momentum"])

    train(smoke_cfg("sched=onecycle", "epochs=1"), tmp_path / "r", hooks=[Watch()])
    assert seen[0] == pytest.approx(0.95) and min(seen) < 0.9 and seen[-1] > min(seen)
    seen.clear()
    train(smoke_cfg("sched=onecycle", "epochs=1", "sched.cycle_momentum=false"), tmp_path / "s", hooks=[Watch()])
    assert set(seen) == {0.9}


@pytest.mark.parametrize(
    "overrides,what",
    [
        (["sched=step", "sched.step_epochs=10"], "sched=step never lowers"),
        (["sched=step", "sched.step_epochs=9.5"], None),
        (["sched=multistep", "sched.milestones=[3,10,12]"], "sched.milestones at 10, 12"),
        (["sched=multistep", "sched.milestones=[3,9.9]"], None),
        (["sched=cosine", "sched.warmup_epochs=10"], "sched.warmup_epochs=10: a run of 10 epochs is warmup to its end"),
        (["sched=cosine", "sched.warmup_epochs=9.9"], None),
    ],
)
def test_a_schedule_change_the_epochs_never_reach_is_said_and_true(overrides, what):
    """regx warns before training about a step, milestone or warmup end at or after the last epoch; the
    warning is right exactly where the run's rate shows it (10 epochs of 10 steps, every step's rate)."""
    from regx import config
    from regx.schedules import unreached

    cfg = config.compose(["epochs=10", *overrides])
    sched = OmegaConf.to_container(cfg.sched)
    said = unreached(sched, epochs=10, lr=cfg.lr)
    rates = [f(s, **sched) for s in range(TOTAL)]
    if sched["name"] == "step":  # does the rate ever step down?
        reached = min(rates) < 1
    elif sched["name"] == "multistep":  # does every milestone take effect?
        reached = len({round(r, 12) for r in rates}) == 1 + len(sched["milestones"])
    else:  # does the warmup end before the last step: a step at the rate the schedule has without it?
        reached = any(rates[s] == pytest.approx(f(s, "cosine")) for s in range(1, TOTAL - 1))
    assert (what is None) == reached
    assert (what is None and not said) or (what is not None and len(said) == 1 and what in said[0]), said


@pytest.mark.parametrize("patience,min_delta", [(1, 0.0), (3, 0.0), (3, 0.01), (5, 0.02)])
def test_early_stopping_equals_lightnings_early_stopping(patience, min_delta):
    """Oracle: Lightning's EarlyStopping (mode max, the same patience and min_delta) fed the same
    validation accuracies stops at the same epoch, over sequences that rise fast, creep up by less than
    min_delta an epoch (gains that add up count), and plateau."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import EarlyStopping

    from regx.schedules import EarlyStop

    g = torch.Generator().manual_seed(patience)
    stops = []
    for trend in (0.02, 0.004, 0.0):
        steps = trend + 0.01 * torch.randn(40, generator=g, dtype=torch.float64)
        accs = (0.5 + steps.cumsum(0)).tolist()
        theirs = EarlyStopping(monitor="val_acc", mode="max", patience=patience, min_delta=min_delta)
        ours, state = (
            EarlyStop(patience, min_delta),
            SimpleNamespace(improved_epoch=0, improved_acc=None, best_val_acc=None),
        )
        their_stop = our_stop = None
        for epoch, acc in enumerate(accs, 1):
            if their_stop is None and theirs._evaluate_stopping_criteria(torch.tensor(acc, dtype=torch.float64))[0]:
                their_stop = epoch
            ours.observe(state, epoch, acc)
            state.best_val_acc = max(acc, state.best_val_acc or acc)
            if our_stop is None and ours.reason(epoch, state.improved_epoch, state.best_val_acc, 1):
                our_stop = epoch
        assert our_stop == their_stop, (trend, accs)
        stops.append(our_stop)
    assert any(s is not None for s in stops) and any(s is None or s > 20 for s in stops)


def test_a_checkpoint_from_before_improved_acc_resumes_with_the_rule_it_began_with():
    """A RunState saved before improved_acc existed has none: the next epochs compare with the best so far
    (the old rule) until one improves, which starts the new count from its accuracy."""
    from types import SimpleNamespace

    from regx.schedules import EarlyStop

    early = EarlyStop(patience=3, min_delta=0.01)
    state = SimpleNamespace(improved_epoch=3, improved_acc=None, best_val_acc=0.80)
    early.observe(state, 4, 0.805)
    assert (state.improved_epoch, state.improved_acc) == (3, None)
    state.best_val_acc = 0.805
    early.observe(state, 5, 0.816)
    assert (state.improved_epoch, state.improved_acc) == (5, 0.816)
    early.observe(state, 6, 0.824)  # 0.008 over the last improvement: not yet
    early.observe(state, 7, 0.827)  # 0.011 over it: gains that add up count
    assert (state.improved_epoch, state.improved_acc) == (7, 0.827)

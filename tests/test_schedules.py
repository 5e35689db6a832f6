"""Each schedule against its closed form at the start, boundaries, after warmup and at the end."""

import math

import pytest
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
    assert f(25, "onecycle", **kw) == pytest.approx(4.0)
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

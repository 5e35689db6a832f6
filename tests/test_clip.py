"""clip_grad: gradient clipping by total norm or by value, and the fraction of steps it clipped."""

import pytest
import torch
from torch import nn

from regx import checkpoint, config, errors
from regx.engine import gradient_clipper
from regx.files import read_metrics
from regx.train import train
from tests.conftest import smoke_cfg


def params_with_grads(*grads):
    ps = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    return ps


def test_norm_clipping_rescales_all_gradients_together_and_says_when():
    ps = params_with_grads(torch.tensor([3.0, 0.0]), torch.tensor([[4.0]]))  # total norm 5
    assert bool(gradient_clipper("norm", 1.0, ps)())
    assert torch.cat([p.grad.flatten() for p in ps]).norm() == pytest.approx(1.0, rel=1e-4)
    assert ps[0].grad[0] / ps[1].grad[0, 0] == pytest.approx(3 / 4)  # the direction is kept
    ps = params_with_grads(torch.tensor([0.3, 0.4]))
    assert not bool(gradient_clipper("norm", 1.0, ps)()) and torch.equal(ps[0].grad, torch.tensor([0.3, 0.4]))


def test_value_clipping_clamps_each_element_and_says_when():
    ps = params_with_grads(torch.tensor([-3.0, 0.5]), torch.tensor([2.0]))
    ps.append(nn.Parameter(torch.zeros(2)))  # a frozen one: no gradient
    assert bool(gradient_clipper("value", 1.0, ps)())
    assert torch.equal(ps[0].grad, torch.tensor([-1.0, 0.5])) and torch.equal(ps[1].grad, torch.tensor([1.0]))
    assert not bool(gradient_clipper("value", 5.0, params_with_grads(torch.tensor([-3.0])))())


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clipping_equals_timms_clip_mode(mode):
    """Oracle: timm's dispatch_clip_grad (train.py's --clip-grad/--clip-mode) on the same gradients, over
    and under the limit."""
    from timm.utils import dispatch_clip_grad

    g = torch.Generator().manual_seed(0)
    for limit in (0.1, 100.0):
        grads = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
        ours, theirs = params_with_grads(*grads), params_with_grads(*grads)
        over = gradient_clipper(mode, limit, ours)()
        dispatch_clip_grad(theirs, limit, mode=mode)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
        assert bool(over) == (limit == 0.1)


def test_metrics_record_the_fraction_of_steps_clipped(tmp_path):
    train(smoke_cfg("clip_grad=1e-4"), tmp_path / "tight")
    train(smoke_cfg("clip_grad=1e6", "clip_mode=value"), tmp_path / "loose")
    train(smoke_cfg(), tmp_path / "off")
    assert [float(r["clipped"]) for r in read_metrics(tmp_path / "tight/metrics.csv")] == [1.0, 1.0]
    assert [float(r["clipped"]) for r in read_metrics(tmp_path / "loose/metrics.csv")] == [0.0, 0.0]
    assert [r["clipped"] for r in read_metrics(tmp_path / "off/metrics.csv")] == ["", ""]
    # clipping the gradients to almost nothing leaves the weights almost where they started
    tight = checkpoint.read(tmp_path / "tight/checkpoints/last.pt").to_dict()["model"]
    off = checkpoint.read(tmp_path / "off/checkpoints/last.pt").to_dict()["model"]
    assert not torch.equal(tight["head.out.weight"], off["head.out.weight"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clip_grad=-1", "clip_grad=-1.0 is invalid: must be >= 0"),
        ("clip_mode=agc", "clip_mode='agc' is invalid"),
    ],
)
def test_bad_clipping_is_one_line(override, message):
    with pytest.raises(config.ConfigError, match=message):
        errors.preflight([override])

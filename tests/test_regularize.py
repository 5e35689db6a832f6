"""Weight decay as the course writes it: loss + wd*sum(p^2) -> gradient + 2*wd*p."""

import torch
from torch import nn

from regx.regularize import build_optimizer, penalty, split_decay

OPTIM = dict(exclude=["bias", "norm"], momentum=0.9, nesterov=True, betas=[0.9, 0.999], eps=1e-8)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def grads(m, extra=None):
    m.zero_grad()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = m(x).square().mean()
    (loss + (extra() if extra else 0)).backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def test_bias_and_norm_parameters_are_excluded():
    m = model()
    decayed, kept = split_decay(m, ["bias", "norm"])
    assert {id(p) for _, p in decayed} == {id(m[0].weight), id(m[3].weight)}
    assert [n for n, _ in decayed] == ["0.weight", "3.weight"]
    assert len(kept) == 4


def test_l2_gradient_is_plain_gradient_plus_2_wd_p():
    m, wd = model(), 1e-2
    _, decayed = build_optimizer(m, name="sgd", lr=0.1, wd=wd, decay="l2", **OPTIM)
    plain = grads(m)
    with_l2 = grads(m, lambda: penalty(decayed, decay="l2", wd=wd))
    ids = {id(p) for p in decayed}
    for n, p in m.named_parameters():
        expect = plain[n] + 2 * wd * p.detach() if id(p) in ids else plain[n]
        torch.testing.assert_close(with_l2[n], expect)


def test_l1_gradient_adds_wd_sign_p():
    m, wd = model(), 1e-2
    _, decayed = build_optimizer(m, name="sgd", lr=0.1, wd=wd, decay="l1", **OPTIM)
    plain = grads(m)
    with_l1 = grads(m, lambda: penalty(decayed, decay="l1", wd=wd))
    torch.testing.assert_close(with_l1["0.weight"], plain["0.weight"] + wd * m[0].weight.detach().sign())


def test_one_sgd_step_is_the_course_update():
    m, wd, lr = model(), 1e-2, 0.1
    opt, decayed = build_optimizer(m, name="sgd", lr=lr, wd=wd, decay="l2", **{**OPTIM, "momentum": 0.0})
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    plain = grads(m)
    opt.zero_grad()
    grads(m, lambda: penalty(decayed, decay="l2", wd=wd))
    opt.step()
    torch.testing.assert_close(
        m[0].weight.detach(), before["0.weight"] - lr * (plain["0.weight"] + 2 * wd * before["0.weight"])
    )
    torch.testing.assert_close(m[0].bias.detach(), before["0.bias"] - lr * plain["0.bias"])


def test_decoupled_uses_the_optimizer_and_wd_zero_adds_nothing():
    m = model()
    opt, decayed = build_optimizer(m, name="adamw", lr=0.1, wd=0.05, decay="decoupled", **OPTIM)
    assert decayed == [] and [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    _, none = build_optimizer(m, name="sgd", lr=0.1, wd=0.0, decay="l2", **OPTIM)
    assert none == []

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


def _steps(m, opt, n=5, extra=None):
    g = torch.Generator().manual_seed(2)
    for _ in range(n):
        opt.zero_grad()
        x = torch.randn(5, 3, 8, 8, generator=g)
        (m(x).square().mean() + (extra() if extra else 0)).backward()
        opt.step()


def _groups(m, exclude, wd):
    decayed, kept = split_decay(m, exclude)
    return [
        {"params": [p for _, p in decayed], "weight_decay": wd},
        {"params": [p for _, p in kept], "weight_decay": 0.0},
    ]


def test_adam_with_decoupled_decay_is_torchs_adamw():
    """Oracle: torch.optim.AdamW on a copy of the same model, the same groups and gradients, step for step."""
    for name in ("adam", "adamw"):
        ours, ref = model(), model()
        opt, penalized = build_optimizer(ours, name=name, lr=0.05, wd=0.1, decay="decoupled", **OPTIM)
        assert penalized == []  # no loss term: the decay is the optimizer's
        theirs = torch.optim.AdamW(_groups(ref, OPTIM["exclude"], 0.1), lr=0.05, betas=(0.9, 0.999), eps=1e-8)
        _steps(ours, opt)
        _steps(ref, theirs)
        for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert torch.equal(a, b), (name, n)


def test_sgd_with_decoupled_decay_is_loshchilov_and_hutters_sgdw():
    """Oracle: SGDW written from the paper (Algorithm 1, with torch's momentum convention): each step
    p <- p - lr*wd*p - lr*m with m = beta*m + g (Nesterov: the step uses g + beta*m); the decay never
    enters m. torch.optim.SGD(weight_decay=wd) instead feeds wd*p through the momentum."""
    for nesterov in (False, True):
        ours, ref = model(), model()
        opt, _ = build_optimizer(
            ours, name="sgd", lr=0.1, wd=0.05, decay="decoupled", **{**OPTIM, "nesterov": nesterov}
        )
        decayed = {id(p) for _, p in split_decay(ref, OPTIM["exclude"])[0]}
        bufs, g = {}, torch.Generator().manual_seed(2)
        for _ in range(5):
            ref.zero_grad()
            ref(torch.randn(5, 3, 8, 8, generator=g)).square().mean().backward()
            with torch.no_grad():
                for p in ref.parameters():
                    grad = p.grad
                    buf = bufs[id(p)] = grad.clone() if id(p) not in bufs else 0.9 * bufs[id(p)] + grad
                    step = grad + 0.9 * buf if nesterov else buf
                    if id(p) in decayed:
                        p.mul_(1 - 0.1 * 0.05)
                    p.sub_(0.1 * step)
        _steps(ours, opt)
        for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert (a - b).abs().max() < 1e-6, (n, nesterov, (a - b).abs().max())
        coupled = model()
        torch_sgd = torch.optim.SGD(_groups(coupled, OPTIM["exclude"], 0.05), lr=0.1, momentum=0.9, nesterov=nesterov)
        _steps(coupled, torch_sgd)
        assert not torch.allclose(coupled[0].weight, ours[0].weight, atol=1e-6)  # coupled L2 is another method


def test_the_default_decay_split_is_timms_param_groups_weight_decay():
    """Oracle: timm's param_groups_weight_decay with the model's no_weight_decay() list, as timm's
    create_optimizer_v2 calls it: norm scales, biases, ConvNeXt's layer-scale gammas, a ViT's pos_embed
    and cls_token are not decayed."""
    timm = __import__("pytest").importorskip("timm")
    from timm.optim import param_groups_weight_decay

    from regx import config

    for name, kw in (("resnet18", {}), ("convnext_atto", {}), ("vit_tiny_patch16_224", {"img_size": 32})):
        m = timm.create_model(name, num_classes=3, **kw)
        groups = param_groups_weight_decay(m, 0.1, no_weight_decay_list=getattr(m, "no_weight_decay", set)())
        theirs = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
        decayed, _ = split_decay(m, config.DecayConfig(name="l2").exclude)
        assert {id(p) for _, p in decayed} == theirs, name

"""The batched per-sample augmentation against torchvision as the oracle."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from regx import config
from regx.augment import Augment, AugParams, apply
from regx.data import make_shapes

BILINEAR = TF.InterpolationMode.BILINEAR


@pytest.fixture(scope="module")
def images():
    x, _ = make_shapes(8, 32, 10, 3, seed=5)
    return x.float() / 255


def params(n, **values):
    p = AugParams.identity(n)
    for k, v in values.items():
        setattr(p, k, torch.full((n,), v) if not isinstance(v, torch.Tensor) else v)
    return p


def test_identity_returns_the_input(images):
    assert torch.equal(apply(images.clone(), AugParams.identity(len(images))), images)


def test_flips_equal_torchvision_exactly(images):
    on = torch.tensor([True, False] * 4)
    out = apply(images, params(8, hflip=on))
    assert torch.equal(out[on], TF.horizontal_flip(images[on])) and torch.equal(out[~on], images[~on])
    assert torch.equal(apply(images, params(8, vflip=torch.ones(8, dtype=torch.bool))), TF.vertical_flip(images))


@pytest.mark.parametrize("ours,theirs", [
    (dict(angle=30.0), dict(angle=-30.0, translate=[0, 0], scale=1.0)),  # affine's angle is clockwise
    (dict(scale=1.3), dict(angle=0.0, translate=[0, 0], scale=1.3)),
    (dict(tx=0.125, ty=-0.25), dict(angle=0.0, translate=[4, -8], scale=1.0)),
    (dict(angle=-20.0, scale=0.8, tx=0.0625, ty=0.1), dict(angle=20.0, translate=[2, 3.2], scale=0.8)),
])
def test_geometry_matches_torchvision(images, ours, theirs):
    out = apply(images, params(8, **ours))
    ref = TF.affine(images, shear=[0.0, 0.0], interpolation=BILINEAR, **theirs)
    assert (out - ref).abs().max() < 1e-4


def test_rotation_is_counter_clockwise_as_torchvision_rotate(images):
    ref = TF.rotate(images, 30.0, interpolation=BILINEAR)
    assert (apply(images, params(8, angle=30.0)) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("ours,fn,arg", [
    (dict(brightness=1.4), TF.adjust_brightness, 1.4),
    (dict(contrast=0.6), TF.adjust_contrast, 0.6),
    (dict(saturation=1.5), TF.adjust_saturation, 1.5),
    (dict(hue=0.2), TF.adjust_hue, 0.2),
    (dict(hue=-0.35), TF.adjust_hue, -0.35),
])
def test_colour_matches_torchvision(images, ours, fn, arg):
    assert (apply(images, params(8, **ours)) - fn(images, arg)).abs().max() < 1e-4


def test_each_sample_draws_its_own_parameters():
    cfg = config.compose(["aug=flip_rotate"]).aug
    x = make_shapes(1, 32, 10, 3, seed=0)[0].float().div(255).expand(64, -1, -1, -1).contiguous()
    out = Augment(cfg, torch.Generator().manual_seed(0))(x)
    distinct = {tuple(o.flatten()[::37].mul(1000).round().tolist()) for o in out}
    assert len(distinct) >= 60


def test_draws_follow_the_generator():
    cfg = config.compose(["aug=flip_rotate"]).aug
    x = torch.rand(16, 3, 16, 16)
    a = Augment(cfg, torch.Generator().manual_seed(7))(x)
    b = Augment(cfg, torch.Generator().manual_seed(7))(x)
    c = Augment(cfg, torch.Generator().manual_seed(8))(x)
    assert torch.equal(a, b) and not torch.equal(a, c)

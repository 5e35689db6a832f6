"""The batched per-sample augmentation against torchvision as the oracle."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from regx import config
from regx.augment import Augment, AugParams, apply
from regx.data.synthetic import make_shapes

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


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (dict(angle=30.0), dict(angle=-30.0, translate=[0, 0], scale=1.0)),  # affine's angle is clockwise
        (dict(scale=1.3), dict(angle=0.0, translate=[0, 0], scale=1.3)),
        (dict(tx=0.125, ty=-0.25), dict(angle=0.0, translate=[4, -8], scale=1.0)),
        (dict(angle=-20.0, scale=0.8, tx=0.0625, ty=0.1), dict(angle=20.0, translate=[2, 3.2], scale=0.8)),
    ],
)
def test_geometry_matches_torchvision(images, ours, theirs):
    out = apply(images, params(8, **ours))
    ref = TF.affine(images, shear=[0.0, 0.0], interpolation=BILINEAR, **theirs)
    assert (out - ref).abs().max() < 1e-4


def test_rotation_is_counter_clockwise_as_torchvision_rotate(images):
    ref = TF.rotate(images, 30.0, interpolation=BILINEAR)
    assert (apply(images, params(8, angle=30.0)) - ref).abs().max() < 1e-4


@pytest.mark.parametrize(
    "ours,fn,arg",
    [
        (dict(brightness=1.4), TF.adjust_brightness, 1.4),
        (dict(contrast=0.6), TF.adjust_contrast, 0.6),
        (dict(saturation=1.5), TF.adjust_saturation, 1.5),
        (dict(hue=0.2), TF.adjust_hue, 0.2),
        (dict(hue=-0.35), TF.adjust_hue, -0.35),
    ],
)
def test_colour_matches_torchvision(images, ours, fn, arg):
    assert (apply(images, params(8, **ours)) - fn(images, arg)).abs().max() < 1e-4


def test_each_sample_draws_its_own_parameters():
    cfg = config.compose(["aug=flip_rotate"]).aug
    x = make_shapes(1, 32, 10, 3, seed=0)[0].float().div(255).expand(64, -1, -1, -1).contiguous()
    out = Augment(cfg, torch.Generator().manual_seed(0)).images(x)
    distinct = {tuple(o.flatten()[::37].mul(1000).round().tolist()) for o in out}
    assert len(distinct) >= 60


def test_draws_follow_the_generator():
    cfg = config.compose(["aug=flip_rotate"]).aug
    x = torch.rand(16, 3, 16, 16)
    a = Augment(cfg, torch.Generator().manual_seed(7)).images(x)
    b = Augment(cfg, torch.Generator().manual_seed(7)).images(x)
    c = Augment(cfg, torch.Generator().manual_seed(8)).images(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pad_and_crop_equals_torchvision_exactly(images):
    pad, top, left = 4, 1, 6  # torchvision: pad 4, crop 32x32 at (top, left); ours: a whole-pixel shift
    ref = TF.crop(TF.pad(images, [pad]), top, left, 32, 32)
    out = apply(images, params(8, tx=(pad - left) / 32, ty=(pad - top) / 32))
    assert (out - ref).abs().max() < 1e-5


def test_crop_shifts_are_whole_pixels_within_pad():
    cfg = config.compose(["aug=crop_flip"]).aug
    p = Augment(cfg, torch.Generator().manual_seed(0)).sample(4000, (32, 32), "cpu")
    shifts = torch.cat([p.tx, p.ty]) * 32
    assert torch.allclose(shifts, shifts.round(), atol=1e-4)
    assert set(shifts.round().long().tolist()) == set(range(-4, 5))


def _erased_boxes(cfg_overrides: list[str], n: int, h_img: int, w_img: int) -> torch.Tensor:
    """regx's erasing boxes for n images as whole pixels (i, j, h, w); h = 0 where none."""
    cfg = config.compose(["aug=erasing", "aug.erasing.p=1", *cfg_overrides]).aug
    box = Augment(cfg, torch.Generator().manual_seed(0)).sample(n, (h_img, w_img), "cpu").erase
    pixels = torch.stack(
        [box[:, 1] * h_img, box[:, 0] * w_img, (box[:, 3] - box[:, 1]) * h_img, (box[:, 2] - box[:, 0]) * w_img], 1
    )
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)  # whole pixels
    return pixels.round()


@pytest.mark.parametrize("area_max", [0.33, 0.9])
def test_random_erasing_follows_torchvisions_get_params(area_max):
    """aug=erasing against torchvision's RandomErasing.get_params (scale (0.02, area_max), ratio (1/3.3,
    3.3)), 4,000 boxes each on a 24x32 image: as often none (where 10 tries find no box that fits: often
    with area_max 0.9, never with the default), and the erased boxes' height, width and corner have the same
    distributions (two-sample KS tests)."""
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomErasing

    n, h_img, w_img = 4000, 24, 32
    torch.manual_seed(0)
    img = torch.zeros(1, h_img, w_img)
    theirs = torch.tensor(
        [RandomErasing.get_params(img, (0.02, area_max), (1 / 3.3, 3.3), value=[0])[:4] for _ in range(n)],
        dtype=torch.float,
    )  # (i, j, h, w); the whole image where no box fits
    ours = _erased_boxes([f"aug.erasing.area_max={area_max}"], n, h_img, w_img)
    none_theirs, none_ours = (theirs[:, 2] == h_img).float().mean(), (ours[:, 2] == 0).float().mean()
    assert abs(none_theirs - none_ours) < 4 * (none_theirs * (1 - none_theirs) / n) ** 0.5 + 1e-3
    theirs, ours = theirs[theirs[:, 2] < h_img], ours[ours[:, 2] > 0]
    for k, key in enumerate(("i", "j", "h", "w")):
        assert ks_2samp(ours[:, k].numpy(), theirs[:, k].numpy()).pvalue > 1e-3, key


def test_an_erased_box_is_torchvisions_erase_with_the_same_noise(images):
    """The pixels: each image's box (i, j, h, w) filled from the noise, as torchvision's erase(img, i, j,
    h, w, v) with v that noise's patch; the other pixels untouched."""
    n = len(images)
    cfg = config.compose(["aug=erasing", "aug.erasing.p=1"]).aug
    p = Augment(cfg, torch.Generator().manual_seed(0)).sample(n, (32, 32), "cpu")
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    ours = apply(images, p, noise)
    for k, (i, j, h, w) in enumerate(_erased_boxes([], n, 32, 32).long().tolist()):
        assert h > 0
        ref = TF.erase(images[k], i, j, h, w, noise[k, :, i : i + h, j : j + w])
        assert torch.equal(ours[k], ref), k


def test_beta_sampler_has_the_right_moments():
    from regx.augment import beta

    for alpha in (0.2, 1.0, 4.0):
        s = beta(alpha, 20000, torch.Generator().manual_seed(0), "cpu")
        assert s.min() >= 0 and s.max() <= 1
        assert s.mean().item() == pytest.approx(0.5, abs=0.01)
        assert s.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


@pytest.mark.parametrize("option", ["mixup", "cutmix"])
def test_mixing_mixes_images_and_labels_consistently(option):
    from regx.augment import mixed_cross_entropy

    cfg = config.compose([f"aug={option}", f"aug.{option}.p=1"]).aug
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous() / 8
    out, m = Augment(cfg, torch.Generator().manual_seed(3))(x)
    assert m is not None and ((m.lam >= 0) & (m.lam <= 1)).all()
    # every pixel is lam parts of its own image and 1 - lam parts of the partner's (on average for cutmix)
    expect = m.lam * x[:, 0, 0, 0] + (1 - m.lam) * x[m.perm, 0, 0, 0]
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), expect)
    y = torch.randint(0, 5, (8,))
    logits = torch.randn(8, 5)
    ce = torch.nn.functional.cross_entropy
    manual = torch.stack(
        [
            m.lam[i] * ce(logits[i : i + 1], y[i : i + 1])
            + (1 - m.lam[i]) * ce(logits[i : i + 1], y[m.perm][i : i + 1])
            for i in range(8)
        ]
    ).mean()
    torch.testing.assert_close(mixed_cross_entropy(logits, y, m), manual)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_and_cutmix_with_their_loss_are_timms_mixup(monkeypatch, smoothing):
    """Side by side with timm's Mixup (mode="elem": each image its own weight and its own choice of
    mixup or cutmix, its partner the batch reversed; cutmix's box from rand_bbox and the weight corrected to
    the area pasted) and SoftTargetCrossEntropy on its smoothed, mixed targets: given the same weights and
    box centres, regx's mix makes the same images and weights, and mixed_cross_entropy with
    label_smoothing the same loss (the unmixed images too: plain label smoothing)."""
    import numpy as np
    import timm.data.mixup as tm
    from timm.loss import SoftTargetCrossEntropy

    from regx.augment import Mix, mix, mixed_cross_entropy

    n, h, w, k = 16, 12, 20, 10
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, h, w, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    lam = torch.rand(n, generator=g)
    lam[[0, 5]] = 1.0  # two images left unmixed
    cut = torch.rand(n, generator=g) < 0.5
    cy, cx = torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)
    # timm: its draws replaced by these (per image the weight and the choice, then per cutmix box its centre)
    mixer = tm.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", label_smoothing=smoothing, num_classes=k)
    monkeypatch.setattr(mixer, "_params_per_elem", lambda _: (lam.numpy().astype(np.float32), cut.numpy()))
    centres = iter([int(v) for i in range(n) if cut[i] and lam[i] != 1 for v in (cy[i], cx[i])])
    monkeypatch.setattr(tm.np.random, "randint", lambda *a, **kw: next(centres))
    theirs, target = mixer(x.clone(), y)
    side = torch.where(cut, torch.sqrt(1 - lam), 0.0)
    m = Mix(
        perm=torch.arange(n).flip(0),
        lam=torch.where(cut, 1.0, lam),
        cut=cut & (lam != 1),
        box=torch.stack([(cx + 0.5) / w, (cy + 0.5) / h, side], 1),
    )
    ours = mix(x, m)
    torch.testing.assert_close(ours, theirs)
    logits = torch.randn(n, k, generator=g)
    torch.testing.assert_close(mixed_cross_entropy(logits, y, m, smoothing), SoftTargetCrossEntropy()(logits, target))
    assert next(centres, None) is None  # timm placed a box for every cutmix image


def test_labels_are_untouched_without_mixing(images):
    cfg = config.compose(["aug=all"]).aug
    _, m = Augment(cfg, torch.Generator().manual_seed(0))(images)
    assert m is None


def test_evaluation_is_never_augmented(images):
    from regx.engine import Pipeline

    cfg = config.compose(["aug=all"]).aug
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    pipe = Pipeline(zero, one, False, Augment(cfg, torch.Generator().manual_seed(0)))
    x8 = (images * 255).round().to(torch.uint8)
    assert torch.equal(pipe.eval(x8), x8.float() / 255)
    assert not torch.equal(pipe.train(x8)[0], x8.float() / 255)


def test_the_input_batch_is_never_modified(images):
    before = images.clone()
    cfg = config.compose(["aug=[all,erasing]", "aug.hflip.p=1", "aug.color.p=1"]).aug
    Augment(cfg, torch.Generator().manual_seed(0)).images(images)
    apply(images, params(8, hflip=torch.ones(8, dtype=torch.bool), brightness=1.3))
    assert torch.equal(images, before)


@pytest.mark.parametrize("option", ["flip", "flip_rotate", "all", "[all,erasing]"])
def test_the_sync_free_path_matches_the_cpu_path(option):
    """Off CPU, apply() processes every image and keeps unchanged ones with torch.where (no host
    reads); forced on CPU it must give what the index path gives."""
    from regx import config

    aug = Augment(config.compose([f"aug={option}"]).aug, torch.Generator().manual_seed(0))
    x = torch.rand(32, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    p = aug.sample(32, (24, 24), "cpu")
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    a = apply(x, p, noise, sync_free=False)
    b = apply(x, p, noise, sync_free=True)
    assert (a - b).abs().max() < 1e-5
    moved = (p.angle != 0) | (p.scale != 1) | (p.tx != 0) | (p.ty != 0)
    still = ~(moved | p.hflip | p.vflip | (p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0))
    if p.erase is None:
        assert torch.equal(b[still], x[still])  # untouched images stay exact


def test_no_preset_flips_vertically_unless_its_name_says_so():
    for name in config.group_options("aug"):
        assert config.compose([f"aug={name}"]).aug.vflip.p == 0 or "vflip" in name, name


def test_the_random_stream_of_regx_0_1_is_kept():
    """tests/data/aug_stream_v0.pt: what regx 0.1's augmentation drew and made for a fixed seed (each
    op's parameters, the generator's state after them, the augmented images, the mix) before the ops
    became a registry; a run resumed or repeated by this regx draws the same. Re-recorded on 2026-12-06
    for the cases with erasing or cutmix, when erasing came to draw torchvision's 10 tries and cutmix to
    place timm's whole-pixel box (their own oracle tests below); every other case is 0.1's."""
    from pathlib import Path

    ref = torch.load(Path(__file__).parent / "data" / "aug_stream_v0.pt", weights_only=True)
    for name, overrides in ref["overrides"].items():
        expected, cfg = ref["cases"][name], config.compose(overrides).aug
        g = torch.Generator().manual_seed(11)
        p = Augment(cfg, g).sample(8, (16, 16), "cpu")
        for field, value in expected["params"].items():
            assert torch.equal(getattr(p, field), value), (name, field)
        assert torch.equal(g.get_state(), expected["state_after_sample"]), name
        g = torch.Generator().manual_seed(11)
        out, mixed = Augment(cfg, g)(ref["images"])
        assert torch.equal(g.get_state(), expected["state_after_batch"]), name
        assert (out.half().float() - expected["images"].float()).abs().max() <= 1e-3, name
        if expected["lam"] is not None:
            assert torch.equal(mixed.lam, expected["lam"]) and torch.equal(mixed.perm, expected["perm"]), name


def _changed(field: str, value):
    """Another valid value of an aug key: what a user could set it to instead."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return {"imagenet": "svhn"}[value]
    if field in ("bins",):
        return value + 4
    if isinstance(value, int):
        return value + 1 if field not in ("magnitude",) else value - 3
    return value * 0.5 if value else 0.3


@pytest.mark.parametrize("name", config.AUG_OPS)
def test_every_key_of_every_aug_option_changes_what_it_does(name):
    """Every AugConfig field is an entry of the ops registry (OPS, POLICIES, AugMix or the mixes), and
    every one of its keys is read: with the option on, changing any key changes the augmented batch."""
    import dataclasses

    from regx.augment import STAGES

    assert set(STAGES) == set(config.AUG_OPS)
    base = [
        f"aug.{name}.p=1",
        *{
            "rotate": ["aug.rotate.degrees=20"],
            "scale": ["aug.scale.min=0.8"],
            "translate": ["aug.translate.fraction=0.1"],
            "crop": ["aug.crop.pad=3"],
            "color": [f"aug.color.{k}=0.3" for k in ("brightness", "contrast", "saturation", "hue")],
            "augmix": ["aug.augmix.depth=2"],
        }.get(name, []),
    ]
    x = torch.rand(16, 3, 24, 24, generator=torch.Generator().manual_seed(3))

    def run(overrides):
        cfg = config.compose(["aug=none", *overrides]).aug
        out, mixed = Augment(cfg, torch.Generator().manual_seed(0))(x)
        return out if mixed is None else torch.cat([out.flatten(), mixed.lam])

    reference = run(base)
    assert not torch.equal(reference, x if reference.shape == x.shape else reference * 0), name
    node = config.compose(["aug=none", *base]).aug[name]
    for f in dataclasses.fields(type(getattr(config.AugConfig(name="x"), name))):
        if f.name == "p":
            continue
        value = _changed(f.name, node[f.name])
        other = run([*base, f"aug.{name}.{f.name}={value}"])
        assert other.shape != reference.shape or not torch.equal(other, reference), f"aug.{name}.{f.name} is not read"


def test_random_resized_crops_follow_torchvisions_get_params():
    """aug=rrc against torchvision's RandomResizedCrop.get_params, 4,000 crops each on a 32x24 image: the
    crop's width, height and centre have the same distributions (two-sample KS tests)."""
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    n, h_img, w_img = 4000, 24, 32
    torch.manual_seed(0)
    theirs = torch.tensor(
        [RandomResizedCrop.get_params(torch.zeros(1, h_img, w_img), (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)],
        dtype=torch.float,
    )  # (i, j, h, w)
    cfg = config.compose(["aug=rrc"]).aug
    p = Augment(cfg, torch.Generator().manual_seed(0)).sample(n, (h_img, w_img), "cpu")
    w, h = w_img / p.scale, h_img / (p.scale * p.aspect)
    assert torch.allclose(w, w.round(), atol=1e-4) and torch.allclose(h, h.round(), atol=1e-4)  # whole pixels
    cx, cy = (0.5 - p.tx / p.scale) * w_img, (0.5 - p.ty / (p.scale * p.aspect)) * h_img
    ours = {"w": w.round(), "h": h.round(), "cx": (2 * cx).round() / 2, "cy": (2 * cy).round() / 2}  # float noise off
    ref = {
        "w": theirs[:, 3],
        "h": theirs[:, 2],
        "cx": theirs[:, 1] + theirs[:, 3] / 2,
        "cy": theirs[:, 0] + theirs[:, 2] / 2,
    }
    for key in ours:
        assert ks_2samp(ours[key].numpy(), ref[key].numpy()).pvalue > 1e-3, key


def test_a_random_resized_crop_equals_torchvisions_resized_crop(images):
    """The pixels: a crop (i, j, h, w) resized bilinearly equals torchvision's resized_crop inside the
    frame (at the crop's own edge torchvision repeats its border pixels; one warp samples the image there)."""
    from regx.augment import AugParams

    i, j, h, w = 4, 6, 16, 20
    sx, sy = 32 / w, 32 / h
    p = AugParams.identity(8)
    p.scale, p.aspect = torch.full((8,), sx), torch.full((8,), sy / sx)
    p.tx, p.ty = torch.full((8,), -sx * ((j + w / 2) / 32 - 0.5)), torch.full((8,), -sy * ((i + h / 2) / 32 - 0.5))
    ours = apply(images, p)
    ref = TF.resized_crop(images, i, j, h, w, [32, 32], interpolation=BILINEAR, antialias=False)
    assert (ours - ref)[..., 2:-2, 2:-2].abs().max() < 1e-5


# Operators one augmented batch dispatches on an accelerator's path (parameters drawn, then applied
# sync-free), each a kernel launch or more on a GPU, where a small batch is bound by launches (#32).
# Ceilings, counted 2026-12-05; before stages_of skipped the stages a config leaves off they were
# flip 128, crop_flip 173, flip_rotate 164, scale_crop 173, color 147, erasing 179, all 202. Erasing rose
# from 65 to 86 on 2026-12-06 when it came to draw torchvision's 10 tries per box (rrc's way).
OPS_CEILING = {
    "flip": 17,
    "crop_flip": 69,
    "flip_rotate": 60,
    "scale_crop": 66,
    "color": 134,
    "erasing": 86,
    "all": 199,
}


@pytest.mark.parametrize("option", OPS_CEILING)
def test_an_augmented_batch_dispatches_no_more_operators_than_its_ceiling(option):
    from benchmarks.aug_profile import ops_per_batch

    assert ops_per_batch(option) <= OPS_CEILING[option]


@pytest.mark.parametrize("option", ["flip", "crop_flip", "erasing", "all", "[all,erasing]"])
@pytest.mark.parametrize("hue", [0.0, 0.03])
def test_skipping_the_stages_a_config_leaves_off_changes_no_pixel(option, hue):
    """stages_of(cfg) skips whole stages (a flip, the warp, colour, hue) that nothing in the config
    turns on: on both paths the batch is the one every stage gives, bit for bit."""
    from regx.augment import APPLY_STAGES, stages_of

    cfg = config.compose([f"aug={option}", f"aug.color.hue={hue}"]).aug
    x = torch.rand(32, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    p = Augment(cfg, torch.Generator().manual_seed(0)).sample(32, (24, 24), "cpu")
    for sync_free in (False, True):
        every = apply(x, p, noise, stages=APPLY_STAGES, sync_free=sync_free)
        assert torch.equal(apply(x, p, noise, stages=stages_of(cfg), sync_free=sync_free), every), sync_free
    assert stages_of(cfg) < APPLY_STAGES


def test_every_per_image_op_is_one_compile_aug_compiles():
    from regx.augment import OPS

    assert set(OPS) == set(config.PER_IMAGE_OPS)


@pytest.mark.parametrize("option", ["all", "[rrc,erasing]"])
def test_making_a_drawn_batch_draws_nothing(option):
    """Augment.made, what compile_aug compiles, is a function of the batch and its draws alone: it
    touches no generator, so compiled or not it makes the same images from the same draws."""
    aug = Augment(config.compose([f"aug={option}"]).aug, torch.Generator().manual_seed(0))
    x = torch.rand(16, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    drawn = aug.draw(16, "cpu")
    state = aug.g.get_state()
    first = aug.made(x, *drawn, torch.rand(x.shape))
    assert torch.equal(aug.g.get_state(), state)
    noise = torch.rand(x.shape)
    assert torch.equal(aug.made(x, *drawn, noise), aug.made(x, *drawn, noise))
    assert not torch.equal(first, x)


# compile_aug on the CPU, counted 2026-12-05: (the operators still dispatched eagerly: the draws, one
# for the uniforms, with erasing one for its boxes and one for its noise; the kernels torch.compile fuses
# the rest into). Eager, a batch dispatches OPS_CEILING's operators: crop_flip 69, all 199. [all,erasing]
# fused into 17 kernels before erasing drew 10 tries per box (2026-12-06), 20 since.
FUSED_CEILING = {"crop_flip": (1, 12), "all": (1, 16), "[all,erasing]": (3, 20)}


@pytest.mark.slow  # compiles: 7-12 s an option
@pytest.mark.parametrize("option", FUSED_CEILING)
def test_the_compiled_augmentation_makes_what_eager_makes_in_a_few_kernels(option):
    from benchmarks.aug_profile import fused_per_batch

    cfg = config.compose([f"aug={option}"]).aug
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    eager = Augment(cfg, torch.Generator().manual_seed(0))
    compiled = Augment(cfg, torch.Generator().manual_seed(0), compiled=True)
    for _ in range(2):  # the second batch runs the compiled graph without compiling
        assert (compiled(x)[0] - eager(x)[0]).abs().max() < 1e-5
        assert torch.equal(compiled.g.get_state(), eager.g.get_state())  # the same random stream
    eager_ops, kernels = fused_per_batch(option)
    assert eager_ops <= FUSED_CEILING[option][0] and kernels <= FUSED_CEILING[option][1]

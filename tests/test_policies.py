"""Policy augmentation (aug=trivialaugment, randaugment, autoaugment, augmix): every operation against
torchvision's own at fixed magnitudes, AugMix's mix against torchvision's arithmetic, the draws'
distribution, the batched paths, AugMix's consistency loss against timm's, and runs."""

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from regx import config, errors
from regx.augment import Augment, jsd_cross_entropy
from regx.policies import AUGMIX_OPS, DRAWN, OPS, AugMix, Policy, apply_ops, space
from regx.train import train
from tests.conftest import smoke_cfg


def image(c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (c, 24, 28), dtype=torch.uint8, generator=g)
    x[:, :5] = 200  # flat areas and edges, as in real images
    x[:, :, -6:] //= 4
    return x


@pytest.mark.parametrize(
    ("kind", "bins"), [("trivialaugment", 31), ("randaugment", 31), ("autoaugment", 10), ("augmix", 10)]
)
@pytest.mark.parametrize("channels", [3, 1])
def test_every_operation_matches_torchvision_exactly(kind, bins, channels):
    """Tolerance: none. Every operation at every third magnitude bin and both signs gives the uint8
    image torchvision's transform gives, pixel for pixel (zero fill; nearest sampling, bilinear for
    AugMix as torchvision's AugMix defaults, rounded to uint8 as its tensor path)."""
    x = image(channels, 0)
    mags, signed = space(kind, bins, 24, 28)
    bilinear = kind == "augmix"
    for k, name in enumerate(OPS if kind != "augmix" else AUGMIX_OPS):
        k = OPS.index(name)
        for level in range(0, bins, 3):
            for sign in (1, -1) if signed[k] else (1,):
                m = float(mags[k, level]) * sign
                ref = _apply_op(x, name, m, InterpolationMode.BILINEAR if bilinear else InterpolationMode.NEAREST, None)
                ours = apply_ops(x[None].float(), torch.tensor([k]), torch.tensor([m]), bilinear=bilinear)[0]
                assert torch.equal(ours, ref.float()), (name, level, m)


def test_a_batch_gives_each_image_its_own_operation_on_both_paths():
    xs = torch.stack([image(3, i) for i in range(len(OPS))]).float()
    mags, _ = space("trivialaugment", 31, 24, 28)
    op = torch.arange(len(OPS))
    mag = (
        mags[op, 20]
        * torch.where(op % 2 == 0, 1.0, -1.0)
        * torch.tensor([0 if OPS[k] in ("Posterize", "Solarize") else 1 for k in range(len(OPS))]).abs().clamp_min(1)
    )
    expected = torch.stack(
        [
            _apply_op(xs[i].to(torch.uint8), OPS[i], float(mag[i]), InterpolationMode.NEAREST, None)
            for i in range(len(OPS))
        ]
    ).float()
    assert torch.equal(apply_ops(xs, op, mag), expected)  # CPU: each operation on its images only
    assert torch.equal(apply_ops(xs, op, mag, sync_free=True), expected)  # GPU's path: everything, then select


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_the_draws_follow_torchvisions_distribution():
    n = 28_000
    ops, mags = Policy("trivialaugment", p=1.0, bins=31, generator=torch.Generator().manual_seed(0)).draw(
        n, 32, 32, "cpu"
    )
    assert ops.shape == (1, n)
    # operations uniform over 14 (chi-square, 13 degrees of freedom: 0.999 quantile 34.5)
    assert chi_square(torch.bincount(ops[0], minlength=DRAWN).float()) < 34.5 and DRAWN == 14
    rot = mags[0][ops[0] == OPS.index("Rotate")]
    assert (rot < 0).float().mean() == pytest.approx(0.5, abs=0.03)  # signed: either way half the time
    levels = torch.round(rot.abs() / (135.0 / 30)).long()  # magnitude bins uniform over 31 (30 dof: 59.7)
    assert chi_square(torch.bincount(levels, minlength=31).float()) < 59.7
    ops, mags = Policy(
        "randaugment", p=0.5, bins=31, num_ops=2, magnitude=9, generator=torch.Generator().manual_seed(1)
    ).draw(n, 32, 32, "cpu")
    assert ops.shape == (2, n) and bool(((ops[0] == 0) == (ops[1] == 0)).float().mean() > 0.5)
    shear = mags[ops == OPS.index("ShearX")].abs()
    assert torch.allclose(shear, torch.full_like(shear, 0.3 * 9 / 30))  # always bin 9 of RandAugment's 0..0.3
    untouched = ((ops == 0).all(0)).float().mean()  # p=0.5, plus identity drawn twice
    assert untouched == pytest.approx(0.5 + 0.5 / 14**2, abs=0.02)


def test_autoaugment_draws_torchvisions_sub_policies_with_their_probabilities():
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    n = 50_000
    table = AutoAugment(AutoAugmentPolicy.SVHN).policies
    ops, mags = Policy("autoaugment", p=1.0, bins=10, policy="svhn", generator=torch.Generator().manual_seed(2)).draw(
        n, 32, 32, "cpu"
    )
    mags_table = space("autoaugment", 10, 32, 32)[0]
    for slot in (0, 1):
        # each operation of this slot is drawn as often as its sub-policies (1/25 each) times their probability
        for name in {sub[slot][0] for sub in table}:
            k = OPS.index(name)
            expected = sum(q for sub in table for o, q, _ in [sub[slot]] if o == name) / len(table)
            assert float((ops[slot] == k).float().mean()) == pytest.approx(expected, abs=0.01), (slot, name)
            allowed = {round(float(mags_table[k, b or 0]), 4) for sub in table for o, _, b in [sub[slot]] if o == name}
            assert {round(float(m), 4) for m in mags[slot][ops[slot] == k].abs().unique()} <= allowed
    # every operation the policy names appears, and none it does not
    named = {OPS.index(o) for sub in table for o, _, _ in sub} | {0}
    assert set(ops.unique().tolist()) == named


def test_augmix_mixes_each_image_as_torchvision_does():
    """Tolerance: none. For each image, its drawn chains replayed through torchvision's _apply_op and
    mixed with AugMix.forward's arithmetic (float32 weights, truncation to uint8) give our image; the
    images the policy skipped (p) come back unchanged."""
    xs = torch.stack([image(3, i) for i in range(48)])
    aug = AugMix(
        p=0.8, severity=3, width=3, depth=0, alpha=1.0, all_ops=True, generator=torch.Generator().manual_seed(5)
    )
    ops, mags, weights, applied = aug.draw(48, 24, 28, "cpu")
    aug.g.manual_seed(5)  # the same draws again, applied
    ours = (aug(xs.float() / 255) * 255).round()
    assert 0 < int(applied.sum()) < 48
    for i in range(48):
        mix = weights[0, i] * xs[i] if applied[i] else xs[i]
        for chain in range(3 if applied[i] else 0):
            one = xs[i]
            for step in range(3):
                if ops[chain, step, i] != 0:
                    one = _apply_op(
                        one, OPS[ops[chain, step, i]], float(mags[chain, step, i]), InterpolationMode.BILINEAR, None
                    )
            mix.add_(weights[chain + 1, i] * one)
        assert torch.equal(ours[i], mix.to(torch.uint8).float()), i


def test_augmix_draws_follow_torchvisions_distribution():
    from scipy import stats

    n = 20_000
    ops, mags, weights, applied = AugMix(
        p=1.0, severity=3, width=3, depth=0, alpha=1.0, all_ops=True, generator=torch.Generator().manual_seed(0)
    ).draw(n, 32, 32, "cpu")
    assert applied.all() and ops.shape == (3, 3, n)
    # chain depth uniform over 1..3 (2 dof: 0.999 quantile 13.8); steps past it are Identity
    depth = (ops != 0).sum(1).flatten()
    assert chi_square(torch.bincount(depth, minlength=4)[1:].float()) < 13.8
    assert ((ops != 0).int().diff(dim=1) <= 0).all()  # an operation never follows an Identity
    # operations uniform over AugMix's 13 (12 dof: 32.9)
    drawn = ops[ops != 0]
    counts = torch.stack([(drawn == OPS.index(o)).sum() for o in AUGMIX_OPS]).float()
    assert chi_square(counts) < 32.9 and int(counts.sum()) == len(drawn)
    # magnitude bins uniform below severity (3 bins, 2 dof): rotation's bins are 0, 10/3, 20/3 degrees
    rot = mags[ops == OPS.index("Rotate")]
    assert chi_square(torch.bincount(torch.round(rot.abs() / (30 / 9)).long(), minlength=3).float()) < 13.8
    assert (rot[rot != 0] < 0).float().mean() == pytest.approx(0.5, abs=0.03)  # bin 0 is 0 degrees either way
    # weights: the image's own ~ Beta(1, 1) = uniform (KS); the chains' share the rest, Dirichlet(1, 1, 1)
    assert torch.allclose(weights.sum(0), torch.ones(n), atol=1e-5)
    assert stats.kstest(weights[0].numpy(), "uniform").pvalue > 0.001
    share = weights[1] / (1 - weights[0])  # a Dirichlet(1,1,1) margin: Beta(1, 2)
    assert stats.kstest(share.numpy(), stats.beta(1, 2).cdf).pvalue > 0.001
    ops, *_ = AugMix(
        p=1.0, severity=1, width=2, depth=2, alpha=1.0, all_ops=False, generator=torch.Generator().manual_seed(1)
    ).draw(1000, 32, 32, "cpu")
    assert (ops != 0).all() and set(ops.unique().tolist()) == {OPS.index(o) for o in AUGMIX_OPS[:9]}


def test_augmix_consistency_loss_is_timms():
    timm_loss = pytest.importorskip("timm.loss")
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3 * 16, 10, generator=g) * 3, torch.randint(10, (16,), generator=g)
    for smoothing in (0.0, 0.1):
        ref = timm_loss.JsdCrossEntropy(num_splits=3, alpha=12, smoothing=smoothing)(logits, y.repeat(3))
        assert float(jsd_cross_entropy(logits, y, 12.0, smoothing)) == pytest.approx(float(ref), rel=1e-5)
    same = logits[:16].repeat(3, 1)  # three identical predictions: no divergence, plain cross-entropy
    assert float(jsd_cross_entropy(same, y, 12.0)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(same[:16], y))
    )


def test_augmix_views_share_everything_but_augmix():
    """With the consistency loss, [clean; AugMix; AugMix]: the three views of an image share its flips,
    affine and erasing (here a noise-filled box, equal in all three), and differ elsewhere."""
    cfg = config.compose(["aug=[flip_rotate,erasing,augmix]", "aug.erasing.p=1", "aug.augmix.jsd=12"]).aug
    xs = torch.stack([image(3, i) for i in range(8)]).float() / 255
    out = Augment(cfg, torch.Generator().manual_seed(0)).images(xs)
    assert out.shape == (24, 3, 24, 28) and Augment.views(cfg) == 3
    clean, a, b = out.view(3, 8, 3, 24, 28)
    same = (clean == a) & (a == b)
    assert same.float().mean() > 0.05  # the erased boxes
    assert not torch.equal(clean, a) and not torch.equal(a, b)


@pytest.mark.slow  # 4 s of training; the policies' oracle tests and test_train's aug variants run fast
def test_a_run_with_a_policy_composes_with_other_options(tmp_path):
    s = train(smoke_cfg("aug=[crop_flip,trivialaugment]"), tmp_path / "ta")
    assert s["status"] == "completed"
    s = train(
        smoke_cfg("aug=randaugment", "aug.randaugment.num_ops=3", "aug.randaugment.magnitude=20"), tmp_path / "ra"
    )
    assert s["status"] == "completed"
    s = train(smoke_cfg("aug=autoaugment", "aug.autoaugment.policy=svhn", "epochs=1"), tmp_path / "aa")
    assert s["status"] == "completed"
    s = train(smoke_cfg("aug=[crop_flip,augmix]", "aug.augmix.jsd=12", "epochs=1"), tmp_path / "am")
    assert s["status"] == "completed" and 0 < s["final_train_acc"] <= 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "aug.randaugment.magnitude=31",
            "aug.randaugment.magnitude=31 is invalid: must be a bin below aug.randaugment.bins",
        ),
        ("aug.randaugment.num_ops=0", "aug.randaugment.num_ops=0 is invalid"),
        ("aug.trivialaugment.p=2", "aug.trivialaugment.p=2.0 is invalid"),
        ("aug.autoaugment.policy=mnist", "aug.autoaugment.policy='mnist' is invalid"),
        ("aug.augmix.severity=11", r"aug.augmix.severity=11 is invalid: must be in \[1, 10\]"),
        ("aug.augmix.alpha=0", "aug.augmix.alpha=0.0 is invalid: must be > 0"),
        ("aug.augmix.width=0", "aug.augmix.width=0 is invalid"),
        ("aug.augmix.jsd=-1", "aug.augmix.jsd=-1.0 is invalid"),
        (
            "aug.augmix.p=1 aug.augmix.jsd=12 aug.mixup.p=0.5",
            "aug.augmix.jsd=12.0 is invalid: does not combine with mixup",
        ),
    ],
)
def test_bad_policy_settings_are_one_line(override, message):
    with pytest.raises(config.ConfigError, match=message):
        errors.preflight(["aug=randaugment", *override.split()])

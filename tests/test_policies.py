"""Policy augmentation (aug=trivialaugment, aug=randaugment): every operation against torchvision's own
at fixed magnitudes, the draws' distribution, the batched paths, and a run."""

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from regx import config, errors
from regx.policies import DRAWN, OPS, Policy, apply_ops, space
from regx.train import train
from tests.conftest import smoke_cfg


def image(c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (c, 24, 28), dtype=torch.uint8, generator=g)
    x[:, :5] = 200  # flat areas and edges, as in real images
    x[:, :, -6:] //= 4
    return x


@pytest.mark.parametrize(("kind", "bins"), [("trivialaugment", 31), ("randaugment", 31), ("autoaugment", 10)])
@pytest.mark.parametrize("channels", [3, 1])
def test_every_operation_matches_torchvision_exactly(kind, bins, channels):
    """Tolerance: none. Every operation at every fourth magnitude bin and both signs gives the uint8
    image torchvision's transform gives, pixel for pixel (nearest sampling, zero fill)."""
    x = image(channels, 0)
    mags, signed = space(kind, bins, 24, 28)
    for k, name in enumerate(OPS):
        for level in range(0, bins, 3):
            for sign in (1, -1) if signed[k] else (1,):
                m = float(mags[k, level]) * sign
                ref = _apply_op(x, name, m, InterpolationMode.NEAREST, None)
                ours = apply_ops(x[None].float(), torch.tensor([k]), torch.tensor([m]))[0]
                assert torch.equal(ours, ref.float()), (name, level, m)


def test_a_batch_gives_each_image_its_own_operation_on_both_paths():
    xs = torch.stack([image(3, i) for i in range(len(OPS))]).float()
    mags, _ = space("trivialaugment", 31, 24, 28)
    op = torch.arange(len(OPS))
    mag = mags[op, 20] * torch.where(op % 2 == 0, 1.0, -1.0) * torch.tensor([0 if OPS[k] in ("Posterize", "Solarize") else 1
                                                                              for k in range(len(OPS))]).abs().clamp_min(1)
    expected = torch.stack([_apply_op(xs[i].to(torch.uint8), OPS[i], float(mag[i]), InterpolationMode.NEAREST, None)
                            for i in range(len(OPS))]).float()
    assert torch.equal(apply_ops(xs, op, mag), expected)  # CPU: each operation on its images only
    assert torch.equal(apply_ops(xs, op, mag, sync_free=True), expected)  # GPU's path: everything, then select


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_the_draws_follow_torchvisions_distribution():
    n = 28_000
    ops, mags = Policy("trivialaugment", p=1.0, bins=31, generator=torch.Generator().manual_seed(0)).draw(n, 32, 32, "cpu")
    assert ops.shape == (1, n)
    # operations uniform over 14 (chi-square, 13 degrees of freedom: 0.999 quantile 34.5)
    assert chi_square(torch.bincount(ops[0], minlength=DRAWN).float()) < 34.5 and DRAWN == 14
    rot = mags[0][ops[0] == OPS.index("Rotate")]
    assert (rot < 0).float().mean() == pytest.approx(0.5, abs=0.03)  # signed: either way half the time
    levels = torch.round(rot.abs() / (135.0 / 30)).long()  # magnitude bins uniform over 31 (30 dof: 59.7)
    assert chi_square(torch.bincount(levels, minlength=31).float()) < 59.7
    ops, mags = Policy("randaugment", p=0.5, bins=31, num_ops=2, magnitude=9,
                       generator=torch.Generator().manual_seed(1)).draw(n, 32, 32, "cpu")
    assert ops.shape == (2, n) and bool(((ops[0] == 0) == (ops[1] == 0)).float().mean() > 0.5)
    shear = mags[ops == OPS.index("ShearX")].abs()
    assert torch.allclose(shear, torch.full_like(shear, 0.3 * 9 / 30))  # always bin 9 of RandAugment's 0..0.3
    untouched = ((ops == 0).all(0)).float().mean()  # p=0.5, plus identity drawn twice
    assert untouched == pytest.approx(0.5 + 0.5 / 14 ** 2, abs=0.02)


def test_autoaugment_draws_torchvisions_sub_policies_with_their_probabilities():
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    n = 50_000
    table = AutoAugment(AutoAugmentPolicy.SVHN).policies
    ops, mags = Policy("autoaugment", p=1.0, bins=10, policy="svhn",
                       generator=torch.Generator().manual_seed(2)).draw(n, 32, 32, "cpu")
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


def test_a_run_with_a_policy_composes_with_other_options(tmp_path):
    s = train(smoke_cfg("aug=[crop_flip,trivialaugment]"), tmp_path / "ta")
    assert s["status"] == "completed"
    s = train(smoke_cfg("aug=randaugment", "aug.randaugment.num_ops=3", "aug.randaugment.magnitude=20"), tmp_path / "ra")
    assert s["status"] == "completed"
    s = train(smoke_cfg("aug=autoaugment", "aug.autoaugment.policy=svhn", "epochs=1"), tmp_path / "aa")
    assert s["status"] == "completed"


@pytest.mark.parametrize(("override", "message"), [
    ("aug.randaugment.magnitude=31", "aug.randaugment.magnitude=31 is invalid: must be a bin below aug.randaugment.bins"),
    ("aug.randaugment.num_ops=0", "aug.randaugment.num_ops=0 is invalid"),
    ("aug.trivialaugment.p=2", "aug.trivialaugment.p=2.0 is invalid"),
    ("aug.autoaugment.policy=mnist", "aug.autoaugment.policy='mnist' is invalid"),
])
def test_bad_policy_settings_are_one_line(override, message):
    with pytest.raises(config.ConfigError, match=message):
        errors.preflight(["aug=randaugment", override])

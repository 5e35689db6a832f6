"""Calibration (Guo et al. 2017): ECE and MCE over 15 equal-width confidence bins, the Brier score, and
temperature scaling, against hand computations and an independent implementation."""

import math

import numpy as np
import pytest
import torch

from regx.engine import BINS, Pipeline, calibration, evaluate, fit_temperature


def test_ece_mce_and_brier_by_hand():
    # two classes; confidences 0.9, 0.9 (one right, one wrong) in bin 13 (13/15, 14/15], 0.6 (right) in bin 8
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    logits, y = probs.log(), torch.tensor([0, 1, 1])
    c = calibration(logits, y)
    # bin 13: accuracy 1/2, confidence 0.9 -> gap 0.4, 2 images; bin 8: accuracy 1, confidence 0.6 -> 0.4, 1 image
    assert c["ece"] == pytest.approx((2 * 0.4 + 1 * 0.4) / 3)
    assert c["mce"] == pytest.approx(0.4)
    brier = ((0.9 - 1) ** 2 + 0.1**2 + 0.9**2 + (0.1 - 1) ** 2 + 0.4**2 + (0.6 - 1) ** 2) / 3
    assert c["brier"] == pytest.approx(brier)
    assert c["bin_count"][13] == 2 and c["bin_count"][8] == 1 and sum(c["bin_count"]) == 3


def _reference(logits: np.ndarray, y: np.ndarray, bins: int = BINS):
    """An independent ECE/MCE/Brier: a loop over the bins, as Guo et al. define them."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    ece, mce = 0.0, 0.0
    for i in range(bins):
        inside = (conf > i / bins) & (conf <= (i + 1) / bins)
        if inside.any():
            gap = abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
            ece += inside.mean() * gap
            mce = max(mce, gap)
    brier = ((p - np.eye(p.shape[1])[y]) ** 2).sum(1).mean()
    return ece, mce, brier


def test_calibration_equals_an_independent_implementation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5000, 10)) * 3
    y = np.where(rng.random(5000) < 0.6, logits.argmax(1), rng.integers(0, 10, 5000))
    ours = calibration(torch.tensor(logits, dtype=torch.float32), torch.tensor(y))
    ece, mce, brier = _reference(logits.astype(np.float32).astype(np.float64), y)
    assert ours["ece"] == pytest.approx(ece, abs=1e-5) and ours["mce"] == pytest.approx(mce, abs=1e-5)
    assert ours["brier"] == pytest.approx(brier, rel=1e-5)


def test_calibration_equals_torchmetrics_where_installed():
    tm = pytest.importorskip("torchmetrics.functional.classification", reason="torchmetrics is not installed")
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(2000, 10)) * 3, dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 10, 2000))
    theirs = tm.multiclass_calibration_error(logits.softmax(1), y, 10, n_bins=15)
    assert calibration(logits, y)["ece"] == pytest.approx(float(theirs), abs=1e-4)


def test_evaluate_sums_calibration_over_batches_as_one():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :4] * 3

    x = torch.randint(0, 255, (64, 1, 2, 2), dtype=torch.uint8)
    y = torch.randint(0, 4, (64,))
    pipe = Pipeline(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), False)
    amp = torch.autocast("cpu", enabled=False)
    batched = evaluate(Fixed(), [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)], pipeline=pipe, amp=amp)
    whole = calibration(Fixed()(x.float() / 255), y)
    assert batched.ece == pytest.approx(whole["ece"]) and batched.brier == pytest.approx(whole["brier"])


def test_temperature_scaling_finds_the_overconfidence():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 5, generator=g) * 2
    y = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)  # calibrated by construction at T = 1
    t = fit_temperature(logits * 3, y)  # three times too confident
    assert t == pytest.approx(3.0, rel=0.05)
    assert calibration(logits * 3 / t, y)["ece"] < calibration(logits * 3, y)["ece"] / 3
    assert math.isfinite(fit_temperature(logits, y))


def test_runs_and_eval_record_calibration(tmp_path, cli):
    from regx.files import read_metrics, read_summary

    assert cli("train", "debug=smoke", "epochs=1", "hydra.run.dir=r").returncode == 0
    row = read_metrics(tmp_path / "r/metrics.csv")[0]
    s = read_summary(tmp_path / "r")
    assert 0 <= float(row["val_ece"]) <= 1 and 0 <= float(row["val_brier"]) <= 2 and 0 <= s["test_ece"] <= 1
    res = cli("eval", "r")
    assert res.returncode == 0 and "calibration: ECE" in res.stdout and "temperature" in res.stdout, res.stderr
    assert (tmp_path / "r/reliability.png").stat().st_size > 5_000

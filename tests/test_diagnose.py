"""Verdict rules on synthetic curves, and on real runs."""

import pytest
from omegaconf import OmegaConf

from regx import config
from regx.diagnose import remedies, verdict
from regx.train import train


def rows(train_acc, val_acc, train_loss=None, val_loss=None, clean=None):
    n = len(train_acc)
    train_loss = train_loss or [1.0 - 0.05 * i for i in range(n)]
    val_loss = val_loss or [1.0 - 0.04 * i for i in range(n)]
    out = []
    for i in range(n):
        r = dict(epoch=i + 1, train_acc=train_acc[i], val_acc=val_acc[i], train_loss=train_loss[i], val_loss=val_loss[i])
        if clean is not None:
            r["clean_train_acc"] = clean[i]
        out.append(r)
    return out


def test_nan_is_diverged():
    kind, ev = verdict(rows([0.5, 0.6], [0.5, 0.6], train_loss=[1.0, float("nan")]))
    assert kind == "diverged" and ev["epoch"] == 2


def test_large_gap_is_overfitting():
    kind, ev = verdict(rows([0.9, 0.99, 1.0], [0.6, 0.65, 0.66]))
    assert kind == "overfitting" and ev["gap"] == 0.34


def test_rising_validation_loss_with_a_moderate_gap_is_overfitting():
    r = rows([0.9, 0.95, 0.98, 0.99], [0.9, 0.92, 0.92, 0.92], train_loss=[0.5, 0.3, 0.2, 0.1],
             val_loss=[0.5, 0.3, 0.35, 0.45])
    kind, ev = verdict(r)
    assert kind == "overfitting" and ev["val_loss_rising"] and ev["min_val_loss_epoch"] == 2


def test_low_and_climbing_training_accuracy_is_underfitting():
    kind, ev = verdict(rows([0.3, 0.45, 0.6], [0.32, 0.44, 0.58]))
    assert kind == "underfitting" and ev["train_acc_gain_last_2_epochs"] == 0.3


def test_close_and_high_is_a_good_fit():
    assert verdict(rows([0.9, 0.97, 0.98], [0.88, 0.95, 0.96]))[0] == "good_fit"


def test_clean_training_accuracy_decides_the_gap():
    # augmented training accuracy is low, but the clean one shows the model memorized its data
    kind, ev = verdict(rows([0.6, 0.7], [0.6, 0.65], clean=[0.9, 1.0]))
    assert kind == "overfitting" and ev["train_acc_is_clean"] and ev["gap"] == 0.35


@pytest.mark.parametrize(("kind", "run"), [
    ("overfitting", ["aug=none", "dropout=none", "wd=0", "data.train_size=500"]),  # unregularized, little data
    ("underfitting", ["aug=all", "dropout=fc", "wd=5e-4", "epochs=10"]),  # heavily regularized, short
    ("diverged", ["lr=0.1"]),
])
def test_remedies_are_overrides_that_compose_and_change_such_a_run(kind, run):
    before = config.compose(run)
    for what, override in remedies(kind, epochs=10, lr=0.1):
        after = config.compose([*run, *override.split()])
        changed = [k for k in config.flat_keys(after) if OmegaConf.select(after, k) != OmegaConf.select(before, k)]
        assert changed, (what, override)


def test_a_short_run_underfits_and_a_tiny_subset_overfits(tmp_path):
    short = train(config.compose(["debug=smoke", "epochs=1"]), tmp_path / "short")
    assert short["verdict"] == "underfitting"
    over = train(config.compose(["debug=smoke", "data.train_size=64", "data.image_size=16", "epochs=40",
                                 "batch_size=16", "sched=constant", "wd=0", "model.channels=[16,32]",
                                 "model.fc=[64]"]), tmp_path / "over")
    assert over["verdict"] == "overfitting", over["evidence"]
    assert over["evidence"]["train_acc_is_clean"]

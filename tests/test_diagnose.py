"""Verdict rules on synthetic curves, and on real runs."""

import json
import re

import pytest
from omegaconf import OmegaConf

from regx import config
from regx.diagnose import command, more_steps, remedies, verdict
from regx.train import train


def rows(train_acc, val_acc, train_loss=None, val_loss=None, clean=None):
    n = len(train_acc)
    train_loss = train_loss or [1.0 - 0.05 * i for i in range(n)]
    val_loss = val_loss or [1.0 - 0.04 * i for i in range(n)]
    out = []
    for i in range(n):
        r = dict(
            epoch=i + 1, train_acc=train_acc[i], val_acc=val_acc[i], train_loss=train_loss[i], val_loss=val_loss[i]
        )
        if clean is not None:
            r["clean_train_acc"] = clean[i]
        out.append(r)
    return out


def test_the_variance_line_is_the_rule_in_words():
    """diagnose.variance_gap, which the verdict and report.png's bias-variance map both use, is the rule
    the docs state: a gap of at least 10 points, or of at least 5 that is half the validation error or more;
    and the verdict on a run of that gap (losses falling, nothing past its best) says so."""
    from regx.diagnose import variance_gap

    for val in [i / 100 for i in range(60, 100, 3)]:
        for gap in [i / 200 + 0.0005 for i in range(0, 30)]:  # off the boundaries, where float sums round
            if val + gap > 1:
                continue
            rule = gap >= 0.10 or (gap >= 0.05 and gap >= 0.5 * (1 - val))
            assert (gap >= variance_gap(val)) == rule, (val, gap)
            _, ev = verdict(rows([0.5, val + gap], [0.5, val]))
            assert ev["high_variance"] == rule, (val, gap)


def test_nan_is_diverged():
    kind, ev = verdict(rows([0.5, 0.6], [0.5, 0.6], train_loss=[1.0, float("nan")]))
    assert kind == "diverged" and ev["epoch"] == 2


def test_large_gap_is_overfitting():
    kind, ev = verdict(rows([0.9, 0.99, 1.0], [0.6, 0.65, 0.66]))
    assert kind == "overfitting" and ev["gap"] == 0.34


def test_rising_validation_loss_with_a_moderate_gap_is_overfitting():
    r = rows(
        [0.9, 0.95, 0.98, 0.99],
        [0.9, 0.92, 0.92, 0.92],
        train_loss=[0.5, 0.3, 0.2, 0.1],
        val_loss=[0.5, 0.3, 0.35, 0.45],
    )
    kind, ev = verdict(r)
    assert kind == "overfitting" and ev["past_best"] and ev["min_val_loss_epoch"] == 2


def test_low_and_climbing_training_accuracy_is_underfitting():
    kind, ev = verdict(rows([0.3, 0.45, 0.6], [0.32, 0.44, 0.58]))
    assert kind == "underfitting" and ev["train_acc_gain_last_2_epochs"] == 0.3


def test_close_and_high_is_a_good_fit():
    assert verdict(rows([0.9, 0.97, 0.98], [0.88, 0.95, 0.96]))[0] == "good_fit"


def test_clean_training_accuracy_decides_the_gap():
    # augmented training accuracy is low, but the clean one shows the model memorized its data
    kind, ev = verdict(rows([0.6, 0.7], [0.6, 0.65], clean=[0.9, 1.0]))
    assert kind == "overfitting" and ev["train_acc_is_clean"] and ev["gap"] == 0.35


def test_averaged_weights_are_judged_on_their_own_accuracies():
    # the trained weights memorized (clean 1.0 against 0.80); best.pt's averaged weights did not
    r = rows([0.8, 0.9], [0.78, 0.80], clean=[0.95, 1.0])
    for row, avg_val, avg_clean in zip(r, [0.86, 0.93], [0.90, 0.96]):
        row.update(avg_val_acc=avg_val, avg_val_loss=row["val_loss"], avg_clean_train_acc=avg_clean)
    assert verdict(r)[0] == "overfitting"
    kind, ev = verdict(r, averaged=True)
    assert kind == "good_fit" and ev["weights"] == "averaged" and (ev["train_acc"], ev["val_acc"]) == (0.96, 0.93)
    # a row the average has not reached (SWA before its start) counts as trained
    r[1].update(avg_val_acc="", avg_val_loss="", avg_clean_train_acc="")
    kind, ev = verdict(r, best_epoch=2, averaged=True)
    assert kind == "overfitting" and ev["weights"] == "trained" and ev["val_acc"] == 0.80


EVIDENCE = {
    "overfitting": {"past_best": True},
    "underfitting": {"train_acc_gain_last_2_epochs": 0.05},
    "diverged": {},
}


def suggested(kind, run, **evidence):
    cfg = config.compose(run)
    return cfg, remedies(kind, cfg, {**EVIDENCE[kind], "optimizer_steps": 1000, **evidence}, 10_000)


@pytest.mark.parametrize(
    ("kind", "run"),
    [
        ("overfitting", ["aug=none", "dropout=none", "wd=0", "data.train_size=500"]),  # unregularized, little data
        ("overfitting", ["aug=crop_flip", "dropout=fc", "wd=5e-4"]),  # regularized some: stronger
        ("underfitting", ["aug=all", "dropout=fc", "wd=5e-4", "epochs=10"]),  # heavily regularized, short
        ("underfitting", ["aug=none", "dropout=none", "wd=0"]),
        ("diverged", ["lr=0.1"]),
    ],
)
def test_every_remedy_composes_and_changes_the_run(kind, run):
    before, pairs = suggested(kind, run)
    assert pairs
    for what, override in pairs:
        after = config.compose([*run, *override.split()])
        changed = [k for k in config.flat_keys(after) if OmegaConf.select(after, k) != OmegaConf.select(before, k)]
        assert changed, (what, override)


def test_remedies_suggest_nothing_the_run_already_has():
    """Main suggested wd=5e-4 to a run at 5e-4, and aug=none dropout=none to a run with neither."""
    _, pairs = suggested(
        "overfitting",
        ["aug=crop_flip", "aug.erasing.p=0.25", "dropout=fc", "dropout.p=0.5", "wd=5e-3", "early_stop.patience=5"],
    )
    assert pairs == []  # every regularizer is there, strong, and all the data is used
    _, pairs = suggested("underfitting", ["aug=none", "dropout=none", "wd=0"])
    shown = " ".join(how for _, how in pairs)
    assert "aug=" not in shown and "dropout" not in shown and "wd=" not in shown
    assert [what.split(" (")[0] for what, _ in pairs] == ["train longer", "a higher learning rate", "a larger model"]
    _, pairs = suggested("overfitting", ["aug=none", "dropout=none", "wd=0"], past_best=False)
    assert [how for _, how in pairs] == ["aug=crop_flip", "decay=l2 wd=5e-4", "dropout=fc", "early_stop.patience=5"]


def test_remedies_rank_by_the_evidence():
    _, rising = suggested("overfitting", ["aug=none", "wd=0"], past_best=True)
    assert rising[0][1] == "early_stop.patience=5"
    _, still = suggested("underfitting", ["aug=all", "dropout=fc"], train_acc_gain_last_2_epochs=0.05)
    assert still[0][1] == "epochs=24"  # still climbing: time first
    _, flat = suggested("underfitting", ["aug=all", "dropout=fc"], train_acc_gain_last_2_epochs=0.0)
    assert [how for _, how in flat][:3] == ["aug=none", "dropout=none", "wd=0.0001"]


def test_early_stopping_is_suggested_only_where_it_can_trigger():
    """On main early_stop.patience=5 was suggested to 1- and 3-epoch runs."""
    for epochs, patience in ((1, None), (3, None), (4, 2), (6, 3), (30, 5)):
        _, pairs = suggested("overfitting", ["aug=none", "wd=0", f"epochs={epochs}"], past_best=True)
        shown = [how for _, how in pairs if how.startswith("early_stop")]
        assert shown == ([f"early_stop.patience={patience}"] if patience else []), epochs
    # a run whose best epoch is too near its end for the patience to have stopped it (main said "stop at
    # the best epoch" with patience 5 to a 150-epoch run that peaked at epoch 149)
    for best, shown in ((149, []), (146, []), (145, ["early_stop.patience=5"])):
        for rising in (False, True):
            _, pairs = suggested(
                "overfitting", ["aug=none", "wd=0", "epochs=150"], past_best=rising, epoch=best, epochs=150
            )
            assert [how for _, how in pairs if how.startswith("early_stop")] == shown, (best, rising)


def test_few_steps_come_first_with_a_batch_size():
    cfg = config.compose(["batch_size=128", "epochs=30"])
    pairs = remedies("underfitting", cfg, {"optimizer_steps": 30}, 90)
    assert pairs[0] == ("more optimizer steps (this run took 30)", "batch_size=8")


def test_few_steps_in_a_short_run_ask_for_more_epochs_not_a_smaller_batch():
    """2,000 images in batches of 32 for 3 epochs: 63 steps an epoch suit the data, the run is short
    (on real data a smaller batch did not help such a run: docs/results.md, "Remedies, applied")."""
    cfg = config.compose(["batch_size=32", "epochs=3", "aug=all", "dropout=fc"])
    pairs = remedies("underfitting", cfg, {"optimizer_steps": 189, "train_acc_gain_last_2_epochs": 0.2}, 2000)
    assert pairs[0] == ("more optimizer steps (this run took 189)", "epochs=6")
    assert [how for _, how in pairs].count("epochs=6") == 1  # not suggested twice as "train longer"
    assert more_steps(2000, 3, 32) == ("epochs=6", 378) and more_steps(2000, 1, 32) == ("epochs=4", 252)
    assert more_steps(90, 30, 64) == ("batch_size=8", 360) and more_steps(5, 30, 8) == (None, 0)


def test_a_remedy_is_a_command_to_paste():
    assert (
        command(["data.train_size=500", "wd=0", "hydra.run.dir=x"], "decay=l2 wd=5e-4")
        == "regx train data.train_size=500 decay=l2 wd=5e-4"
    )


def test_a_short_run_underfits_and_a_tiny_subset_overfits(tmp_path):
    short = train(config.compose(["debug=smoke", "epochs=1"]), tmp_path / "short")
    assert short["verdict"] == "underfitting"
    over = train(
        config.compose(
            [
                "debug=smoke",
                "data.train_size=64",
                "data.image_size=16",
                "epochs=40",
                "batch_size=16",
                "sched=constant",
                "wd=0",
                "model.channels=[16,32]",
                "model.fc=[64]",
            ]
        ),
        tmp_path / "over",
    )
    assert over["evidence"]["high_variance"] and over["verdict"] in ("overfitting", "both"), over["evidence"]
    assert over["evidence"]["train_acc_is_clean"]


def test_a_run_with_few_steps_says_so_before_training_and_in_its_remedies(tmp_path, cli):
    res = cli("train", "debug=smoke", "data.train_size=90", "epochs=3", "batch_size=64", "hydra.run.dir=r")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    warn = "only 6 optimizer steps in all (2 per epoch x 3 epochs: 90 training images in batches of 64)"
    assert warn in out and out.index(warn) < out.index("epoch 1/3")
    assert "too few to judge a regularizer by: batch_size=8 gives about 36" in out
    assert "only 6 optimizer steps, too few to judge by" in out  # the verdict's line says so too
    verdict = next(line for line in out.splitlines() if line.startswith("verdict: "))
    assert "validation has only 40 images (one is 2.5 points): a rough verdict" in verdict
    assert re.search(r", gap [+-]\d+\.\dpp", verdict)  # points, as on the epoch lines (main: "gap 13.59%")
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["evidence"]["optimizer_steps"] == 6
    assert s["remedies"][0] == (
        "more optimizer steps (this run took 6): regx train debug=smoke data.train_size=90 epochs=3 batch_size=8"
    )


CURVES = __import__("pathlib").Path(__file__).parent / "data" / "curves"


@pytest.mark.parametrize(
    ("name", "best", "kind", "bias", "variance"),
    [
        ("a", 22, "overfitting", False, True),  # 500 images, nothing to regularize them: 100% vs 82%
        ("b", 25, "underfitting", True, False),  # a tiny network under heavy augmentation: 57% vs 57%
        ("c", 19, "overfitting", False, True),  # most of the validation error is the gap, and it went past its best
        ("e", 59, "both", True, True),  # 78% vs 66%: was "overfitting"; the network does not fit its own data either
        ("f", 25, "good_fit", False, False),
        ("f21", 16, "both", True, True),  # validation loss 2x its minimum, a 2.5-point gap: was "underfitting"
    ],
)
def test_the_verdict_on_real_curves(name, best, kind, bias, variance):
    """metrics.csv of real Fashion-MNIST runs (tests/data/curves/README.md), judged at their best epoch."""
    import csv

    got, ev = verdict(list(csv.DictReader(open(CURVES / f"{name}.csv"))), best_epoch=best)
    assert (got, ev["high_bias"], ev["high_variance"], ev["epoch"]) == (kind, bias, variance, best), ev


def test_both_puts_the_bias_first_without_less_regularization():
    cfg = config.compose(["aug=all", "dropout=fc", "data.train_size=500"])
    pairs = remedies("both", cfg, {"optimizer_steps": 1000, "train_acc_gain_last_2_epochs": 0.05}, 500)
    hows = [how for _, how in pairs]
    assert hows[0].startswith("epochs=") and "data.train_size=null" in hows
    assert not any(h in ("aug=none", "dropout=none") or h.startswith("wd=") for h in hows)


def test_remedies_never_mirror_digits():
    mnist = config.compose(["data=mnist", "aug=none", "dropout=none", "wd=0"])
    assert not mnist.data.mirror
    hows = [how for _, how in remedies("overfitting", mnist, {"optimizer_steps": 1000}, 60000)]
    assert "aug=scale_crop" in hows and not any("flip" in h for h in hows)

"""data.label_noise: a seeded fraction of the training labels made wrong on purpose, and the memorization
curve (the flipped images against the labels they were given, and their true ones) every epoch."""

import json

import pytest
import torch

from regx.data.core import Split, noisy_labels
from tests.conftest import load, smoke_cfg


def test_symmetric_noise_flips_exactly_that_fraction_to_every_other_class_alike():
    y = torch.arange(10).repeat(1000)
    split = noisy_labels(Split(y=y), 0.2, "symmetric", 10, torch.Generator().manual_seed(0))
    flipped = split.y != split.true_y
    assert int(flipped.sum()) == 2000 and torch.equal(split.true_y, y)
    moved = (split.y[flipped] - split.true_y[flipped]) % 10  # 1..9, uniform
    counts = torch.bincount(moved, minlength=10)[1:].float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
    again = noisy_labels(Split(y=y), 0.2, "symmetric", 10, torch.Generator().manual_seed(0))
    assert torch.equal(again.y, split.y)  # seeded


def test_pairflip_sends_each_class_to_the_next():
    y = torch.arange(5).repeat(20)
    split = noisy_labels(Split(y=y), 0.5, "pairflip", 5, torch.Generator().manual_seed(1))
    flipped = split.y != split.true_y
    assert int(flipped.sum()) == 50 and torch.equal(split.y[flipped], (split.true_y[flipped] + 1) % 5)


def test_only_the_training_labels_are_noisy():
    plain = load("shapes", n_train=400, n_test=50, image_size=16)
    noisy = load("shapes", n_train=400, n_test=50, image_size=16, label_noise=0.25)
    assert torch.equal(noisy.train.x, plain.train.x) and torch.equal(noisy.train.true_y, plain.train.y)
    assert int((noisy.train.y != plain.train.y).sum()) == round(0.25 * len(plain.train))
    assert torch.equal(noisy.val.y, plain.val.y) and torch.equal(noisy.test.y, plain.test.y)
    assert noisy.val.true_y is None


def test_a_noisy_run_records_what_it_flipped_and_its_memorization(tmp_path):
    from regx.files import read_metrics
    from regx.train import train

    s = train(smoke_cfg("epochs=2", "data.label_noise=0.3"), tmp_path / "r")
    rows = read_metrics(tmp_path / "r/metrics.csv")
    assert all(0 <= float(r["noisy_given_acc"]) <= 1 and 0 <= float(r["noisy_true_acc"]) <= 1 for r in rows)
    record = json.loads((tmp_path / "r/label_noise.json").read_text())
    assert record["rate"] == 0.3 and len(record["flipped"]) == round(0.3 * record["n_train"])
    assert all(g != t for g, t in zip(record["given"], record["true"]))
    assert s["evidence"]["memorized_final"] == pytest.approx(float(rows[-1]["noisy_given_acc"]))
    plain = train(smoke_cfg("epochs=1"), tmp_path / "p")
    assert (
        read_metrics(tmp_path / "p/metrics.csv")[0]["noisy_given_acc"] == ""
        and "memorized_final" not in plain["evidence"]
    )
    assert not (tmp_path / "p/label_noise.json").exists()


@pytest.mark.parametrize("value", ["data.label_noise=1", "data.label_noise=-0.1", "data.label_noise_kind=random"])
def test_bad_noise_is_one_line(tmp_path, cli, value):
    res = cli("train", "debug=smoke", value)
    assert res.returncode == 2 and value.split("=")[0] in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_a_streamed_split_hands_its_loader_the_noisy_labels():
    from regx.data.folders import file_split

    y = torch.arange(4).repeat(5)
    split = noisy_labels(
        file_split([f"{i}.png" for i in range(20)], y, 16), 0.5, "pairflip", 4, torch.Generator().manual_seed(0)
    )
    assert torch.equal(split.files.labels, split.y) and not torch.equal(split.y, y)


def test_the_clean_training_subset_is_scored_against_the_true_labels():
    from regx.distributed import Ranks
    from regx.train import build

    cpu = torch.device("cpu")
    noisy = build(smoke_cfg("data.label_noise=0.4"), cpu, Ranks())
    plain = build(smoke_cfg(), cpu, Ranks())
    assert torch.equal(noisy.clean.x, plain.clean.x) and torch.equal(noisy.clean.y, plain.clean.y)  # the same subset
    assert not torch.equal(noisy.data.train.y, plain.data.train.y)  # though the training labels differ

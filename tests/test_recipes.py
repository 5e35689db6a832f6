"""Experiment presets on real data (Debian's dataset-fashion-mnist; skipped where it is absent)."""

from pathlib import Path

import pytest

from regx import config
from regx.train import train

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_the_fashion_mnist_preset_learns_real_clothing(tmp_path):
    """A short run of the preset on a real subset: what the preset's full run (93.55% test, see the
    README) starts from. Each epoch here is 2,000 real images."""
    cfg = config.compose(["experiment=fashion_mnist", "data.train_size=2000", "data.val_fraction=0.02", "epochs=3",
                          f"data.root={tmp_path}"])
    s = train(cfg, tmp_path / "run")
    assert s["status"] == "completed" and s["n_train"] == 2000 and s["n_test"] == 10_000
    assert s["test_acc"] > 0.70, s["test_acc"]

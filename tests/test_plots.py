"""The PNGs regx writes: every title inside the picture, whatever its length."""

import pytest
import torch

from regx import plots

RUN = "2026-12-06_05-17-34_fashion_mnist_1000"  # run names make the longest titles
LONG = f"{RUN}: best.pt (epoch 140) on fashion_mnist test, accuracy 87.20%, and then some more words"


def _titles_outside(draw, monkeypatch) -> list[str]:
    """The titles (each axes' and the figure's) that a chart drawn by `draw()` puts beyond its edges, as
    regx's save_figure lays it out."""
    from matplotlib.figure import Figure

    outside, real = [], Figure.savefig

    def check(fig, *args, **kwargs):
        fig.canvas.draw()
        box = fig.bbox
        for text in [ax.title for ax in fig.axes] + list(fig.texts):
            ext = text.get_window_extent()
            if text.get_text() and (ext.x0 < box.x0 - 1 or ext.x1 > box.x1 + 1 or ext.y1 > box.y1 + 1):
                outside.append(text.get_text())
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", check)
    draw()
    return outside


ROWS = [
    dict(epoch=i, train_loss=1 / i, clean_train_loss=1 / i, val_loss=1.2 / i, lr=0.05, train_acc=0.5)
    | dict(clean_train_acc=0.6, val_acc=0.5 + i / 1000)
    for i in range(1, 31)
]
ARM = {"mean": 0.872, "std": 0.004, "diff": 0.029, "ci95": 0.018, "scores": {0: 0.867, 1: 0.874, 2: 0.874}}
BASE = {"mean": 0.843, "std": 0.003, "diff": None, "ci95": None, "scores": {0: 0.847, 1: 0.842, 2: 0.840}}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plots.curves_plot("c.png", ROWS, LONG + " " + LONG),
        lambda: plots.arms_chart("a.png", [{"arm": "baseline", **BASE}, {"arm": "recipe", **ARM}], "test", LONG),
        lambda: plots.confusion_plot("m.png", torch.randint(0, 90, (10, 10)), CLASSES, LONG),
        lambda: plots.lr_plot("l.png", [0.05] * 300, 10, LONG),
    ],
    ids=["curves", "ablation", "confusion", "lr"],
)
def test_every_title_fits_inside_its_picture(draw, tmp_path, monkeypatch):
    """On main the caption of a two-arm ablation.png ran past its right edge, as did a confusion matrix's
    title with a run name in it (10 classes) and lr-plot's plateau note."""
    monkeypatch.chdir(tmp_path)
    assert _titles_outside(draw, monkeypatch) == []
    assert list(tmp_path.glob("*.png"))

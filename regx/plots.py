"""Pictures a user looks at: learning curves, augmentation grids, learning-rate plots, confusion
matrices. Every one is written through save_figure or write_atomic: a viewer never sees half a PNG."""

from __future__ import annotations

from pathlib import Path

import torch

from regx.augment import Augment


def pick_examples(y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of up to n examples, one per class first (so every class shows), in class order."""
    firsts = [int(torch.nonzero(y == c)[0]) for c in torch.unique(y).tolist()]
    rest = [i for i in range(len(y)) if i not in set(firsts)]
    return torch.tensor((firsts + rest)[:n])


def aug_grid(images: torch.Tensor, augment: Augment | None, rows: int = 4, cell: int = 64):
    """A PIL image: the originals in the first row, then `rows` rows of augmented copies of them.

    images: uint8 N,C,H,W. Mixup and cutmix mix within each row, as they do within a batch.
    """
    from PIL import Image, ImageDraw

    x = images.float() / 255
    grid = [x]
    if augment is not None:
        for _ in range(rows):
            grid.append(augment(x.clone())[0][-len(x) :])  # with AugMix's consistency loss: an AugMix view
    n, c, h, w = x.shape
    scale = max(1, cell // max(h, w))
    pad, gap, label = 2, 6, 64  # white lines between cells, a wider one under the originals; row labels
    height = len(grid) * (h * scale + pad) + pad + (gap if len(grid) > 1 else 0)
    canvas = torch.ones(3, height, label + n * (w * scale + pad) + pad)
    tops = []
    for r, row in enumerate(grid):
        row = row.clamp(0, 1).expand(-1, 3, -1, -1) if c == 1 else row.clamp(0, 1)
        row = torch.nn.functional.interpolate(row, scale_factor=scale, mode="nearest") if scale > 1 else row
        tops.append(pad + r * (h * scale + pad) + (gap if r > 0 else 0))
        for i in range(n):
            left = label + pad + i * (w * scale + pad)
            canvas[:, tops[-1] : tops[-1] + h * scale, left : left + w * scale] = row[i]
    image = Image.fromarray((canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    draw = ImageDraw.Draw(image)
    for r, top in enumerate(tops):
        draw.text((4, top + h * scale // 2 - 6), "original" if r == 0 else f"aug {r}", fill=(0, 0, 0))
    return image


def save_aug_grid(path: Path, images: torch.Tensor, aug_cfg, seed: int = 0, rows: int = 4) -> Path:
    """Write the augmentation preview PNG; uses its own generator, so it never shifts a run's draws."""
    from regx.files import write_atomic

    augment = Augment(aug_cfg, torch.Generator().manual_seed(seed)) if Augment.active(aug_cfg) else None
    grid = aug_grid(images.cpu(), augment, rows=rows)
    write_atomic(Path(path), lambda f: grid.save(f, format="PNG"))
    return Path(path)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write through a temporary file and a rename (a viewer never sees half a picture), close."""
    import matplotlib.pyplot as plt

    from regx.files import write_atomic

    fig.tight_layout()
    try:
        write_atomic(Path(path), lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def lr_plot(path: Path, lrs: list[float], steps_per_epoch: int, title: str) -> Path:
    """Plot the learning rate against epochs (one point per optimizer step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot([s / steps_per_epoch for s in range(len(lrs))], lrs, lw=1.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(0, len(lrs) / steps_per_epoch)
    ax.set_ylim(bottom=0)
    return save_figure(fig, path)


def curves_plot(path: Path, rows: list[dict], title: str = "") -> Path:
    """Loss and accuracy per epoch: training as trained (augmentation, dropout), clean training (eval
    mode, no augmentation: what the gap uses) and validation; the best epoch marked; LR on a 2nd axis."""
    return save_figure(curves_figure(rows, title), path)


def curves_figure(rows: list[dict], title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def col(key, scale=1.0):
        return [scale * float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]

    epochs = [int(r["epoch"]) for r in rows]
    clean = any(r.get("clean_train_acc") not in (None, "") for r in rows)
    best = epochs[max(range(len(rows)), key=lambda i: float(rows[i]["val_acc"]))] if rows else None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    ax_loss.plot(epochs, col("train_loss"), "o-", ms=3, label="train loss (as trained)")
    if clean:
        ax_loss.plot(epochs, col("clean_train_loss"), "o--", ms=3, color="C2", label="clean train loss")
    ax_loss.plot(epochs, col("val_loss"), "o-", ms=3, color="C1", label="validation loss")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(epochs, col("lr"), color="gray", ls=":", label="learning rate")
    ax_lr.set_ylabel("learning rate (end of epoch)", color="gray")
    ax_lr.set_ylim(bottom=0)
    ax_acc.plot(epochs, col("train_acc", 100), "o-", ms=3, label="train accuracy (as trained)")
    if clean:
        ax_acc.plot(
            epochs,
            col("clean_train_acc", 100),
            "o--",
            ms=3,
            color="C2",
            label="clean train accuracy (eval mode, no augmentation)",
        )
    ax_acc.plot(epochs, col("val_acc", 100), "o-", ms=3, color="C1", label="validation accuracy")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best is not None:
            ax.axvline(best, color="green", alpha=0.4, lw=2, label=f"best epoch ({best})")
    lines = ax_loss.get_legend_handles_labels()
    extra = ax_lr.get_legend_handles_labels()
    ax_loss.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8)
    ax_acc.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def confusion_plot(path: Path, cm: torch.Tensor, classes: list[str], title: str) -> Path:
    """The confusion matrix, coloured by the row-normalized rate, counts written in when it fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    rates = (cm.float() / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
    side = min(max(5.0, 0.45 * k + 2), 30)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    ticks = range(k)
    labels = classes if k <= 40 else [str(i) for i in ticks]
    ax.set_xticks(ticks, labels, rotation=45 if k > 5 else 0, ha="right" if k > 5 else "center", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)

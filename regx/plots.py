"""Pictures a user looks at: learning curves, augmentation grids, learning-rate plots, confusion
matrices. Every one is written through save_figure or write_atomic: a viewer never sees half a PNG."""

from __future__ import annotations

import math
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


def _fit_titles(fig) -> None:
    """Break every title into lines that fit where it is drawn: an axes' title over the axes (a little
    wider: it may overhang the margins), the figure's titles over the figure. DejaVu Sans averages about
    0.55 of its size per character; 0.6 leaves room. Long words (run names) are broken where they must be."""
    import textwrap

    width = fig.get_figwidth() * 72  # points
    titles = [(ax.title, min(width, 1.2 * ax.get_position().width * width)) for ax in fig.axes]
    for text, room in [*titles, *((t, width) for t in fig.texts)]:
        chars = max(20, int(room / (0.6 * text.get_fontsize())))
        lines = text.get_text().split("\n")
        text.set_text("\n".join(part for line in lines for part in (textwrap.wrap(line, chars) or [""])))


def save_figure(fig, path: Path) -> Path:
    """Lay out, write through a temporary file and a rename (a viewer never sees half a picture), close."""
    import matplotlib.pyplot as plt

    from regx.files import write_atomic

    _fit_titles(fig)
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
    if any(r.get("noisy_given_acc") not in (None, "") for r in rows):  # data.label_noise: the memorization curve
        ax_acc.plot(
            epochs, col("noisy_given_acc", 100), "x--", ms=4, color="C3", label="flipped images: wrong label fit"
        )
        ax_acc.plot(epochs, col("noisy_true_acc", 100), "x:", ms=4, color="C4", label="flipped images: true label")
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


def arms_chart(path: Path, data: list[dict], metric: str, title: str) -> None:
    """Each arm's mean with its std over seeds (a point and bar: the axis is zoomed to the values, where a
    bar from zero would hide the differences and a bar from elsewhere would exaggerate them), the seeds
    as dots, the baseline as a line, and above each arm its difference from the baseline with that
    difference's 95% interval (the paired one, from ablation.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(data) + 2), 4.4), dpi=110)
    names = [d["arm"] for d in data]
    means = [100 * (d["mean"] or 0) for d in data]
    stds = [100 * (d["std"] or 0) for d in data]
    for i, d in enumerate(data):
        colour = "#666666" if d["arm"] == "baseline" else "#4c72b0"
        ax.errorbar([i], [means[i]], yerr=[stds[i]], fmt="o", markersize=8, capsize=5, color=colour, zorder=2)
        ax.scatter([i] * len(d["scores"]), [100 * v for v in d["scores"].values()], color="black", s=10, zorder=3)
        if d["diff"] is not None:
            label = f"{100 * d['diff']:+.1f}" + ("" if d["ci95"] is None else f" ± {100 * d['ci95']:.1f}")
            top = max([means[i] + stds[i], *(100 * v for v in d["scores"].values())])
            ax.annotate(label, (i, top), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if data and data[0]["arm"] == "baseline" and data[0]["mean"] is not None:
        ax.axhline(100 * data[0]["mean"], color="#888888", linestyle="--", linewidth=1)
    values = [v for m, sd in zip(means, stds) for v in (m - sd, m + sd)]
    values += [100 * v for d in data for v in d["scores"].values()]
    low, high = min(values, default=0), max(values, default=100)
    pad = max(2.0, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - pad), high + 2.5 * pad)  # room above for the labels
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(f"{metric} accuracy (%)")
    caption = "points: mean ± std over seeds (dots); above: the difference from the baseline ± its 95% CI"
    ax.set_title(f"{title}\n{caption}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def _band(ax, xs, means, halves, *, within=(-math.inf, math.inf), **style):
    """A line of means with its 95% band (points without an interval get none), the band cut to `within`
    (an accuracy's band ends at 0 and 100%)."""
    ax.plot(xs, [100 * m for m in means], marker="o", markersize=4, **style)
    lo = [max(within[0], 100 * (m - (h or 0))) for m, h in zip(means, halves)]
    hi = [min(within[1], 100 * (m + (h or 0))) for m, h in zip(means, halves)]
    ax.fill_between(xs, lo, hi, alpha=0.18, color=style.get("color"))


def _gap_band(ax, rows: list[dict], x: str, **style) -> None:
    """The clean gap of the rows that have one, against their `x` (size or value), with its band."""
    with_gap = [r for r in rows if r["gap"] is not None]
    _band(ax, [r[x] for r in with_gap], [r["gap"] for r in with_gap], [r["gap_ci95_mean"] for r in with_gap], **style)


def curve_chart(path: Path, rows: list[dict], metric: str, title: str) -> Path:
    """regx curve: the metric (left), each arm's paired difference from the baseline with its 95% interval
    (middle: where an interval reaches zero, the arm stops helping) and the clean gap (right) against the
    training images (log x), one line per arm with its 95% band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, diff, gap) = plt.subplots(1, 3, figsize=(15, 4.4), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for i, arm in enumerate(arms):
        mine = sorted((r for r in rows if r["arm"] == arm and r["mean"] is not None), key=lambda r: r["size"])
        if not mine:
            continue
        xs, style = [r["size"] for r in mine], {"color": colours[i % len(colours)], "label": arm}
        _band(acc, xs, [r["mean"] for r in mine], [r["ci95_mean"] for r in mine], within=(0, 100), **style)
        _gap_band(gap, mine, "size", **style)
        paired = [r for r in mine if r.get("diff") is not None]
        if paired:  # arms side by side at each size (a small step on the log axis), so the bars do not overlap
            nudge = 1.06 ** (i - (len(arms) - 1) / 2)
            diff.errorbar(
                [r["size"] * nudge for r in paired],
                [100 * r["diff"] for r in paired],
                yerr=[100 * (r["ci95"] or 0) for r in paired],
                marker="o",
                markersize=4,
                capsize=3,
                **style,
            )
    diff.axhline(0, color="#888888", linewidth=0.8)
    sizes = sorted({r["size"] for r in rows})
    for ax, label in (
        (acc, f"{metric} accuracy (%)"),
        (diff, "vs baseline (points, paired 95% CI)"),
        (gap, "clean gap: clean train - val accuracy (points)"),
    ):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images (log scale)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    acc.legend(fontsize=8)
    if any(r.get("diff") is not None for r in rows):
        diff.legend(fontsize=8)
    gap.axhline(0, color="#888888", linewidth=0.8)
    fig.suptitle(
        title + f" ({_bands(rows)}middle: each arm minus the baseline, seed by seed)",
        fontsize=9,
    )
    return save_figure(fig, path)


def _bands(rows: list[dict]) -> str:
    """The title's word on the bands: none are drawn where every point has one seed (no interval)."""
    return "bands: 95% over seeds; " if any(r.get("ci95_mean") is not None for r in rows) else "one seed: no bands; "


def path_chart(path: Path, rows: list[dict], key: str, log_x: bool, metric: str, title: str, best: dict) -> Path:
    """regx path: clean training, validation and the metric's accuracy (left) and the clean gap (right)
    against the strength, one set of lines per size, 95% bands over seeds, each point's verdicts over its
    seeds in words above its gap (e.g. "over ×2, good"), the best strength starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, gap) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, size in enumerate(dict.fromkeys(r["size"] for r in rows)):
        mine = sorted((r for r in rows if r["size"] == size and r["mean"] is not None), key=lambda r: r["value"])
        if not mine:
            continue
        _path_lines(
            acc, gap, mine, metric, f", {size:,} images" if size else "", colours[i % len(colours)], best.get(size)
        )
    values = sorted({r["value"] for r in rows})
    for ax, label in ((acc, "accuracy (%)"), (gap, "clean gap: clean train - val accuracy (points)")):
        if log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.margins(x=0.08)  # room for the outer points' verdicts
        ax.set_xlabel(key + (" (log scale)" if log_x else ""))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    acc.legend(fontsize=7)
    gap.axhline(0, color="#888888", linewidth=0.8)
    gap.margins(y=0.15)  # room above the highest point for its words
    fig.suptitle(title + f" ({_bands(rows)}words: the verdicts of each point's seeds; star: the best)", fontsize=9)
    return save_figure(fig, path)


def _path_lines(acc, gap, mine: list[dict], metric: str, at: str, colour, b: dict | None) -> None:
    """One size's lines of path_chart: the metric with its band, validation and clean training (left), the
    best strength starred (`b`), the gap with its band and each point's verdicts (right)."""
    xs = [r["value"] for r in mine]
    _band(
        acc,
        xs,
        [r["mean"] for r in mine],
        [r["ci95_mean"] for r in mine],
        within=(0, 100),
        color=colour,
        label=f"{metric}{at}",
    )
    for name, style in (("val", ":"), ("clean_train", "--")):
        got = [r for r in mine if r[name] is not None]
        acc.plot(
            [r["value"] for r in got],
            [100 * r[name] for r in got],
            linestyle=style,
            color=colour,
            linewidth=1,
            label=f"{'clean train' if name == 'clean_train' else 'val'}{at}",
        )
    if b is not None:
        acc.errorbar(
            [b["value"]],
            [100 * b["mean"]],
            yerr=[[100 * (b["ci95_mean"] or 0)]],
            fmt="*",
            color=colour,
            markersize=12,
            capsize=4,
        )
    _gap_band(gap, mine, "value", color=colour, label=f"gap{at}")
    for r in mine:
        if r["gap"] is not None:
            gap.annotate(
                _short_verdicts(r["verdicts"] or ""),
                (r["value"], 100 * r["gap"]),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7,
                color=colour,
            )


SHORT_VERDICTS = {
    "overfitting": "over",
    "underfitting": "under",
    "good_fit": "good",
    "both": "both",
    "diverged": "diverged",
}


def _short_verdicts(verdicts: str) -> str:
    """A table's "overfitting ×2, good_fit" as a chart label: "over ×2, good"."""
    for word, short in SHORT_VERDICTS.items():
        verdicts = verdicts.replace(word, short)
    return verdicts


def reliability_plot(path: Path, cal: dict, title: str) -> Path:
    """A reliability diagram: each confidence bin's accuracy (bars) against the diagonal a calibrated model
    follows, each bar labelled with its images; the ECE, and after temperature scaling when fitted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cal["bins"])
    edges = [i / n for i in range(n)]
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.bar(
        edges,
        [100 * a for a in cal["bin_accuracy"]],
        width=1 / n,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy in the bin",
    )
    gaps = [100 * (c - a) if k else 0 for c, a, k in zip(cal["bin_confidence"], cal["bin_accuracy"], cal["bins"])]
    ax.bar(
        edges,
        gaps,
        bottom=[100 * a for a in cal["bin_accuracy"]],
        width=1 / n,
        align="edge",
        color="#dd8452",
        alpha=0.5,
        edgecolor="white",
        label="gap to its mean confidence",
    )
    ax.plot([0, 1], [0, 100], color="#888888", linestyle="--", linewidth=1, label="calibrated")
    for x, k in zip(edges, cal["bins"]):
        if k:
            ax.annotate(str(k), (x + 0.5 / n, 1), ha="center", fontsize=6, rotation=90, color="white")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("confidence (the predicted class's probability)")
    ax.set_ylabel("accuracy (%)")
    label = f"ECE {100 * cal['ece']:.2f}%"
    if cal.get("temperature") is not None:
        label += f"; at T={cal['temperature']:.2f}: {100 * cal['scaled_ece']:.2f}%"
    ax.set_title(f"{title}\n{label} (bars: 15 bins, numbers: images)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)


def corruption_plot(path: Path, c: dict, clean: float, title: str) -> Path:
    """Accuracy against severity, one line per corruption, starting from the clean accuracy at severity 0;
    the mean over the corruptions dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sev = c["severities"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    xs = [0, *sev]
    for name, accs in c["accuracy"].items():
        ax.plot(xs, [100 * clean, *(100 * accs[s] for s in sev)], marker="o", markersize=3, label=name)
    mean = [sum(accs[s] for accs in c["accuracy"].values()) / len(c["accuracy"]) for s in sev]
    ax.plot(xs, [100 * clean, *(100 * m for m in mean)], color="black", linestyle="--", linewidth=2, label="mean")
    ax.set_xticks(xs, ["clean", *map(str, sev)])
    ax.set_xlabel(f"severity ({c['definitions']}'s definitions, {c['image_size']}-pixel images)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\nmean corrupted accuracy {100 * c['mean']:.2f}%, clean {100 * clean:.2f}%", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)

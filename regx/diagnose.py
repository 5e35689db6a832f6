"""Under- or overfitting? A verdict on two axes from a run's per-epoch curves, with the numbers that
decided it.

It describes the epoch whose weights the run stands for (best.pt: the best validation accuracy), and the
curve after it. Training accuracy is the clean one (eval mode, no augmentation, a fixed training subset)
when the run measured it. A run whose best.pt holds averaged weights (average=ema or swa with
average.select=averaged) is judged on them: their validation and clean training accuracy (avg_* columns).
  bias      the training accuracy there is below `target` (diagnose.target: what a model that fits this
            data should reach; 90% unless set): the model has not fit its own training data;
  variance  the gap (training - validation accuracy) is at least 10 points, or at least 5 points and half
            the validation error or more (most of the error is the gap), or validation went past its best:
            its loss rose 20% above its minimum while the training loss kept falling, and the final gap is
            at least 2 points;
  verdict   diverged (a loss is NaN or infinite), both (bias and variance), underfitting (bias),
            overfitting (variance) or good_fit.
"""

from __future__ import annotations

import math

GAP = 0.10
SHARE_GAP = 0.05  # a gap of at least this much that is also most of the validation error
GAP_SHARE = 0.5  # of the validation error
MIN_GAP = 0.02  # the final gap with which validation gone past its best counts
VAL_LOSS_RISE = 1.2
UNDERFIT_ACC = 0.90  # diagnose.target's default


def _f(row: dict, key: str) -> float | None:
    v = row.get(key)
    if v in (None, ""):
        return None
    return float(v)


def verdict(
    rows: list[dict], *, best_epoch: int | None = None, target: float = UNDERFIT_ACC, averaged: bool = False
) -> tuple[str, dict]:
    """(verdict, evidence) for a run's metric rows (dicts as in metrics.csv), describing `best_epoch` (the
    run's best.pt; None: the epoch of the best validation accuracy). `averaged`: best.pt holds the averaged
    weights, so their accuracies count wherever a row has them."""
    if not rows:
        return "unknown", {"reason": "no finished epoch"}
    for r in rows:
        for key in ("train_loss", "val_loss"):
            v = _f(r, key)
            if v is not None and not math.isfinite(v):
                return "diverged", {"epoch": int(r["epoch"]), key: str(v)}
    if averaged:
        rows = [_averaged(r) for r in rows]
    val_accs = [_f(r, "val_acc") for r in rows]
    at = next((i for i, r in enumerate(rows) if int(r["epoch"]) == best_epoch), None)
    at = max(range(len(rows)), key=lambda i: val_accs[i]) if at is None else at
    train_acc, val_acc = _train_acc(rows[at]), val_accs[at]
    gap, val_error = train_acc - val_acc, 1 - val_acc
    val_losses, train_losses = [_f(r, "val_loss") for r in rows], [_f(r, "train_loss") for r in rows]
    lowest = min(range(len(rows)), key=lambda i: val_losses[i])
    past_best = (
        lowest < len(rows) - 1
        and val_losses[-1] > VAL_LOSS_RISE * val_losses[lowest]
        and train_losses[-1] < train_losses[lowest]
    )
    final_gap = _train_acc(rows[-1]) - val_accs[-1]
    bias = train_acc < target
    variance = gap >= variance_gap(val_acc) or (past_best and final_gap >= MIN_GAP)
    evidence = {
        "epoch": int(rows[at]["epoch"]),
        "weights": "averaged" if averaged and rows[at].get("averaged") else "trained",
        "train_acc": round(train_acc, 4),
        "train_acc_is_clean": _f(rows[at], "clean_train_acc") is not None,
        "val_acc": round(val_acc, 4),
        "gap": round(gap, 4),
        "gap_share_of_val_error": round(gap / val_error, 4) if val_error > 0 else None,
        "target": target,
        "high_bias": bias,
        "high_variance": variance,
        "past_best": past_best,
        "min_val_loss": round(val_losses[lowest], 4),
        "min_val_loss_epoch": int(rows[lowest]["epoch"]),
        "final_val_loss": round(val_losses[-1], 4),
        "final_val_acc": round(val_accs[-1], 4),
        "final_gap": round(final_gap, 4),
        "epochs": len(rows),
    }
    if len(rows) >= 3:
        evidence["train_acc_gain_last_2_epochs"] = round(_train_acc(rows[-1]) - _train_acc(rows[-3]), 4)
    kind = "both" if bias and variance else "underfitting" if bias else "overfitting" if variance else "good_fit"
    return kind, evidence


def variance_gap(val_acc: float) -> float:
    """The smallest clean gap that is high variance at validation accuracy `val_acc`: GAP, or SHARE_GAP
    where that is also half the validation error or more (the gap is most of the error)."""
    return min(GAP, max(SHARE_GAP, GAP_SHARE * (1 - val_acc)))


def _averaged(row: dict) -> dict:
    """A metrics row as the averaged weights saw it, where they were evaluated (SWA's from its start; their
    clean training accuracy where the run selected them and measured it, SWA's in its last row only)."""
    if _f(row, "avg_val_acc") is None:
        return row
    out = {**row, "val_acc": row["avg_val_acc"], "val_loss": row["avg_val_loss"], "averaged": True}
    if _f(row, "avg_clean_train_acc") is not None:
        out["clean_train_acc"] = row["avg_clean_train_acc"]
    return out


def _train_acc(row: dict) -> float:
    clean = _f(row, "clean_train_acc")
    return clean if clean is not None else _f(row, "train_acc")


FEW_STEPS = 200  # optimizer steps in all below which a run is too short to judge its regularization


def remedies(kind: str, cfg, evidence: dict, n_train: int) -> list[tuple[str, str]]:
    """The course's remedies for `kind`, computed against the run's own config `cfg`: only what would
    change it, strongest evidence first, as (what, overrides) pairs. `evidence["optimizer_steps"]`:
    the steps the run took in all (few of them come first)."""
    if kind == "both":  # high bias first (a practitioner's order), without less regularization, then more data
        bias = [
            (what, how)
            for what, how in remedies("underfitting", cfg, evidence, n_train)
            if not what.startswith(("lighter", "less"))
        ]
        variance = [
            (what, how)
            for what, how in remedies("overfitting", cfg, evidence, n_train)
            if what == "more training data" and how not in {h for _, h in bias}
        ]
        return bias + variance
    out = _against_few_steps(kind, cfg, evidence, n_train)
    if kind == "overfitting":
        out += _against_variance(cfg, evidence)
    elif kind == "underfitting":
        more_epochs_given = any(how.startswith("epochs=") for _, how in out)  # as "more optimizer steps"
        out += [
            (what, how)
            for what, how in _against_bias(cfg, evidence)
            if not (more_epochs_given and how.startswith("epochs="))
        ]
    elif kind == "diverged":
        out.append(("a lower learning rate", f"lr={cfg.lr / 10:g}"))
        if cfg.sched.warmup_epochs == 0:
            out.append(("a warmup", "sched.warmup_epochs=1"))
    return out


def _against_few_steps(kind: str, cfg, evidence: dict, n_train: int) -> list[tuple[str, str]]:
    """A run of too few optimizer steps to judge: more of them, first."""
    steps = evidence.get("optimizer_steps", FEW_STEPS)
    if steps >= FEW_STEPS or kind not in ("underfitting", "overfitting"):
        return []
    what = f"more optimizer steps (this run took {steps})"
    if kind == "underfitting":  # more epochs where the batch suits the data, else a smaller batch
        how = more_steps(n_train, cfg.epochs, cfg.batch_size)[0]
        return [(what, how)] if how else []
    # overfitting: more epochs would fit the training images harder; a smaller batch is noisier
    batch = few_steps_batch(n_train * cfg.epochs, cfg.batch_size)
    return [(what, f"batch_size={batch}")] if batch < cfg.batch_size else []


def _against_variance(cfg, evidence: dict) -> list[tuple[str, str]]:
    """Early stopping (first where validation went past its best), augmentation, weight decay, dropout,
    more data: each one step stronger than the run's own."""
    aug, rising = cfg.aug, evidence.get("past_best")
    # the data's own preset says whether a mirror keeps an image's class (digits: no)
    transform = "aug=crop_flip" if cfg.data.mirror else "aug=scale_crop"
    candidates = [
        (
            "stop at the best epoch (checkpoints/best.pt holds it)",
            # a patience that can trigger: two epochs or more, half the run at most (up to 5)
            f"early_stop.patience={min(5, cfg.epochs // 2)}"
            if cfg.early_stop.patience == 0 and cfg.epochs // 2 >= 2
            else None,
        ),
        (
            "augment the data",
            transform if aug.name == "none" else "aug.erasing.p=0.25" if aug.erasing.p == 0 else None,
        ),
        ("weight decay", "decay=l2 wd=5e-4" if cfg.wd == 0 else f"wd={cfg.wd * 4:g}" if cfg.wd < 5e-3 else None),
        (
            "dropout in the classifier",
            "dropout=fc"
            if cfg.dropout.p == 0
            else f"dropout.p={min(0.7, cfg.dropout.p + 0.2):g}"
            if cfg.dropout.p < 0.5
            else None,
        ),
        ("more training data", "data.train_size=null" if cfg.data.train_size is not None else None),
    ]
    best, last = evidence.get("epoch"), evidence.get("epochs")
    if best is not None and last is not None and best + min(5, cfg.epochs // 2) > last:
        candidates.pop(0)  # the best epoch is too near the end for that patience to have stopped this run
    elif not rising:  # validation did not go past its best: stopping early would gain little
        candidates.append(candidates.pop(0))
    return [(what, how) for what, how in candidates if how]


def _against_bias(cfg, evidence: dict) -> list[tuple[str, str]]:
    """Lighter regularization and longer training (longer first while the training accuracy climbs), a
    higher learning rate, a larger model."""
    climbing = evidence.get("train_acc_gain_last_2_epochs", 0) > 0.01
    lighter = [
        ("lighter augmentation", "aug=none" if cfg.aug.name != "none" else None),
        ("less dropout", "dropout=none" if cfg.dropout.p > 0 or cfg.dropout.conv_p > 0 else None),
        ("less weight decay", f"wd={cfg.wd / 5:g}" if cfg.wd > 1e-5 else None),
    ]
    longer = (
        "train longer (training accuracy is still climbing)" if climbing else "train longer",
        f"epochs={2 * cfg.epochs}",
    )
    candidates = [longer, *lighter] if climbing else [*lighter, longer]
    candidates.append(("a higher learning rate", f"lr={cfg.lr * 2:g}"))
    if cfg.model.name == "smallcnn":
        candidates.append(("a larger model", f"model.channels=[{','.join(str(2 * c) for c in cfg.model.channels)}]"))
    return [(what, how) for what, how in candidates if how]


def more_steps(n_train: int, epochs: int, batch_size: int) -> tuple[str | None, int]:
    """(the override, the steps it gives) for a run with too few optimizer steps: more epochs where an
    epoch already has 10 steps or more (the batch suits the data; the run is short), else a smaller
    batch (a few steps per epoch: the batch is large for the data). None where neither helps."""
    per_epoch = -(-n_train // batch_size)
    if per_epoch >= 10:
        more = max(2 * epochs, -(-FEW_STEPS // per_epoch))
        return f"epochs={more}", per_epoch * more
    batch = few_steps_batch(n_train * epochs, batch_size)
    return (f"batch_size={batch}", -(-n_train // batch) * epochs) if batch < batch_size else (None, 0)


def few_steps_batch(images: int, batch_size: int) -> int:
    """A batch size (a power of two, from 8, below batch_size) giving about FEW_STEPS steps over `images`."""
    batch = 8
    while batch * 2 <= images // FEW_STEPS and batch * 2 < batch_size:
        batch *= 2
    return batch


def command(overrides: list[str], remedy: str) -> str:
    """`regx train` with the run's own overrides and the remedy's (the remedy's keys replace them)."""
    import shlex

    keys = {o.split("=", 1)[0] for o in remedy.split()}
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in keys and not o.startswith("hydra.")]
    return "regx train " + " ".join(shlex.quote(o) for o in [*kept, *remedy.split()])

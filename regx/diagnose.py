"""Under- or overfitting? A verdict from a run's per-epoch curves, with the numbers that decided it.

Rules, applied in this order to metrics.csv's rows (training accuracy is the clean one, measured in
eval mode without augmentation on a fixed training subset, when the run measured it):
  diverged     a loss is NaN or infinite;
  overfitting  the final gap (train acc - val acc) is at least 10 points, or validation loss has risen
               20% above its minimum while training loss kept falling and the gap is at least 5 points;
  underfitting training accuracy is below 90%: the model has not fit its own training data;
  good_fit     otherwise.
"""

from __future__ import annotations

import math

GAP = 0.10
GAP_WITH_RISING_LOSS = 0.05
VAL_LOSS_RISE = 1.2
UNDERFIT_ACC = 0.90


def _f(row: dict, key: str) -> float | None:
    v = row.get(key)
    if v in (None, ""):
        return None
    return float(v)


def verdict(rows: list[dict]) -> tuple[str, dict]:
    """(verdict, evidence) for a run's metric rows (dicts as in metrics.csv)."""
    if not rows:
        return "unknown", {"reason": "no finished epoch"}
    for r in rows:
        for key in ("train_loss", "val_loss"):
            v = _f(r, key)
            if v is not None and not math.isfinite(v):
                return "diverged", {"epoch": int(r["epoch"]), key: str(v)}
    last = rows[-1]
    clean = _f(last, "clean_train_acc")
    train_acc = clean if clean is not None else _f(last, "train_acc")
    val_acc = _f(last, "val_acc")
    gap = train_acc - val_acc
    val_losses = [_f(r, "val_loss") for r in rows]
    train_losses = [_f(r, "train_loss") for r in rows]
    best = min(range(len(rows)), key=lambda i: val_losses[i])
    evidence = {
        "train_acc": round(train_acc, 4),
        "train_acc_is_clean": clean is not None,
        "val_acc": round(val_acc, 4),
        "gap": round(gap, 4),
        "min_val_loss": round(val_losses[best], 4),
        "min_val_loss_epoch": int(rows[best]["epoch"]),
        "final_val_loss": round(val_losses[-1], 4),
        "epochs": len(rows),
    }
    rising = (best < len(rows) - 1 and val_losses[-1] > VAL_LOSS_RISE * val_losses[best]
              and train_losses[-1] < train_losses[best])
    if gap >= GAP or (rising and gap >= GAP_WITH_RISING_LOSS):
        evidence["val_loss_rising"] = rising
        return "overfitting", evidence
    if train_acc < UNDERFIT_ACC:
        if len(rows) >= 3:
            evidence["train_acc_gain_last_2_epochs"] = round(train_acc - _train_acc(rows[-3]), 4)
        return "underfitting", evidence
    return "good_fit", evidence


def _train_acc(row: dict) -> float:
    clean = _f(row, "clean_train_acc")
    return clean if clean is not None else _f(row, "train_acc")


def remedies(kind: str, *, epochs: int, lr: float) -> list[tuple[str, str]]:
    """The course's remedies as (what, regx override) pairs."""
    if kind == "overfitting":
        return [
            ("augment the data", "aug=all"),
            ("dropout in the classifier", "dropout=fc"),
            ("weight decay", "decay=l2 wd=5e-4"),
            ("more training data", "data.train_size=null"),
            ("stop at the best epoch (checkpoints/best.pt holds it)", "early_stop.patience=5"),
        ]
    if kind == "underfitting":
        return [
            ("train longer", f"epochs={2 * epochs}"),
            ("a larger model", "model.channels=[64,128,256]"),
            ("less regularization", "aug=none dropout=none wd=0"),
        ]
    if kind == "diverged":
        return [("a lower learning rate", f"lr={lr / 10:g}"), ("a warmup", "sched.warmup_epochs=1")]
    return []

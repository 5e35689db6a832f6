"""Learning-rate schedules as pure functions of the optimizer step (plateau excepted).

`lr_factor(step, ...)` returns the multiplier on the base `lr` for that step; a linear warmup over
`warmup_epochs` multiplies every schedule. Schedules run per optimizer step, so short runs decay
smoothly; `plateau` reacts to the validation loss once per epoch.
"""

from __future__ import annotations

import bisect
import math


def lr_factor(
    step: int,
    *,
    name: str,
    total_steps: int,
    steps_per_epoch: int,
    base_lr: float,
    warmup_epochs: float,
    min_lr: float,
    step_epochs: float,
    gamma: float,
    milestones,
    max_lr_mult: float,
    pct_start: float,
    **_,
) -> float:
    """The multiplier on the base learning rate at optimizer `step`; every keyword but the first
    three is the `sched` group's key of the same name (config.SchedConfig holds the defaults)."""
    epoch = step / steps_per_epoch
    total = max(total_steps, 1)
    if name in ("constant", "plateau"):
        f = 1.0
    elif name == "step":
        f = gamma ** math.floor(epoch / step_epochs)
    elif name == "multistep":
        f = gamma ** bisect.bisect_right(sorted(milestones), epoch)
    elif name == "exponential":
        f = gamma**epoch
    elif name == "cosine":
        floor = min_lr / base_lr
        f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    elif name == "onecycle":  # torch's OneCycleLR: cosine annealing, div_factor 25, final_div_factor 1e4
        peak = max_lr_mult
        f = onecycle(min(step, total - 1), total, pct_start, peak / 25, peak, peak / 25 / 1e4)
    else:
        raise ValueError(f"unknown schedule {name!r}")
    warmup = warmup_epochs * steps_per_epoch
    if warmup > 0 and step < warmup:
        f *= (step + 1) / warmup
    return f


def unreached(sched: dict, *, epochs: int, lr: float) -> list[str]:
    """The `sched` settings a run of `epochs` epochs never reaches, one line each: a step or milestone at
    or after the last epoch (the rate never lowers there), a warmup that lasts the whole run."""
    out = []
    if sched["name"] == "step" and sched["step_epochs"] >= epochs:
        out.append(
            f"sched=step never lowers the rate in a run of {epochs} epochs (its first step is at epoch "
            f"{sched['step_epochs']:g}); sched.step_epochs={max(epochs // 3, 1)}, say, or more epochs"
        )
    late = [m for m in sched["milestones"] if m >= epochs] if sched["name"] == "multistep" else []
    if late:
        out.append(
            f"sched.milestones at {', '.join(f'{m:g}' for m in late)}: a run of {epochs} epochs never reaches "
            f"{'them' if len(late) > 1 else 'it'} (the last epoch starts at {epochs - 1})"
        )
    if sched["warmup_epochs"] >= epochs:
        out.append(
            f"sched.warmup_epochs={sched['warmup_epochs']:g}: a run of {epochs} epochs is warmup to its end, its "
            f"rate below lr={lr:g} until the last step; sched.warmup_epochs={max(epochs // 10, 1)}, say"
        )
    return out


def onecycle(step: int, total: int, pct_start: float, start: float, peak: float, end: float) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's two phases at `step` of `total`: from `start` up to `peak`
    until step pct_start*total - 1, then down to `end` at step total - 1, each by half a cosine (its
    momentum is the same curve from max_momentum down to base_momentum and back)."""
    up = float(pct_start * total) - 1
    if step <= up:
        return _cos(start, peak, step / up)
    return _cos(peak, end, (step - up) / (total - 1 - up))


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)  # torch's _annealing_cos


class Plateau:
    """Multiply the LR by `factor` after `patience` epochs without a lower validation loss."""

    def __init__(self, factor: float, patience: int):
        self.factor, self.patience = factor, patience
        self.best, self.bad, self.scale = math.inf, 0, 1.0

    def update(self, val_loss: float) -> None:
        if val_loss < self.best:
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.scale *= self.factor
                self.bad = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad, self.scale = state["best"], state["bad"], state["scale"]


class EarlyStop:
    """Stop after `patience` epochs without an improvement: a validation accuracy above the last improving
    epoch's by more than `min_delta`, as Lightning's and Keras's EarlyStopping count it (small gains add up
    until together they pass min_delta); patience 0 never stops. Its state is the last improving epoch and
    its accuracy (RunState's improved_epoch and improved_acc)."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta

    def observe(self, state, epoch: int, score: float) -> None:
        """Count epoch `epoch`'s selecting validation accuracy `score` into `state` (before its best moves)."""
        # a checkpoint from before improved_acc was kept: compare with the best so far, as regx then did
        ref = state.improved_acc if state.improved_acc is not None else state.best_val_acc
        if ref is None or score > ref + self.min_delta:
            state.improved_epoch, state.improved_acc = epoch, score

    def reason(self, epoch: int, improved_epoch: int, best_val_acc: float, best_epoch: int) -> str | None:
        """Why to stop after `epoch`, or None to go on."""
        if not self.patience or epoch - improved_epoch < self.patience:
            return None
        by = f" by more than {100 * self.min_delta:g} points" if self.min_delta else ""
        return (
            f"validation accuracy did not improve{by} for {self.patience} epoch{'s' * (self.patience > 1)} "
            f"(best {100 * best_val_acc:.2f}% at epoch {best_epoch})"
        )


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch; a final batch of one image is dropped (BatchNorm cannot train on it)."""
    single = batch_size > 1 and n_train > batch_size and n_train % batch_size == 1
    return math.ceil(n_train / batch_size) - int(single)


class Schedule:
    """The learning rate at each optimizer step: the `sched` group's shape over `epochs` epochs of
    `steps` steps, starting at step `start`. Past its end a schedule keeps its final value, so a run
    extended with more epochs goes on at the rate it ended with; `restart` begins a new cycle (a warm
    restart) over the epochs added."""

    def __init__(
        self,
        sched: dict,
        *,
        lr: float,
        epochs: int,
        steps: int,
        plateau: Plateau | None = None,
        swa: tuple[int, int, float] | None = None,
    ):
        self.sched, self.lr, self.epochs, self.steps, self.plateau = sched, lr, epochs, steps, plateau
        self.start = 0
        self.swa = swa  # average=swa with average.swa_lr: (first SWA step, anneal steps, swa_lr)

    def _scheduled(self, step: int) -> float:
        scale = self.plateau.scale if self.plateau is not None else 1.0
        return (
            self.lr
            * scale
            * lr_factor(
                step - self.start,
                total_steps=self.steps * self.epochs,
                steps_per_epoch=self.steps,
                base_lr=self.lr,
                **self.sched,
            )
        )

    def __call__(self, step: int) -> float:
        if self.swa is None or step < self.swa[0]:
            return self._scheduled(step)
        start, anneal, swa_lr = self.swa  # from the schedule's rate at SWA's start, linearly to swa_lr
        if step < start + anneal:
            f = (step - start + 1) / anneal
            return (1 - f) * self._scheduled(start) + f * swa_lr
        return swa_lr

    def momentum(self, step: int) -> float | None:
        """sched=onecycle with sched.cycle_momentum: the momentum at `step` (SGD's, or Adam's first beta),
        the inverse of the rate's cycle, from max_momentum down to base_momentum and back, as OneCycleLR
        sets it; None for every other schedule (the optimizer keeps its own)."""
        s = self.sched
        if s["name"] != "onecycle" or not s["cycle_momentum"]:
            return None
        total = self.steps * self.epochs
        t = min(max(step - self.start, 0), total - 1)
        return onecycle(t, total, s["pct_start"], s["max_momentum"], s["base_momentum"], s["max_momentum"])

    def restart(self, start: int, epochs: int) -> None:
        self.start, self.epochs = start, epochs


def lr_schedule(
    sched: dict, *, lr: float, epochs: int, steps: int, plateau: Plateau | None = None, average: dict | None = None
) -> Schedule:
    """The learning rate at each optimizer step for a run of `epochs` epochs of `steps` steps; with
    average=swa and an average.swa_lr, that rate from SWA's first epoch on (reached linearly over
    average.anneal_epochs)."""
    return Schedule(sched, lr=lr, epochs=epochs, steps=steps, plateau=plateau, swa=swa_window(average, epochs, steps))


def swa_window(average: dict | None, epochs: int, steps: int) -> tuple[int, int, float] | None:
    """Schedule.swa for a run of `epochs` planned epochs: (first SWA step, anneal steps, swa_lr), or None."""
    if not average or average["name"] != "swa" or average.get("swa_lr") is None:
        return None
    return (swa_start(average, epochs) - 1) * steps, average["anneal_epochs"] * steps, average["swa_lr"]


def swa_start(average: dict, epochs: int) -> int:
    """SWA's first averaged epoch: average.start_epoch, or the epoch 75% into the run."""
    return average.get("start_epoch") or max(1, math.ceil(0.75 * epochs))

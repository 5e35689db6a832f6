"""One training epoch, its step hooks, and one evaluation pass. Metrics are summed on the device and
read back once per epoch (and when a hook asks: the progress bar, the NaN check), never once per step."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from regx.augment import Augment, Mix, jsd_cross_entropy, mixed_cross_entropy


@dataclass
class Pipeline:
    """uint8 batch on the device -> float in [0, 1] -> augmentation (training only) -> normalized."""

    mean: torch.Tensor  # 1,C,1,1
    std: torch.Tensor
    channels_last: bool
    augment: Augment | None = None
    tta: bool = False  # evaluate each image and its mirror, their logits averaged

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train(self, xb: torch.Tensor) -> tuple[torch.Tensor, Mix | None]:
        x, mixed = self.augment(xb.float().div_(255)) if self.augment is not None else (xb.float().div_(255), None)
        return self._finish(x), mixed

    def eval(self, xb: torch.Tensor) -> torch.Tensor:
        return self._finish(xb.float().div_(255))


def infer(model: nn.Module, x: torch.Tensor, amp, tta: bool = False) -> torch.Tensor:
    """float32 logits of a normalized batch; with `tta`, the mean of the batch's and its left-right mirror's
    (airbench's mirror TTA: 0.5 * net(x) + 0.5 * net(x.flip(-1)))."""
    with amp or contextlib.nullcontext():
        logits = model(x).float()
        if tta:
            logits = (logits + model(x.flip(-1)).float()) / 2
    return logits


def autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Diverged(RuntimeError):
    """A training loss that is NaN, infinite or above the run's limit, at optimizer step `step`."""

    def __init__(self, step: int, loss: float, limit: float):
        finite = math.isfinite(loss)
        super().__init__(
            f"loss reached {loss:.3g} at step {step}, above the limit {limit:.3g}"
            if finite
            else f"loss became {loss} at step {step}"
        )
        self.step, self.loss, self.limit = step, loss, limit


@dataclass
class Tally:
    """Running sums of an epoch in progress, kept on the device; saved in mid-epoch checkpoints so a
    resumed epoch reports exactly what an uninterrupted one would."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    clipped: torch.Tensor  # steps whose gradients clip_grad clipped
    images: int = 0
    batches: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device: torch.device) -> Tally:
        return cls(
            torch.zeros((), device=device),
            torch.zeros((), device=device, dtype=torch.long),
            torch.zeros((), device=device, dtype=torch.long),
        )

    def state_dict(self) -> dict:
        return {
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "clipped": self.clipped.cpu(),
            "images": self.images,
            "batches": self.batches,
            "seconds": self.seconds,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> Tally:
        return cls(
            state["loss_sum"].to(device),
            state["correct"].to(device),
            state["clipped"].to(device),
            state["images"],
            state["batches"],
            state["seconds"],
        )


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    steps: int  # optimizer steps in the whole epoch so far (a resumed epoch counts the earlier ones)
    seconds: float
    finished: bool  # False: a hook ended the epoch early (a stop signal); the tally holds the part done
    tally: Tally


@dataclass
class StepInfo:
    """What the hooks see after each optimizer step. A hook sets `stop` to end the epoch after it."""

    step: int  # the global optimizer step just taken, counted from 0
    loss: torch.Tensor  # its loss, detached, on the device (reading it is a host sync)
    lr: float
    tally: Tally  # the epoch's sums so far; tally.batches is this step's number within the epoch
    elapsed: float  # seconds of this epoch so far (a resumed epoch counts its part before the resume)
    stop: bool = False


class Hook:
    """Something done around each training step for progress and for users (a test's fault injection, a
    custom log): override what you need. Hooks run in the order given, after the loop's own steps
    (LoopSteps), so no hook's place in the list can change a checkpoint. A hook may end the epoch by
    setting `info.stop` (the loop then checkpoints as for a stop signal)."""

    def start(self, parts) -> None:
        """Once, when a run's parts are built (train.Parts: the model, the optimizer, the data)."""

    def before_step(self, step: int) -> None:
        """Before the optimizer step `step` (counted from 0 over the whole run)."""

    def after_step(self, info: StepInfo) -> None:
        """After the step's update."""

    def after_epoch(self, info: StepInfo) -> None:
        """After the epoch's last step (or the step a hook stopped it at)."""

    def checkpoint_written(self, tmp: str) -> None:
        """A checkpoint's bytes are on disk under `tmp`, not yet renamed into place (with
        checkpoint.background, called in the writer's thread while training goes on)."""


@dataclass
class LoopSteps:
    """What the training loop itself does after each optimizer step, in this fixed order around the
    hooks: check the loss (so no checkpoint ever holds a diverged state), update the weight average,
    [the hooks], poll for a stop request, write a mid-epoch checkpoint (every N steps, and at a stop)."""

    loss_check: LossCheck | None = None
    average: Callable[[int], None] | None = None  # the average group's update after optimizer step t
    stop_requested: Callable[[], bool] | None = None  # SIGTERM/SIGINT (under torchrun: on any rank)
    checkpoint: Callable[[StepInfo], None] | None = None  # a mid-epoch checkpoint when one is due


@dataclass
class StepParts:
    """What one optimizer step needs, built once per run."""

    optimizer: torch.optim.Optimizer
    pipeline: Pipeline
    lr_at: Callable[[int], float]
    amp: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler | None = None
    penalty: Callable[[], torch.Tensor] | None = None  # the L2/L1 term added to the loss
    label_smoothing: float = 0.0
    clip: Callable[[], torch.Tensor] | None = None  # clip_grad: clips the gradients, says whether it did
    jsd: float = 0.0  # > 0: the pipeline gives 3 views per image; AugMix's consistency loss at this weight
    momentum_at: Callable[[int], float | None] | None = None  # sched=onecycle's momentum cycle


def gradient_clipper(mode: str, limit: float, params: list[nn.Parameter]) -> Callable[[], torch.Tensor]:
    """clip_grad: `norm` rescales all gradients together to a total L2 norm of at most `limit` (torch's
    clip_grad_norm_, as timm's --clip-mode norm); `value` clamps each element to [-limit, limit]. The
    returned function clips and says, on the device (no host sync), whether anything was over the limit."""

    def clip() -> torch.Tensor:
        if mode == "norm":
            return torch.nn.utils.clip_grad_norm_(params, limit) > limit  # the norm before clipping
        grads = [p.grad for p in params if p.grad is not None]
        over = torch.stack(torch._foreach_norm(grads, float("inf"))).max() > limit
        torch.nn.utils.clip_grad_value_(params, limit)
        return over

    return clip


def train_one_epoch(
    net: nn.Module,
    parts: StepParts,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    first_step: int,
    tally: Tally,
    loop: LoopSteps | None = None,
    hooks: Sequence[Hook] = (),
) -> EpochResult:
    """Train over `batches`, the first of which is optimizer step `first_step` (after
    `tally.batches` batches of this epoch when resumed mid-epoch). Metrics stay on the device."""
    loop = loop or LoopSteps()
    net.train()
    t0, seconds_before, step = time.perf_counter(), tally.seconds, first_step - 1
    info = None
    for xb, yb in batches:
        step += 1
        for h in hooks:
            h.before_step(step)
        lr = parts.lr_at(step)
        loss, correct, clipped = _step(net, parts, xb, yb, lr, step)
        tally.loss_sum += loss * len(yb)
        tally.correct += correct
        if clipped is not None:
            tally.clipped += clipped
        tally.images += len(yb)
        tally.batches += 1
        info = StepInfo(step, loss, lr, tally, seconds_before + time.perf_counter() - t0)
        if loop.loss_check is not None:
            loop.loss_check.after_step(info)
        if loop.average is not None:
            loop.average(step)
        for h in hooks:
            h.after_step(info)
        if loop.stop_requested is not None:
            info.stop = info.stop or loop.stop_requested()
        if loop.checkpoint is not None:
            loop.checkpoint(info)
        if info.stop:
            break
    if info is not None:
        if loop.loss_check is not None:
            loop.loss_check.check()
        for h in hooks:
            h.after_epoch(info)
    if tally.loss_sum.device.type == "cuda":
        torch.cuda.synchronize(tally.loss_sum.device)
    tally.seconds = seconds_before + time.perf_counter() - t0
    n = max(tally.images, 1)
    return EpochResult(
        tally.loss_sum.item() / n,
        tally.correct.item() / n,
        tally.images,
        tally.batches,
        tally.seconds,
        info is None or not info.stop,
        tally,
    )


def _step(net: nn.Module, p: StepParts, xb: torch.Tensor, yb: torch.Tensor, lr: float, step: int):
    """One optimizer step; (detached loss, correct predictions, whether clip_grad clipped or None), on
    the device."""
    momentum = p.momentum_at(step) if p.momentum_at is not None else None
    for g in p.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
        if momentum is not None:  # as OneCycleLR: SGD's momentum, or Adam's first beta
            if "betas" in g:
                g["betas"] = (momentum, g["betas"][1])
            else:
                g["momentum"] = momentum
    x, mixed = p.pipeline.train(xb)
    with p.amp:
        out = net(x)
        if p.jsd:
            loss = jsd_cross_entropy(out, yb, p.jsd, p.label_smoothing)
            out = out[: len(yb)]  # accuracy on the clean view
        elif mixed is None:
            loss = F.cross_entropy(out, yb, label_smoothing=p.label_smoothing)
        else:
            loss = mixed_cross_entropy(out.float(), yb, mixed, p.label_smoothing)
    total = loss + p.penalty() if p.penalty is not None else loss
    p.optimizer.zero_grad(set_to_none=True)
    clipped = None
    if p.scaler is not None:
        p.scaler.scale(total).backward()
        if p.clip is not None:
            p.scaler.unscale_(p.optimizer)  # clip the true gradients, not the scaled ones
            clipped = p.clip()
        p.scaler.step(p.optimizer)
        p.scaler.update()
    else:
        total.backward()
        if p.clip is not None:
            clipped = p.clip()
        p.optimizer.step()
    return loss.detach().float(), (out.argmax(1) == yb).sum(), clipped


class LossCheck:
    """Raise Diverged naming the first step whose loss was NaN, infinite or above `limit` (a run's
    limit: train.loss_limit). The first bad step is recorded on the device every step; it is read back
    every `every` steps, at the epoch's end and before each checkpoint (`check()`): on CPU every step
    is free, on accelerators each read is a host sync. `any_max` takes the maximum over ranks, so under
    torchrun all ranks stop together."""

    def __init__(
        self,
        device: torch.device,
        every: int,
        limit: float = math.inf,
        any_max: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ):
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)
        self.bad_loss = torch.zeros((), device=device)
        self.every, self.limit, self.any_max = every, limit, any_max

    def after_step(self, info: StepInfo) -> None:
        bad = ~(torch.isfinite(info.loss) & (info.loss <= self.limit)) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, info.step, self.first_bad)
        self.bad_loss = torch.where(bad, info.loss, self.bad_loss)
        if info.tally.batches % self.every == 0:
            self.check()

    def check(self) -> None:
        bad = int(self.any_max(self.first_bad))
        if bad >= 0:
            raise Diverged(bad, float(self.bad_loss) if int(self.first_bad) >= 0 else float("nan"), self.limit)


BINS = 15  # the calibration error's equal-width confidence bins (Guo et al. 2017; torchmetrics' default)


@dataclass
class Evaluation:
    """One pass over a split in eval mode. Calibration (Guo et al. 2017): the predicted class's probability
    (confidence) against being right, in BINS equal-width bins (0, 1/15], ... (14/15, 1]; ece is the
    bins' |accuracy - confidence| weighted by their share of the images, mce the largest of them over the
    bins with images; brier the mean over images of sum over classes (p - one-hot)^2."""

    loss: float  # mean cross-entropy: the negative log-likelihood
    acc: float
    ece: float
    mce: float
    brier: float
    bin_count: list[int]
    bin_confidence: list[float]  # each bin's mean confidence (0 where empty)
    bin_accuracy: list[float]
    matrix: torch.Tensor | None = None  # [true, predicted], with num_classes
    logits: torch.Tensor | None = None  # every image's logits (CPU, float32), with keep_logits
    labels: torch.Tensor | None = None


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    pipeline: Pipeline,
    amp,
    num_classes: int | None = None,
    keep_logits: bool = False,
) -> Evaluation:
    """Loss, accuracy and calibration in eval mode (dropout off, BatchNorm on its running statistics),
    summed on the device and read back once; the confusion matrix (CPU, int64, [true, predicted]) when
    `num_classes` is given; every image's logits with `keep_logits` (temperature scaling fits on them)."""
    model.eval()
    device = pipeline.mean.device
    loss_sum, brier = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bins = torch.zeros(3, BINS, device=device, dtype=torch.float64)  # images, summed confidence, right ones
    k = num_classes or 0
    counts = torch.zeros(k * k, device=device, dtype=torch.long)
    kept, labels, n = [], [], 0
    for xb, yb in batches:
        logits = infer(model, pipeline.eval(xb), amp, pipeline.tta)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == yb).sum()
        batch_bins, batch_brier = _calibration_sums(logits, yb)
        bins += batch_bins
        brier += batch_brier
        if k:
            counts += torch.bincount(yb * k + pred, minlength=k * k)
        if keep_logits:
            kept.append(logits.cpu())
            labels.append(yb.cpu())
        n += len(yb)
    n = max(n, 1)
    return Evaluation(
        loss=loss_sum.item() / n,
        acc=correct.item() / n,
        **_calibration(bins.cpu(), float(brier), n),
        matrix=counts.view(k, k).cpu() if k else None,
        logits=torch.cat(kept) if kept else None,
        labels=torch.cat(labels) if labels else None,
    )


def _calibration_sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's calibration sums, on its device: [images, summed confidence, right ones] per bin, and the
    summed Brier score."""
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    b = (conf * BINS).ceil().long().clamp(1, BINS) - 1  # (i/15, (i+1)/15] -> bin i
    sums = torch.stack(
        [
            torch.bincount(b, weights=w, minlength=BINS)
            for w in (torch.ones_like(conf, dtype=torch.float64), conf.double(), (pred == y).double())
        ]
    )
    return sums, (probs - F.one_hot(y, probs.shape[1])).pow(2).sum().double()


def _calibration(bins: torch.Tensor, brier: float, n: int) -> dict:
    """Evaluation's calibration fields from the summed bins of n images."""
    count, conf_sum, right_sum = bins
    filled = count > 0
    mean_conf = torch.where(filled, conf_sum / count.clamp_min(1), 0.0)
    mean_right = torch.where(filled, right_sum / count.clamp_min(1), 0.0)
    gaps = (mean_right - mean_conf).abs()
    return {
        "ece": float((gaps * count).sum() / n),
        "mce": float(gaps[filled].max()) if filled.any() else 0.0,
        "brier": brier / n,
        "bin_count": [int(c) for c in count],
        "bin_confidence": mean_conf.tolist(),
        "bin_accuracy": mean_right.tolist(),
    }


def calibration(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """ECE, MCE, Brier and the bins of given logits (as `evaluate` computes them): after temperature scaling."""
    sums, brier = _calibration_sums(logits.float(), labels)
    return _calibration(sums.cpu(), float(brier), max(len(labels), 1))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 that minimizes the NLL of softmax(logits / T), found
    by a bounded search over log T (one parameter: the accuracy stays the same)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    return math.exp(minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded").x)


@torch.inference_mode()
def mc_dropout(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    pipeline: Pipeline,
    amp,
    samples: int,
) -> tuple[float, float]:
    """Monte Carlo dropout (Gal & Ghahramani 2016): (accuracy, mean predictive entropy) of the average of
    `samples` passes with dropout on, nn.Dropout modules and timm's functional drop_rate alike, and
    everything else (BatchNorm) in eval mode."""
    model.eval()
    for m in model.modules():  # each module's own flag only: BatchNorm stays in eval mode
        if isinstance(m, nn.modules.dropout._DropoutNd) or getattr(m, "drop_rate", 0) > 0:
            m.training = True  # nn.Dropout, and timm's modules that call F.dropout(p=self.drop_rate)
    device = pipeline.mean.device
    correct = torch.zeros((), device=device, dtype=torch.long)
    entropy = torch.zeros((), device=device)
    n = 0
    for xb, yb in batches:
        x = pipeline.eval(xb)
        probs = 0
        for _ in range(samples):
            with amp:
                probs = probs + model(x).float().softmax(1)
        probs = probs / samples
        correct += (probs.argmax(1) == yb).sum()
        entropy += -(probs * probs.clamp_min(1e-12).log()).sum()
        n += len(yb)
    model.eval()
    return correct.item() / max(n, 1), entropy.item() / max(n, 1)


def robustness(
    model: nn.Module,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    pipeline: Pipeline,
    amp,
    corruptions: Sequence[str],
    severities: Sequence[int],
    progress: Callable[[str, int, float], None] | None = None,
) -> dict:
    """Accuracy on the images of `batches()` (called once per corruption and severity) corrupted on the
    device (regx.corrupt): {"accuracy": {corruption: {severity: acc}}, "mean": over them all}. Each
    corruption and severity draws its noise from its own fixed seed, so every model sees the same images."""
    from regx.corrupt import CORRUPTIONS, corrupt

    device = pipeline.mean.device
    table: dict[str, dict[int, float]] = {}
    for name in corruptions:
        table[name] = {}
        for s in severities:
            g = torch.Generator(device=device).manual_seed(100 * list(CORRUPTIONS).index(name) + s)
            corrupted = ((corrupt(xb, name, s, g), yb) for xb, yb in batches())
            table[name][s] = evaluate(model, corrupted, pipeline=pipeline, amp=amp).acc
            if progress is not None:
                progress(name, s, table[name][s])
    accs = [a for row in table.values() for a in row.values()]
    return {"accuracy": table, "mean": sum(accs) / len(accs) if accs else None}

"""train(cfg, run_dir) -> summary: build the run's parts from the config, then the epoch loop.

build(cfg, device, ranks) -> Parts   what the config makes: data, model, optimizer, schedule, pipeline
RunState                             what changes as it trains; exactly a checkpoint's `state`
Recorder (record.py)                 everything written to the run directory but checkpoints
Ranks (distributed.py)               torchrun's processes; a no-op for one
hooks (engine.py)                    progress, stop polling, mid-epoch checkpoints, the loss check (divergence)
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from regx import checkpoint
from regx.augment import Augment
from regx.average import Average, Swa, make_average
from regx.checkpoint import CorruptCheckpoint, newest_intact
from regx.config import ConfigError
from regx.console import EpochProgress
from regx.corrupt import CorruptionError, parse_corruptions
from regx.data import Data, Split, iterate, load_config, stratified_split, to_device
from regx.device import RunFailed, pick_device, pick_precision
from regx.diagnose import FEW_STEPS, command, more_steps, remedies, verdict
from regx.distributed import Ranks
from regx.engine import (
    Diverged,
    EpochResult,
    Evaluation,
    Hook,
    LoopSteps,
    LossCheck,
    Pipeline,
    StepInfo,
    StepParts,
    Tally,
    autocast,
    evaluate,
    gradient_clipper,
    mc_dropout,
    robustness,
    train_one_epoch,
)
from regx.files import EpochMetrics, let_go, out_of_files, owner, read_json
from regx.finetune import FinetuneError, FreezePlan, build_pretrained, load_source, lr_mult
from regx.models import MODELS, build_model, count_params, model_kwargs
from regx.plots import pick_examples
from regx.record import Recorder
from regx.regularize import build_optimizer, penalty
from regx.schedules import EarlyStop, Plateau, lr_schedule, steps_per_epoch, swa_start, swa_window
from regx.schedules import unreached as sched_unreached
from regx.signals import StopSignals


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run after a step and a checkpoint; `code` is the exit status
    a shell expects for that signal (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


class StopRequest(StopSignals):
    """The first SIGTERM/SIGINT asks the run to stop after the current step (what SLURM sends
    before preemption); a second SIGINT stops at once."""

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return  # a second SIGTERM (a sweep's parent passes a group's signal on): the first one counts
        self.signum = signum
        # no logging here: a handler can run while the logging lock is held
        os.write(
            2,
            f"regx: {signal.Signals(signum).name}: stopping after this step and saving a checkpoint"
            f"{' (Ctrl-C again to stop at once)' if signum == signal.SIGINT else ''}\n".encode(),
        )


@dataclass
class RunState:
    """Everything about a run that changes as it trains: what a checkpoint's `state` holds."""

    epoch: int = 0  # the last finished epoch
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batches done of the epoch in progress (a mid-epoch checkpoint), else 0
    tally: dict | None = None  # that epoch's running sums, this rank's
    tally_ranks: list | None = None  # every rank's, under torchrun
    history: list = field(default_factory=list)  # metrics.csv's rows
    best_val_acc: float | None = None
    best_epoch: int | None = None
    improved_epoch: int = 0  # the last epoch that beat the improving epoch before it by more than early_stop.min_delta
    improved_acc: float | None = None  # its validation accuracy, what the next improvement must beat
    stopped_early: dict | None = None
    wall_s: float = 0.0
    sched_start: int = 0  # the step the learning-rate schedule's cycle began at (a warm restart moves it)
    sched_epochs: int | None = None  # the epochs that cycle spans (the run's epochs when it began)


@dataclass(frozen=True)
class Parts:
    """What a run's config builds, once. The fields never change; the objects keep their own state
    (weights, optimizer moments, the plateau's counter, the augmentation RNG), which checkpoints save."""

    cfg: DictConfig
    device: torch.device
    precision: str
    data: Data
    clean: Split | None  # a fixed training subset, evaluated like validation data (the clean gap)
    noisy: Split | None  # with data.label_noise: the flipped training images (their given and true labels)
    model: nn.Module
    eval_net: nn.Module  # the model, compiled when asked
    step: StepParts
    plan: FreezePlan
    plateau: Plateau | None
    early: EarlyStop
    aug_gen: torch.Generator
    steps: int  # optimizer steps per epoch
    batch: int  # this rank's part of batch_size
    weights: tuple[str, list[str]] | None  # pretrained weights: (source, dropped keys)
    corruptions: list[str]  # diagnose.corrupt, `all` expanded: what the test split is also scored under
    average: Average | None = None  # the average group's averaged copy of the model
    writer: checkpoint.Writer = field(default_factory=lambda: checkpoint.Writer(background=False))


def build(cfg: DictConfig, device: torch.device, ranks: Ranks) -> Parts:
    """Everything the config says to make, in a fixed order (the seeded RNG draws in it)."""
    if cfg.batch_size % ranks.world:
        raise RunFailed(
            f"batch_size={cfg.batch_size} must divide by the {ranks.world} processes (each takes an equal part)"
        )
    precision = pick_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    data, model, weights = _data_and_model(cfg, device)
    try:
        corruptions = parse_corruptions(",".join(cfg.diagnose.corrupt), data.channels) if cfg.diagnose.corrupt else []
    except CorruptionError as exc:
        raise ConfigError(f"diagnose.corrupt: {exc}") from None
    ft = cfg.finetune
    plan = _freeze_plan(model, ft)
    optimizer, decayed = build_optimizer(
        model,
        name=cfg.optim.name,
        lr=cfg.lr,
        wd=cfg.wd,
        decay=cfg.decay.name,
        exclude=list(cfg.decay.exclude),
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov,
        betas=list(cfg.optim.betas),
        eps=cfg.optim.eps,
        lr_mult=lr_mult(model, ft.backbone_lr_mult) if ft.name != "scratch" else None,
    )
    batch = cfg.batch_size // ranks.world
    steps = steps_per_epoch(len(data.train) // ranks.world, batch)
    sched = OmegaConf.to_container(cfg.sched, resolve=True)
    plateau = Plateau(sched["factor"], sched["patience"]) if sched["name"] == "plateau" else None
    clean, noisy = _watched_subsets(cfg, data)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1 + ranks.seed_offset())
    if ranks.world > 1:
        torch.manual_seed(cfg.seed + ranks.seed_offset())  # dropout masks differ between ranks too
    pipeline = Pipeline(
        mean=torch.tensor(data.mean, device=device).view(1, -1, 1, 1),
        std=torch.tensor(data.std, device=device).view(1, -1, 1, 1),
        channels_last=cfg.channels_last,
        augment=Augment(cfg.aug, aug_gen, compiled=compiles_aug(cfg, device)) if Augment.active(cfg.aug) else None,
        tta=cfg.tta == "flip",
    )
    schedule = lr_schedule(
        sched, lr=cfg.lr, epochs=cfg.epochs, steps=steps, plateau=plateau, average=OmegaConf.to_container(cfg.average)
    )
    step = StepParts(
        optimizer=optimizer,
        pipeline=pipeline,
        amp=autocast(device, precision),
        lr_at=schedule,
        momentum_at=schedule.momentum if schedule.momentum(0) is not None else None,
        scaler=torch.amp.GradScaler(device.type) if precision == "16" else None,
        penalty=(lambda: penalty(decayed, decay=cfg.decay.name, wd=cfg.wd)) if decayed else None,
        label_smoothing=cfg.label_smoothing,
        jsd=cfg.aug.augmix.jsd if Augment.views(cfg.aug) == 3 else 0.0,
        clip=gradient_clipper(cfg.clip_mode, cfg.clip_grad, list(model.parameters())) if cfg.clip_grad else None,
    )
    return Parts(
        cfg=cfg,
        device=device,
        precision=precision,
        data=data,
        clean=clean,
        noisy=noisy,
        model=model,
        eval_net=torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model,
        step=step,
        plan=plan,
        plateau=plateau,
        early=EarlyStop(cfg.early_stop.patience, cfg.early_stop.min_delta),
        aug_gen=aug_gen,
        corruptions=corruptions,
        steps=steps,
        batch=batch,
        weights=weights,
        average=make_average(cfg, model),
        writer=checkpoint.Writer(
            cfg.checkpoint.background if cfg.checkpoint.background is not None else device.type == "cuda"
        ),
    )


def _freeze_plan(model: nn.Module, ft: DictConfig) -> FreezePlan:
    try:
        return FreezePlan(
            model,
            mode=ft.name,
            freeze=list(ft.freeze),
            bn=ft.bn,
            unfreeze_epoch=ft.unfreeze_epoch,
            stages=ft.stages,
            stage_epochs=ft.stage_epochs,
        )
    except FinetuneError as exc:
        raise RunFailed(str(exc)) from None


def _watched_subsets(cfg: DictConfig, data: Data) -> tuple[Split | None, Split | None]:
    """(clean, noisy): the fixed training subset scored each epoch without augmentation (diagnose.clean_train),
    and with label noise the images whose labels were flipped (up to diagnose.clean_size)."""
    clean = None
    if cfg.diagnose.clean_train:
        # with label noise, the subset is the one a run without noise takes, scored against the true labels
        true_y = data.train.true_y if data.train.true_y is not None else data.train.y
        pick, _ = stratified_split(
            true_y.cpu(), min(cfg.diagnose.clean_size, len(data.train)), torch.Generator().manual_seed(cfg.seed)
        )
        clean = data.train.subset(pick.to(data.train.y.device))
        if clean.true_y is not None:
            files = clean.files.with_labels(clean.true_y.cpu()) if clean.files is not None else None
            clean = Split(y=clean.true_y, x=clean.x, files=files)
    noisy = None
    if data.train.true_y is not None:  # label noise: the flipped images, evaluated every epoch (up to clean_size)
        flipped = torch.nonzero(data.train.y != data.train.true_y).flatten()[: cfg.diagnose.clean_size]
        noisy = data.train.subset(flipped) if len(flipped) else None
    return clean, noisy


def _data_and_model(cfg: DictConfig, device: torch.device) -> tuple[Data, nn.Module, tuple[str, list[str]] | None]:
    """The data (on the device unless it streams) and the model, with pretrained weights when asked."""
    ft, pretrained = cfg.finetune, None
    if ft.weights:  # before the data: a missing file should not wait for a dataset to load
        try:
            pretrained = load_source(ft.weights, cfg.model.name, OmegaConf.to_container(cfg.model, resolve=True))
        except FinetuneError as exc:
            raise RunFailed(str(exc)) from None
    size = pretrained.image_size if pretrained is not None and cfg.data.image_size is None else None
    data = load_config(cfg.data, image_size=size)  # a pretrained model's own size, unless one is set
    if pretrained is not None and pretrained.mean and cfg.data.mean is None:
        # the weights' input statistics; 3 values on grey data normalize it as grey RGB
        if len(pretrained.mean) == data.channels or (data.channels == 1 and cfg.model.name not in MODELS):
            data.mean, data.std = list(pretrained.mean), list(pretrained.std)
    if not data.streaming:
        data = to_device(data, device)
    elif cfg.data.decode == "device" and device.type == "cpu":
        logging.getLogger("regx").warning(
            "data.decode=device on the CPU decodes each batch in the main process, without the workers: "
            "data.decode=pil is faster there (BENCHMARKS.md, section 9)"
        )
    kwargs = model_kwargs(cfg, num_classes=data.num_classes, in_channels=data.channels, image_size=data.image_size)
    weights = None
    if pretrained is None:
        model = build_model(**kwargs)
    else:
        try:
            model, dropped = build_pretrained(pretrained, **kwargs)
        except FinetuneError as exc:
            raise RunFailed(f"finetune.weights={ft.weights}: {exc}") from None
        weights = (pretrained.source, dropped)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    return data, model, weights


def _rng_state(parts: Parts) -> dict:
    state = {"torch": torch.get_rng_state(), "aug": parts.aug_gen.get_state()}
    if parts.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(parts.device)
    return state


def save(
    parts: Parts, state: RunState, ranks: Ranks, ckpt_dir: Path, hooks=(), *, best: bool, tally: Tally | None = None
) -> None:
    """Checkpoint the run (collective): weights, optimizer, every rank's RNG, and `state`; mid-epoch
    with the epoch's tally. Only rank 0 writes."""
    state.batch, state.tally = (tally.batches, tally.state_dict()) if tally is not None else (0, None)
    ranks_rng = ranks.gather({"rng": _rng_state(parts), "tally": state.tally})
    state.tally_ranks = [r["tally"] for r in ranks_rng] if ranks.world > 1 else None
    if not ranks.main:
        return
    cfg, data = parts.cfg, parts.data
    ckpt = checkpoint.Checkpoint(
        model=parts.model.state_dict(),
        config=OmegaConf.to_container(cfg, resolve=True),
        state=asdict(state),
        classes=data.classes,
        norm={"mean": list(data.mean), "std": list(data.std)},
        in_channels=data.channels,
        image_size=data.image_size,
        optimizer=parts.step.optimizer.state_dict(),
        rng=_rng_state(parts),
        rng_ranks=[r["rng"] for r in ranks_rng] if ranks.world > 1 else None,
        scaler=parts.step.scaler.state_dict() if parts.step.scaler is not None else None,
        plateau=parts.plateau.state_dict() if parts.plateau is not None else None,
        average=parts.average.state_dict() if parts.average is not None else None,
    )
    parts.writer.save(
        ckpt, ckpt_dir, best=best, before_rename=lambda tmp: [h.checkpoint_written(str(tmp)) for h in hooks]
    )


def restore(parts: Parts, ranks: Ranks, ckpt_dir: Path, log) -> RunState:
    """The newest intact checkpoint's weights, optimizer, RNG and state (mid-epoch: its tally)."""
    try:
        path, ckpt, problems = newest_intact(ckpt_dir, map_location=parts.device)
    except CorruptCheckpoint as exc:
        raise RunFailed(str(exc)) from None
    for problem in problems:
        log.warning("%s", problem)
    if problems:
        log.warning("falling back to %s (epoch %d, step %d)", path, ckpt.epoch, ckpt.step)
    parts.model.load_state_dict(ckpt.model)
    parts.step.optimizer.load_state_dict(ckpt.optimizer)
    if parts.step.scaler is not None and ckpt.scaler:
        parts.step.scaler.load_state_dict(ckpt.scaler)
    if parts.plateau is not None and ckpt.plateau:
        parts.plateau.load_state_dict(ckpt.plateau)
    if parts.average is not None:  # averaging switched on at a resume starts from the weights as they are
        parts.average.load_state_dict(ckpt.average or {"model": ckpt.model, "updates": 0})
    rng = ckpt.rng_ranks[ranks.rank] if ranks.world > 1 else ckpt.rng
    # Generator states are CPU byte tensors; a checkpoint loaded onto the GPU has moved them there.
    torch.set_rng_state(rng["torch"].cpu())
    parts.aug_gen.set_state(rng["aug"].cpu())
    if parts.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), parts.device)
    state = RunState(**ckpt.state)
    best = ckpt_dir / "best.pt"
    if (
        ranks.main
        and state.best_epoch == ckpt.epoch
        and not state.batch
        and checkpoint.manifest_epoch(best) != ckpt.epoch
    ):
        checkpoint.publish_best(ckpt_dir, path)  # stopped after publishing this best as last.pt, before best.pt
        log.warning(
            "best.pt did not hold the best epoch (%d): the run was stopped while publishing it; it is %s's copy now",
            state.best_epoch,
            path.name,
        )
    elif ranks.main and state.best_epoch is not None and checkpoint.manifest_epoch(best) != state.best_epoch:
        log.warning(
            "best.pt does not hold the best epoch (%d) and no checkpoint of it is left: the test "
            "evaluation will use the newest intact checkpoint, and summary.json says which",
            state.best_epoch,
        )
    if ranks.world > 1 and state.batch:
        state.tally = state.tally_ranks[ranks.rank]
    state.stopped_early = None  # resuming a run that stopped early: its new patience decides again
    _continue_schedule(parts, state, state.sched_epochs or ckpt.config["epochs"], log)
    where = f"epoch {state.epoch + 1} batch {state.batch + 1}" if state.batch else f"epoch {state.epoch + 1}"
    log.info("resuming %s at %s (step %d) from %s", ckpt_dir.parent, where, state.step, path.name)
    return state


def _continue_schedule(parts: Parts, state: RunState, planned: int, log) -> None:
    """A resumed run goes on with the schedule it ran. Given more epochs than that schedule spans, it
    keeps the rate the schedule ends with, or, with sched.restart=true, begins a new cycle there."""
    cfg, schedule = parts.cfg, parts.step.lr_at
    end = state.sched_start // parts.steps + planned  # the epoch the schedule's cycle ends with
    state.sched_epochs = planned
    if cfg.epochs > end and cfg.sched.restart:
        state.sched_start, state.sched_epochs = state.step, cfg.epochs - state.epoch
        log.info("sched.restart=true: a new %s cycle over epochs %d-%d", cfg.sched.name, state.epoch + 1, cfg.epochs)
    schedule.restart(state.sched_start, state.sched_epochs)
    if isinstance(parts.average, Swa):  # SWA's start (null: 75% in) stays where the planned run put it
        average = OmegaConf.to_container(cfg.average)
        parts.average.start_epoch = swa_start(average, planned)
        schedule.swa = swa_window(average, planned, parts.steps)
    if cfg.epochs > end and not cfg.sched.restart:
        final = schedule(state.sched_start + planned * parts.steps)
        log.warning(
            "the %s schedule ran over %d epochs; epochs %d-%d go on at its final lr %.3g%s (sched.restart=true "
            "starts a new cycle instead)",
            cfg.sched.name,
            planned,
            end + 1,
            cfg.epochs,
            final,
            ": the weights stay as they are (BatchNorm statistics still move)" if final == 0 else "",
        )


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    hooks: tuple[Hook, ...] = (),
    overrides: list[str] | None = None,
    owned: Callable[[], None] | None = None,
) -> dict:
    """Train as `cfg` says, writing everything into `run_dir`; return the summary.

    `overrides`: the `regx train` arguments that make `cfg` (summary.json keeps them; the verdict's
    remedies are commands built on them); None keeps the ones a resumed run recorded. `owned`: called
    once this process owns `run_dir`, before anything else is written into it.

    With resume=True, continue from the newest intact checkpoint in `run_dir/checkpoints`, mid-epoch
    if it was written mid-epoch: on CPU the result equals an uninterrupted run bit for bit (timing
    aside). `hooks` run around every training step (engine.Hook). The process owns `run_dir` while it
    trains (runs.owner): RunBusy, and nothing touched, when another process does. Raises RunFailed (summary status
    `failed`) on error, Interrupted after a SIGTERM/SIGINT (status `interrupted`, a checkpoint
    written) and KeyboardInterrupt on a second Ctrl-C.
    """
    ranks = Ranks()
    with owner(run_dir, enabled=ranks.main):  # RunBusy while another process trains in run_dir
        if owned is not None and ranks.main:
            owned()  # the first write into run_dir: Hydra's record (sweep.write_hydra_record)
        rec = Recorder(cfg, Path(run_dir), main=ranks.main, resume=resume, overrides=overrides)
        try:
            with StopRequest() as stop:
                return _run(cfg, rec, ranks, stop, resume, tuple(hooks))
        except KeyboardInterrupt:
            rec.interrupted()
            raise
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, RunFailed | ValueError | RuntimeError | OSError):
                message = f"{type(exc).__name__}: {message}"
            if out_of_files(exc):  # before anything is written: what the failed step held open goes first
                let_go(exc)
                message = out_of_files(exc)
            rec.failed(message)
            raise RunFailed(message) from exc
        finally:
            rec.end()


def _run(
    cfg: DictConfig, rec: Recorder, ranks: Ranks, stop: StopRequest, resume: bool, hooks: tuple[Hook, ...]
) -> dict:
    """The epoch loop."""
    parts = build(cfg, pick_device(ranks.device(cfg.device)), ranks)
    for h in hooks:
        h.start(parts)
    if parts.weights:
        rec.weights(*parts.weights, num_classes=parts.data.num_classes)
    rec.aug_preview(_examples(parts.data.train), resume)
    if not resume:
        rec.label_noise(parts.data.train, cfg.data.label_noise, cfg.data.label_noise_kind)
    ckpt_dir = rec.run_dir / "checkpoints"
    state = restore(parts, ranks, ckpt_dir, rec.log) if resume else RunState(sched_epochs=cfg.epochs)
    if resume:
        rec.metrics(state.history)  # drop the rows written after that checkpoint
    parts.plan.apply(state.epoch + 1)
    rec.start(_facts(parts), state)
    if not resume:
        _warn_few_steps(parts, rec.log)
        _warn_unreached(cfg, rec.log)
    poll = StopPoll(stop, ranks, parts.device, 1 if parts.device.type == "cpu" else cfg.progress_every)
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            if state.stopped_early:
                break
            started = time.perf_counter() - (state.tally or {}).get("seconds", 0.0)  # a resumed epoch's part
            trains = parts.plan.apply(epoch)  # what trains this epoch (a resumed run restores it here)
            tr = _train_epoch(parts, state, ranks, rec, epoch, trains, poll, hooks)
            row, is_best = _end_epoch(parts, state, rec, epoch, trains, tr, started)
            save(parts, state, ranks, ckpt_dir, hooks, best=is_best)
            rec.epoch(row, state, is_best=is_best)
            if poll.requested():
                raise Interrupted(stop.signum or signal.SIGTERM)
        if isinstance(parts.average, Swa):
            _finish_swa(parts, state, ranks, rec, hooks)
        parts.writer.wait()  # the last checkpoint is on disk (best.pt is read next); a failed write fails the run
        results = _results(parts, state, ranks, rec, stop)
        if stop():  # asked during the test evaluation's last moments: a resume redoes it
            raise Interrupted(stop.signum)
        rec.finish(results)
    except BaseException:
        parts.writer.wait(log=rec.log)  # a stop's checkpoint is on disk before the process ends
        raise
    finally:
        ranks.release()
        rec.close(state.history)
    return rec.summary


def _examples(train: Split) -> torch.Tensor:
    """A few training images, one per class first: what aug_preview.png shows."""
    examples = train.subset(pick_examples(train.y.cpu(), 8).to(train.y.device))
    return next(iterate(examples, 8))[0]


def compiles_aug(cfg: DictConfig, device: torch.device) -> bool:
    """Whether the run compiles its augmentation: compile_aug, or when null, on CUDA with `compile`."""
    return cfg.compile_aug if cfg.compile_aug is not None else bool(cfg.compile) and device.type == "cuda"


def _facts(parts: Parts) -> dict:
    """The summary's description of what build() made."""
    cfg, data, groups = parts.cfg, parts.data, parts.step.optimizer.param_groups
    total, trainable, aug = *count_params(parts.model), parts.step.pipeline.augment
    return dict(
        device=str(parts.device),
        precision=parts.precision,
        compiled=[w for w, on in (("model", cfg.compile), ("augmentation", aug is not None and aug.compiled)) if on],
        params=total,
        trainable_params=trainable,
        frozen_params=total - trainable,
        finetune=cfg.finetune.name,
        average=cfg.average.name,
        decay=cfg.decay.name if cfg.wd > 0 else "off",
        decayed_params=sum(p.numel() for g in groups if g["decayed"] for p in g["params"]),
        not_decayed_params=sum(p.numel() for g in groups if not g["decayed"] for p in g["params"]),
        num_classes=data.num_classes,
        image_size=data.image_size,
        n_train=len(data.train),
        n_val=len(data.val),
        n_test=len(data.test) if data.test is not None else 0,
        tta=cfg.tta,
    )


class StopPoll:
    """Ends the epoch after a step when a stop was asked for (SIGTERM/SIGINT); under torchrun when any
    rank was asked, polled by all ranks together every `every` calls (each poll is a collective)."""

    def __init__(self, stop: StopRequest, ranks: Ranks, device: torch.device, every: int):
        self.stop, self.ranks, self.device, self.every, self.polls = stop, ranks, device, every, 0

    def requested(self) -> bool:
        if self.ranks.world == 1:
            return self.stop()
        self.polls += 1
        return self.polls % self.every == 0 and self.ranks.any(self.stop(), self.device)


def refresh_every(progress_every: int, steps: int) -> int:
    """Steps between progress-bar refreshes: progress_every, or often enough to move about 20 times
    in a short epoch."""
    return max(1, min(progress_every, steps // 20))


class Progress(Hook):
    """The terminal's progress bar, refreshed every `every` steps and at the epoch's end (each refresh
    reads the device)."""

    def __init__(self, bar: EpochProgress, every: int):
        self.bar, self.every = bar, every

    def after_step(self, info: StepInfo) -> None:
        if info.tally.batches % self.every == 0:
            self.after_epoch(info)

    def after_epoch(self, info: StepInfo) -> None:
        t = info.tally
        n = t.images
        self.bar.update(t.batches, t.loss_sum.item() / n, t.correct.item() / n, info.lr, n / max(info.elapsed, 1e-9))


class MidEpochCheckpoint:
    """A checkpoint every `every` steps within an epoch, and at the step a stop was asked for; the NaN
    check first, so a checkpoint never holds a diverged state."""

    def __init__(self, every: int, steps: int, loss_check: LossCheck, save_at):
        self.every, self.steps, self.loss_check, self.save_at = every, steps, loss_check, save_at

    def __call__(self, info: StepInfo) -> None:
        i = info.tally.batches
        if not ((self.every and i % self.every == 0) or info.stop):
            return
        if i == self.steps and not info.stop:
            return  # the end-of-epoch checkpoint follows at once
        self.loss_check.check()
        info.tally.seconds = info.elapsed
        self.save_at(info)


def _train_epoch(
    parts: Parts,
    state: RunState,
    ranks: Ranks,
    rec: Recorder,
    epoch: int,
    trains: str,
    poll: StopPoll,
    hooks: tuple[Hook, ...],
) -> EpochResult:
    """Train one epoch (the rest of one, when resumed mid-epoch); its metrics over all ranks."""
    cfg, device = parts.cfg, parts.device
    epoch_start = state.step - state.batch
    tally = Tally.from_state(state.tally, device) if state.batch else Tally.zero(device)
    order = torch.randperm(len(parts.data.train), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    batches = iterate(
        parts.data.train,
        parts.batch,
        order=ranks.shard(order),
        device=device,
        workers=cfg.data.workers,
        start=state.batch,
        drop_single=True,
    )

    def save_at(info: StepInfo) -> None:
        state.step, state.wall_s = info.step + 1, rec.wall_s()
        save(parts, state, ranks, rec.run_dir / "checkpoints", hooks, best=False, tally=info.tally)

    loss_check = LossCheck(
        device, 1 if device.type == "cpu" else cfg.progress_every, loss_limit(parts, state), ranks.max
    )
    net = ranks.net(parts.model, trains, device, cfg.compile_mode if cfg.compile else None) or parts.eval_net
    with EpochProgress(f"epoch {epoch}/{cfg.epochs}", parts.steps, show=ranks.main) as bar:
        progress = [Progress(bar, refresh_every(cfg.progress_every, parts.steps))] if bar.active else []
        loop = LoopSteps(
            loss_check,
            average=parts.average.update if parts.average is not None else None,
            stop_requested=poll.requested,
            checkpoint=MidEpochCheckpoint(cfg.checkpoint.every_steps, parts.steps, loss_check, save_at),
        )
        try:
            tr = train_one_epoch(
                net, parts.step, batches, first_step=state.step, tally=tally, loop=loop, hooks=[*progress, *hooks]
            )
        except Diverged as exc:
            raise _diverged(parts, rec, epoch, exc) from None
    if not tr.finished and tr.steps < parts.steps:
        raise Interrupted(poll.stop.signum or signal.SIGTERM)
    state.step = epoch_start + tr.steps
    if ranks.world > 1:  # the epoch's metrics over all ranks; one set of weights to evaluate and save
        ranks.sync_buffers(parts.model)
        sums = ranks.sum(
            torch.stack(
                [tr.tally.loss_sum.float(), tr.tally.correct.float(), torch.tensor(float(tr.images), device=device)]
            )
        )
        tr.loss, tr.acc, tr.images = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item(), int(sums[2])
    return tr


def loss_limit(parts: Parts, state: RunState) -> float:
    """The training loss above which a run has diverged: 100 times the larger of ln(classes) (what
    a uniform guess scores) and the first epoch's mean loss."""
    first = state.history[0]["train_loss"] if state.history else 0.0
    return 100 * max(math.log(parts.data.num_classes), first)


def _diverged(parts: Parts, rec: Recorder, epoch: int, exc: Diverged) -> RunFailed:
    """The run's end when its loss diverged: the step, the loss, the lr, and what is on disk."""
    lr = parts.step.lr_at(exc.step)
    rec.diverged({"step": exc.step, "epoch": epoch, "loss": str(exc.loss), "limit": exc.limit, "lr": lr})
    last = rec.run_dir / "checkpoints" / "last.pt.json"
    try:
        m = read_json(last)
        kept = f"the newest checkpoint (epoch {m['epoch']}, step {m['step']}) is from before it"
    except (OSError, ValueError, KeyError):
        kept = "no checkpoint was written before it"
    return RunFailed(
        f"{exc} (epoch {epoch}, lr {lr:.4g}): the run diverged; {kept}. Lower the learning rate "
        f"(lr={parts.cfg.lr / 10:g}) or add warmup (sched.warmup_epochs=1)"
    )


def _evaluate(parts: Parts, split: Split, stop: StopRequest | None = None, net: nn.Module | None = None) -> Evaluation:
    batches = iterate(split, parts.cfg.eval_batch_size, device=parts.device, workers=parts.cfg.data.workers)
    return evaluate(
        net or parts.eval_net,
        batches if stop is None else _until_stopped(batches, stop),
        pipeline=parts.step.pipeline,
        amp=parts.step.amp,
    )


def _memorization(parts: Parts) -> tuple[float, float]:
    """The flipped training images (data.label_noise), in eval mode: the accuracy against the labels they
    were given (wrong on purpose: memorization) and against their true ones."""
    ev = _evaluate_kept(parts, parts.noisy)
    predicted = ev.logits.argmax(1)
    return ev.acc, float((predicted == parts.noisy.true_y.cpu()).float().mean())


def _evaluate_kept(parts: Parts, split: Split) -> Evaluation:
    batches = iterate(split, parts.cfg.eval_batch_size, device=parts.device, workers=parts.cfg.data.workers)
    return evaluate(parts.eval_net, batches, pipeline=parts.step.pipeline, amp=parts.step.amp, keep_logits=True)


def _end_epoch(
    parts: Parts, state: RunState, rec: Recorder, epoch: int, trains: str, tr: EpochResult, started: float
) -> tuple[dict, bool]:
    """Evaluate, keep the best, decide early stopping; the metrics row and whether it is the best."""
    lr = parts.step.lr_at(state.step - 1)
    val = _evaluate(parts, parts.data.val)
    val_loss, val_acc = val.loss, val.acc
    clean = _evaluate(parts, parts.clean) if parts.clean is not None else None
    clean_loss, clean_acc = (clean.loss, clean.acc) if clean is not None else (None, None)
    average = parts.average
    if average is not None:
        average.end_epoch(epoch)  # swa: this epoch's weights join the average
    averaged = average is not None and average.updates > 0
    memorized = _memorization(parts) if parts.noisy is not None else (None, None)
    avg = _evaluate(parts, parts.data.val, net=average.module) if averaged else None
    avg_loss, avg_acc = (avg.loss, avg.acc) if avg is not None else (None, None)
    # the validation accuracy that picks the best epoch and stops early: the averaged weights' when selected,
    # except SWA's, whose BatchNorm statistics are the trained model's until _finish_swa recomputes them
    selects = averaged and parts.cfg.average.select == "averaged" and not isinstance(average, Swa)
    # the selected averaged weights' own fit, for the verdict on them (SWA's: once, in _finish_swa)
    avg_clean = _evaluate(parts, parts.clean, net=average.module) if selects and parts.clean is not None else None
    score = avg_acc if selects else val_acc
    if parts.plateau is not None:
        parts.plateau.update(val_loss)
    is_best = state.best_val_acc is None or score > state.best_val_acc
    parts.early.observe(state, epoch, score)
    if is_best:
        state.best_val_acc, state.best_epoch = score, epoch
    state.epoch = epoch
    row = asdict(
        EpochMetrics(
            epoch=epoch,
            train_loss=tr.loss,
            train_acc=tr.acc,
            val_loss=val_loss,
            val_acc=val_acc,
            gap=(clean_acc if clean_acc is not None else tr.acc) - val_acc,
            lr=lr,
            epoch_s=time.perf_counter() - started,
            wall_s=rec.wall_s(),
            img_per_s=tr.images / tr.seconds,
            clean_train_loss=clean_loss,
            clean_train_acc=clean_acc,
            trainable=trains,
            trainable_params=count_params(parts.model)[1],
            clipped=tr.tally.clipped.item() / max(tr.steps, 1) if parts.step.clip is not None else None,
            avg_val_loss=avg_loss,
            avg_val_acc=avg_acc,
            avg_clean_train_loss=avg_clean.loss if avg_clean is not None else None,
            avg_clean_train_acc=avg_clean.acc if avg_clean is not None else None,
            val_ece=val.ece,
            val_mce=val.mce,
            val_brier=val.brier,
            noisy_given_acc=memorized[0],
            noisy_true_acc=memorized[1],
        )
    )
    state.history.append(row)
    state.wall_s = rec.wall_s()
    reason = parts.early.reason(epoch, state.improved_epoch, state.best_val_acc, state.best_epoch)
    if reason and epoch < parts.cfg.epochs:
        state.stopped_early = {"epoch": epoch, "best_epoch": state.best_epoch, "reason": reason}
    return row, is_best


def _finish_swa(parts: Parts, state: RunState, ranks: Ranks, rec: Recorder, hooks) -> None:
    """average=swa after the last epoch: BatchNorm's statistics recomputed for the averaged weights over
    the training data (no augmentation), then their validation; with select=averaged they are the run's
    result (best.pt). Again on a resume after it: the statistics come out the same."""
    cfg, swa = parts.cfg, parts.average
    if not swa.updates:
        rec.log.warning(
            "average=swa averaged nothing: the run ended at epoch %d, before average.start_epoch=%d",
            state.epoch,
            swa.start_epoch,
        )
        return
    batches = iterate(parts.data.train, cfg.eval_batch_size, device=parts.device, workers=cfg.data.workers)
    seen = swa.update_bn((parts.step.pipeline.eval(x) for x, _ in batches), parts.step.amp)
    swa_val = _evaluate(parts, parts.data.val, net=swa.module)
    loss, acc = swa_val.loss, swa_val.acc
    state.history[-1].update(avg_val_loss=loss, avg_val_acc=acc)
    selected = cfg.average.select == "averaged"
    if selected and parts.clean is not None:
        clean = _evaluate(parts, parts.clean, net=swa.module)
        state.history[-1].update(avg_clean_train_loss=clean.loss, avg_clean_train_acc=clean.acc)
    rec.log.info(
        "average=swa: the weights of %d epochs (%d-%d) averaged; BatchNorm statistics recomputed over %d "
        "training images; val loss %.4f acc %.2f%%",
        swa.updates,
        swa.start_epoch,
        state.epoch,
        seen,
        loss,
        100 * acc,
    )
    if selected:
        state.best_val_acc, state.best_epoch = acc, state.epoch
    save(parts, state, ranks, rec.run_dir / "checkpoints", hooks, best=selected)
    rec.metrics(state.history)
    rec.progress(state)


def _best_weights(rec: Recorder, device: torch.device) -> dict:
    """best.pt's weights for the test evaluation; when best.pt is missing or fails to verify or load,
    the newest intact checkpoint's, saying so (summary.json's `test_checkpoint` names the file)."""
    ckpt_dir = rec.run_dir / "checkpoints"
    try:
        ckpt = checkpoint.read(ckpt_dir / "best.pt", map_location=device)
        if rec.summary.get("best_epoch") is not None and ckpt.epoch != rec.summary["best_epoch"]:
            raise CorruptCheckpoint(
                f"{ckpt_dir / 'best.pt'} holds epoch {ckpt.epoch}, not the best ({rec.summary['best_epoch']})"
            )
        rec.summary["test_checkpoint"] = "best.pt"
    except CorruptCheckpoint as exc:
        try:
            path, ckpt, _ = newest_intact(ckpt_dir, map_location=device)
        except CorruptCheckpoint as none:
            raise RunFailed(f"no checkpoint to test: {none}") from None
        rec.log.warning("%s; the test evaluation uses %s (epoch %d) instead", exc, path.name, ckpt.epoch)
        rec.summary["test_checkpoint"] = path.name
    return ckpt.weights()


def _warn_few_steps(parts: Parts, log) -> None:
    """A run with too few optimizer steps to learn much says so before it trains."""
    cfg, total, n = parts.cfg, parts.steps * parts.cfg.epochs, len(parts.data.train)
    if total < FEW_STEPS:
        how, more = more_steps(n, cfg.epochs, cfg.batch_size)
        log.warning(
            "only %d optimizer steps in all (%d per epoch x %d epochs: %d training images in batches of %d); "
            "too few to judge a regularizer by%s",
            total,
            parts.steps,
            cfg.epochs,
            n,
            cfg.batch_size,
            f": {how} gives about {more}" if how else "",
        )


def _warn_unreached(cfg, log) -> None:
    """Settings the run's epochs leave no room for, said before training (regx resume with more epochs
    may reach them): a patience that can never stop the run, a schedule step or milestone at or after the
    last epoch, and a warmup that never ends (the rate never reaches `lr`)."""
    for line in unreached(cfg):
        log.warning("%s", line)


def unreached(cfg) -> list[str]:
    """What _warn_unreached says for `cfg`, one line each."""
    epochs, patience, out = cfg.epochs, cfg.early_stop.patience, []
    if patience and patience + 1 >= epochs:  # the first epoch is always a best
        fix = f"early_stop.patience={epochs - 2} or less, or more epochs" if epochs > 2 else "more epochs"
        out.append(
            f"early_stop.patience={patience}: a run of {epochs} epochs never stops early (the earliest stop is "
            f"after epoch {patience + 1}); {fix}"
        )
    return out + sched_unreached(OmegaConf.to_container(cfg.sched, resolve=True), epochs=epochs, lr=cfg.lr)


def _until_stopped(batches, stop: StopRequest):
    """`batches`, ending with Interrupted when a stop is asked for."""
    for batch in batches:
        if stop():
            raise Interrupted(stop.signum)
        yield batch


def _robustness(parts: Parts, test: Split, stop: StopRequest, rec: Recorder, clean: float) -> dict:
    """The test split corrupted (diagnose.corrupt): summary.json's test_corrupt_acc (the mean) and corruption."""
    cfg = parts.cfg
    severities = list(cfg.diagnose.corrupt_severities)
    scored = robustness(
        parts.eval_net,
        lambda: _until_stopped(iterate(test, cfg.eval_batch_size, device=parts.device, workers=cfg.data.workers), stop),
        pipeline=parts.step.pipeline,
        amp=parts.step.amp,
        corruptions=parts.corruptions,
        severities=severities,
    )
    rec.log.info(
        "corrupted test images (%s, severities %s): mean acc %.2f%%, %.2f points below clean; %s",
        ", ".join(parts.corruptions),
        ",".join(map(str, severities)),
        100 * scored["mean"],
        100 * (clean - scored["mean"]),
        ", ".join(f"{n} {100 * sum(a.values()) / len(a):.2f}%" for n, a in scored["accuracy"].items()),
    )
    return {"test_corrupt_acc": scored["mean"], "corruption": {"severities": severities, **scored}}


def _results(parts: Parts, state: RunState, ranks: Ranks, rec: Recorder, stop: StopRequest) -> dict:
    """After the last epoch: the DDP agreement check, the test split on best.pt, the verdict. A stop
    asked for during the test evaluation ends it (Interrupted): `regx resume` evaluates again."""
    cfg, device, test = parts.cfg, parts.device, parts.data.test
    out = {}
    agreement = ranks.agreement(parts.model, state.history[-1]["val_acc"] if state.history else None)
    if agreement:
        out["ddp"] = agreement
    out.update(test_acc=None, test_loss=None, test_ece=None, test_mce=None, test_brier=None)
    if ranks.main and test is not None and len(test):
        parts.model.load_state_dict(_best_weights(rec, device))
        tested = _evaluate(parts, test, stop)
        out.update(
            test_loss=tested.loss,
            test_acc=tested.acc,
            test_ece=tested.ece,
            test_mce=tested.mce,
            test_brier=tested.brier,
        )
        if parts.corruptions:
            out.update(_robustness(parts, test, stop, rec, tested.acc))
        if cfg.dropout.mc_samples > 0:
            batches = _until_stopped(iterate(test, cfg.eval_batch_size, device=device, workers=cfg.data.workers), stop)
            out["mc_test_acc"], out["mc_entropy"] = mc_dropout(
                parts.eval_net,
                batches,
                pipeline=parts.step.pipeline,
                amp=parts.step.amp,
                samples=cfg.dropout.mc_samples,
            )
            rec.log.info(
                "MC dropout (%d passes): test acc %.2f%%, mean predictive entropy %.3f nats",
                cfg.dropout.mc_samples,
                100 * out["mc_test_acc"],
                out["mc_entropy"],
            )
    averaged = parts.average is not None and cfg.average.select == "averaged" and parts.average.updates > 0
    kind, evidence = verdict(state.history, best_epoch=state.best_epoch, target=cfg.diagnose.target, averaged=averaged)
    evidence["optimizer_steps"] = state.step
    rows = {r["epoch"]: r for r in state.history}
    if state.history and state.history[-1].get("noisy_given_acc") is not None:  # how much label noise it memorized
        evidence["memorized_at_epoch"] = rows.get(evidence.get("epoch"), state.history[-1])["noisy_given_acc"]
        evidence["memorized_final"] = state.history[-1]["noisy_given_acc"]
    overrides = rec.summary["overrides"]
    out.update(
        verdict=kind,
        evidence=evidence,
        remedies=[
            f"{what}: {command(overrides, how)}" for what, how in remedies(kind, cfg, evidence, len(parts.data.train))
        ],
    )
    return out

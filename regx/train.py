"""train(cfg, run_dir) -> summary: build everything from the config, run the epoch loop, write the run."""

from __future__ import annotations

import logging
import os
import platform
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from regx import __version__, distributed
from regx.augment import Augment
from regx.console import EpochProgress, console, setup_logging
from regx.data import iterate, load_data, stratified_split, to_device
from regx.diagnose import remedies, verdict
from regx.engine import (
    EpochResult,
    NonFiniteLoss,
    Pipeline,
    Tally,
    autocast,
    evaluate,
    fault_at,
    mc_dropout,
    train_one_epoch,
)
from regx.finetune import FinetuneError, FreezePlan, build_pretrained, load_source, lr_mult
from regx.models import MODELS, build_model, count_params
from regx.regularize import build_optimizer, penalty
from regx.report import curves_plot, pick_examples, save_aug_grid
from regx.runs import (
    CorruptCheckpoint,
    clean_temporary,
    load_verified,
    newest_intact,
    read_json,
    save_checkpoint,
    write_json,
    write_metrics,
    write_text,
)
from regx.schedules import Plateau, lr_schedule, steps_per_epoch


class RunFailed(RuntimeError):
    """The run stopped with an error; summary.json says `failed` and holds the message."""


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunFailed(f"device={spec}: CUDA is not available on this machine (use device=cpu or device=auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunFailed(f"device={spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RunFailed("device=mps: MPS is not available on this machine")
    return device


def cpu_has_bf16() -> bool:
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p() for p in probes if p is not None)


def pick_precision(spec: str, device: torch.device) -> str:
    """`auto`: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX-512 bf16
    or AMX), else fp32. fp16 needs a GradScaler and is used only when asked for."""
    if spec != "auto":
        return spec
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "32"
    return "32"


def _rng_state(aug_gen: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "aug": aug_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, aug_gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    aug_gen.set_state(state["aug"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run after a step and a checkpoint; `code` is the exit status
    a shell expects for that signal (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


class StopRequest:
    """The first SIGTERM/SIGINT asks the run to stop after the current step (what SLURM sends
    before preemption); a second SIGINT stops at once. Handlers are installed only in the main thread."""

    def __init__(self):
        self.signum: int | None = None
        self._saved: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        # no logging here: a handler can run while the logging lock is held
        os.write(2, f"regx: {signal.Signals(signum).name}: stopping after this step and saving a checkpoint"
                    f"{' (Ctrl-C again to stop at once)' if signum == signal.SIGINT else ''}\n".encode())

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False


def train(cfg: DictConfig, run_dir: str | Path, *, resume: bool = False) -> dict:
    """Train as `cfg` says, writing everything into `run_dir`; return the summary.

    With resume=True, continue from the newest intact checkpoint in `run_dir/checkpoints`, mid-epoch
    if it was written mid-epoch: on CPU the result equals an uninterrupted run bit for bit (timing
    aside). Raises RunFailed (summary status `failed`) on error, Interrupted after a SIGTERM/SIGINT
    (status `interrupted`, a checkpoint written) and KeyboardInterrupt on a second Ctrl-C.
    """
    run_dir = Path(run_dir)
    distributed.setup()
    main = distributed.is_main()  # under torchrun only rank 0 writes (and talks)
    log = setup_logging(run_dir / "train.log" if main else None, quiet=not main)
    for tmp in clean_temporary(run_dir) if main else []:
        log.warning("removed %s, left by a run that was killed while writing it", tmp)
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if resume and summary_path.is_file() else {}
    summary.update(status="running", name=cfg.name, run_dir=str(run_dir), regx_version=__version__,
                   torch_version=torch.__version__, host=platform.node(), pid=os.getpid(), error=None,
                   threads=torch.get_num_threads(),
                   started=summary.get("started") or datetime.now().isoformat(timespec="seconds"))
    if main:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(summary_path, summary)
    t0 = time.perf_counter()
    try:
        with StopRequest() as stop:
            return _train(cfg, run_dir, summary, resume, log, t0, stop)
    except KeyboardInterrupt:
        summary.update(status="interrupted")
        if main:
            write_json(summary_path, summary)
        if (run_dir / "checkpoints" / "last.pt").is_file():
            log.warning("interrupted; resume with: regx resume %s", run_dir)
        else:
            log.warning("interrupted before the first checkpoint: nothing to resume")
        raise
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, RunFailed | ValueError | RuntimeError | OSError):
            message = f"{type(exc).__name__}: {message}"
        summary.update(status="failed", error=message)
        if main:
            write_json(summary_path, summary)
        log.error("run failed: %s", message)
        raise RunFailed(message) from exc


def _killsave_hook(step: int):
    """REGX_FAULT=killsave@N: SIGKILL between writing a checkpoint's temporary file and renaming it."""
    fault = fault_at()
    if fault is not None and fault[0] == "killsave" and step >= fault[1]:
        return lambda tmp: os.kill(os.getpid(), signal.SIGKILL)
    return None


def _train(cfg: DictConfig, run_dir: Path, summary: dict, resume: bool, log, t0: float, stop: StopRequest) -> dict:
    run = _Run(cfg, run_dir, summary, log, t0, stop, resume)
    tb = run.tensorboard()
    try:
        for epoch in range(run.state["epoch"] + 1, cfg.epochs + 1):
            if run.state["stopped_early"]:
                break
            t_epoch = time.perf_counter()
            trains = run.plan.apply(epoch)  # what trains this epoch (a resumed run restores it here)
            tr, start_step, resumed_s = run.train_epoch(epoch, trains)
            row = run.end_epoch(epoch, trains, tr, start_step, started=t_epoch - resumed_s)
            if tb is not None:
                tb.epoch(row, run.state["best_val_acc"])
            if run.stop_all():
                raise Interrupted(stop.signum or signal.SIGTERM)
        run.finish()
    finally:
        try:
            run.draw_curves(final=True)  # every finished epoch, however the run ended
        except Exception as exc:  # noqa: BLE001 - metrics.csv has it all; `regx plot` redraws
            log.warning("curves.png was not redrawn: %s", exc)
        if tb is not None:
            tb.finish(summary)
    if run.main:
        _print_summary(summary, log)
    return summary


class _Run:
    """One run: what its config builds (data, model, optimizer, schedule, pipeline), its state (saved
    in every checkpoint) and the steps of an epoch. `_train` drives it; under torchrun every rank
    holds one and calls the same methods in the same order (some are collectives)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, summary: dict, log, t0: float, stop: StopRequest, resume: bool):
        self.cfg, self.run_dir, self.summary, self.log, self.t0, self.stop = cfg, run_dir, summary, log, t0, stop
        self.ckpt_dir = run_dir / "checkpoints"
        self.main, self.rank, self.world = distributed.is_main(), distributed.rank(), distributed.size()
        main, rank, world = self.main, self.rank, self.world
        self.device = device = pick_device(distributed.device_for_rank(cfg.device))
        if cfg.batch_size % world:
            raise RunFailed(f"batch_size={cfg.batch_size} must divide by the {world} processes (each takes an equal part)")
        self.batch = cfg.batch_size // world
        self.precision = precision = pick_precision(cfg.precision, device)
        torch.manual_seed(cfg.seed)
        self.data, self.model = self._data_and_model()
        data, model, ft = self.data, self.model, cfg.finetune
        try:
            self.plan = FreezePlan(model, mode=ft.name, freeze=list(ft.freeze), bn=ft.bn, unfreeze_epoch=ft.unfreeze_epoch,
                                   stages=ft.stages, stage_epochs=ft.stage_epochs)
        except FinetuneError as exc:
            raise RunFailed(str(exc)) from None
        self.optimizer, decayed = build_optimizer(
            model, name=cfg.optim.name, lr=cfg.lr, wd=cfg.wd, decay=cfg.decay.name, exclude=list(cfg.decay.exclude),
            momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov, betas=list(cfg.optim.betas), eps=cfg.optim.eps,
            lr_mult=lr_mult(model, ft.backbone_lr_mult) if ft.name != "scratch" else None)
        self.loss_term = (lambda: penalty(decayed, decay=cfg.decay.name, wd=cfg.wd)) if decayed else None

        self.n_train = n_train = len(data.train)
        self.steps = steps_per_epoch(n_train // world, self.batch)
        sched = OmegaConf.to_container(cfg.sched, resolve=True)
        self.plateau = Plateau(sched["factor"], sched["patience"]) if sched["name"] == "plateau" else None
        self.lr_at = lr_schedule(sched, lr=cfg.lr, epochs=cfg.epochs, steps=self.steps, plateau=self.plateau)

        if main and (not resume or not (run_dir / "aug_preview.png").is_file()):
            examples = data.train.subset(pick_examples(data.train.y.cpu(), 8).to(data.train.y.device))
            save_aug_grid(run_dir / "aug_preview.png", next(iterate(examples, 8))[0], cfg.aug, seed=cfg.seed)
        self.clean = None
        if cfg.diagnose.clean_train:  # a fixed training subset, evaluated like validation data each epoch
            pick, _ = stratified_split(data.train.y.cpu(), min(cfg.diagnose.clean_size, n_train),
                                       torch.Generator().manual_seed(cfg.seed))
            self.clean = data.train.subset(pick.to(data.train.y.device))
        self.aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1 + 1000 * rank)  # each rank its own draws
        if world > 1:
            torch.manual_seed(cfg.seed + 1000 * rank)  # dropout masks differ between ranks too
        self.pipeline = Pipeline(mean=torch.tensor(data.mean, device=device).view(1, -1, 1, 1),
                                 std=torch.tensor(data.std, device=device).view(1, -1, 1, 1),
                                 channels_last=cfg.channels_last,
                                 augment=Augment(cfg.aug, self.aug_gen) if Augment.active(cfg.aug) else None)
        self.amp = autocast(device, precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16" else None
        self.eval_net = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
        self.net, self.net_trains = self.eval_net, None  # the training module; DDP wraps it under torchrun
        self.polls = 0
        self.drawn, self.last_draw, self.draw_cost = 0, float("-inf"), 0.0  # curves.png
        self.poll_every = 1 if device.type == "cpu" else cfg.progress_every  # on GPUs each poll is a host sync

        # epoch: the last finished epoch; step: optimizer steps taken; batch/tally: the epoch in progress
        self.state = {"epoch": 0, "step": 0, "batch": 0, "tally": None, "history": [], "best_val_acc": None,
                      "best_epoch": None, "improved_epoch": 0, "stopped_early": None, "wall_s": 0.0}
        if resume:
            self._restore()
        self.wall_before = self.state["wall_s"]
        self.plan.apply(self.state["epoch"] + 1)
        self.total, trainable = count_params(model)
        summary.update(device=str(device), precision=precision, params=self.total, trainable_params=trainable,
                       frozen_params=self.total - trainable, finetune=ft.name,
                       decay=cfg.decay.name if cfg.wd > 0 else "off",
                       decayed_params=sum(p.numel() for g in self.optimizer.param_groups if g["decayed"] for p in g["params"]),
                       not_decayed_params=sum(p.numel() for g in self.optimizer.param_groups if not g["decayed"] for p in g["params"]),
                       num_classes=data.num_classes, image_size=data.image_size,
                       n_train=n_train, n_val=len(data.val), n_test=len(data.test) if data.test is not None else 0)
        log.info("%s: %s (%s params) on %s %s, %d/%d/%d train/val/test images of %dpx, %d classes; run dir %s",
                 cfg.name, cfg.model.name, f"{self.total:,}", device, "fp32" if precision == "32" else precision, n_train,
                 len(data.val), summary["n_test"], data.image_size, data.num_classes, run_dir)

    def _data_and_model(self):
        cfg, device, ft = self.cfg, self.device, self.cfg.finetune
        pretrained = None
        if ft.weights:  # before the data: a missing file should not wait for a dataset to load
            try:
                pretrained = load_source(ft.weights, cfg.model.name, OmegaConf.to_container(cfg.model, resolve=True))
            except FinetuneError as exc:
                raise RunFailed(str(exc)) from None
        data_kwargs = OmegaConf.to_container(cfg.data, resolve=True)
        if pretrained is not None and pretrained.image_size and data_kwargs["image_size"] is None:
            data_kwargs["image_size"] = pretrained.image_size  # the size the weights were trained at
        data = load_data(**data_kwargs)
        if pretrained is not None and pretrained.mean and cfg.data.mean is None:
            # the weights' input statistics; 3 values on grey data normalize it as grey RGB
            if len(pretrained.mean) == data.channels or (data.channels == 1 and cfg.model.name not in MODELS):
                data.mean, data.std = list(pretrained.mean), list(pretrained.std)
        if not data.streaming:
            data = to_device(data, device)
        model_kwargs = dict(name=cfg.model.name, num_classes=data.num_classes, in_channels=data.channels,
                            channels=cfg.model.channels, convs_per_block=cfg.model.convs_per_block, fc=cfg.model.fc,
                            small_input=cfg.model.small_input, conv_dropout=cfg.dropout.conv_p,
                            dropout_features=cfg.dropout.features)
        if pretrained is None:
            model = build_model(dropout=cfg.dropout.p, **model_kwargs)
        else:
            try:
                model, dropped = build_pretrained(pretrained, dropout=cfg.dropout.p, **model_kwargs)
            except FinetuneError as exc:
                raise RunFailed(f"finetune.weights={ft.weights}: {exc}") from None
            self.log.info("loaded %s; new head for %d classes (dropped %s)", pretrained.source, data.num_classes,
                          ", ".join(dropped) or "nothing")
            self.summary.update(weights=pretrained.source, dropped_keys=dropped)
        model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        return data, model

    def _restore(self) -> None:
        """The newest intact checkpoint's weights, optimizer, RNG and state (mid-epoch: its tally)."""
        state, device = self.state, self.device
        try:
            path, ckpt, problems = newest_intact(self.ckpt_dir, map_location=device)
        except CorruptCheckpoint as exc:
            raise RunFailed(str(exc)) from None
        for problem in problems:
            self.log.warning("%s", problem)
        if problems:
            self.log.warning("falling back to %s (epoch %d, step %d)", path, ckpt["state"]["epoch"], ckpt["state"]["step"])
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.plateau is not None and ckpt.get("plateau"):
            self.plateau.load_state_dict(ckpt["plateau"])
        _restore_rng(ckpt["rng_ranks"][self.rank] if self.world > 1 else ckpt["rng"], self.aug_gen, device)
        state.update(ckpt["state"])
        if self.world > 1 and state["batch"]:
            state["tally"] = state["tally_ranks"][self.rank]
        state["stopped_early"] = None  # resuming a run that stopped early: its new patience decides again
        if self.main:
            write_metrics(self.run_dir / "metrics.csv", state["history"])  # drop rows written after that checkpoint
        where = f"epoch {state['epoch'] + 1} batch {state['batch'] + 1}" if state["batch"] else f"epoch {state['epoch'] + 1}"
        self.log.info("resuming %s at %s (step %d) from %s", self.run_dir, where, state["step"], path.name)

    def tensorboard(self):
        if self.cfg.logger != "tensorboard" or not self.main:
            return None
        from regx.tblog import TensorBoardLogger, hparams_of

        overrides_file = self.run_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        tb = TensorBoardLogger(self.run_dir, hparams_of(self.cfg, overrides), first_epoch=self.state["epoch"] + 1)
        tb.image("augmentation", self.run_dir / "aug_preview.png")
        return tb

    def checkpoint(self, best: bool, tally: Tally | None = None) -> None:
        state, device = self.state, self.device
        state["wall_s"] = self.wall_before + time.perf_counter() - self.t0
        state["batch"], state["tally"] = (tally.batches, tally.state_dict()) if tally is not None else (0, None)
        ranks = distributed.gather({"rng": _rng_state(self.aug_gen, device), "tally": state["tally"]})  # a collective
        state["tally_ranks"] = [r["tally"] for r in ranks] if self.world > 1 else None
        if not self.main:
            return
        save_checkpoint({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "rng_ranks": [r["rng"] for r in ranks] if self.world > 1 else None,
                         "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                         "plateau": self.plateau.state_dict() if self.plateau is not None else None,
                         "rng": _rng_state(self.aug_gen, device), "state": state,
                         "config": OmegaConf.to_container(self.cfg, resolve=True), "classes": self.data.classes,
                         "norm": {"mean": list(self.data.mean), "std": list(self.data.std)},
                         "in_channels": self.data.channels, "regx_version": __version__},
                        self.ckpt_dir, best=best, before_rename=_killsave_hook(state["step"]))

    def stop_all(self) -> bool:
        """A stop was asked for (SIGTERM/SIGINT); under torchrun on any rank, so that all stop at the same step."""
        if self.world == 1:
            return self.stop()
        self.polls += 1  # every rank calls this at the same points, so they poll together
        return self.polls % self.poll_every == 0 and distributed.any_rank(self.stop(), self.device)

    def evaluate_on(self, split) -> tuple[float, float]:
        return evaluate(self.eval_net, iterate(split, self.cfg.eval_batch_size, device=self.device, workers=self.cfg.data.workers),
                        pipeline=self.pipeline, amp=self.amp)

    def train_epoch(self, epoch: int, trains: str) -> tuple[EpochResult, int, float]:
        """Train one epoch (the rest of one, when resumed mid-epoch); metrics over all ranks. Returns
        the result, the epoch's first step, and the seconds of it trained before a resume."""
        cfg, state, device = self.cfg, self.state, self.device
        if self.world > 1 and trains != self.net_trains:  # DDP syncs the parameters that train when it is built
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            self.net, self.net_trains = (torch.compile(ddp, mode=cfg.compile_mode) if cfg.compile else ddp), trains
        epoch_start_step = state["step"] - state["batch"]
        tally = Tally.from_state(state["tally"], device) if state["batch"] else None
        resumed_s = tally.seconds if tally is not None else 0.0
        order = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        batches = iterate(self.data.train, self.batch, order=distributed.shard(order), device=device,
                          workers=cfg.data.workers, start=state["batch"], drop_single=True)

        def mid_epoch(t: Tally) -> None:
            if t.batches == self.steps and not self.stop_all():
                return  # the end-of-epoch checkpoint follows at once
            state["step"] = epoch_start_step + t.batches
            self.checkpoint(best=False, tally=t)

        with EpochProgress(f"epoch {epoch}/{cfg.epochs}", self.steps, show=self.main) as bar:
            try:
                tr = train_one_epoch(self.net, batches, self.optimizer, pipeline=self.pipeline, lr_at=self.lr_at,
                                     start_step=state["step"], amp=self.amp, scaler=self.scaler, penalty=self.loss_term,
                                     label_smoothing=cfg.label_smoothing, tally=tally, stop=self.stop_all,
                                     every=cfg.checkpoint.every_steps, on_every=mid_epoch,
                                     progress=bar if bar.active else None,  # each refresh reads back from the device
                                     progress_every=cfg.progress_every)
            except NonFiniteLoss as exc:
                lr = self.lr_at(exc.step)
                self.summary.update(verdict="diverged", evidence={"step": exc.step, "epoch": epoch, "loss": str(exc.loss), "lr": lr})
                raise RunFailed(f"loss became {exc.loss} at step {exc.step} (epoch {epoch}, lr {lr:.4g}); checkpoints "
                                f"keep the last finite state: lower the learning rate (lr={cfg.lr / 10:g}) or add "
                                f"warmup (sched.warmup_epochs=1)") from None
        if not tr.finished and tr.steps < self.steps:
            raise Interrupted(self.stop.signum or signal.SIGTERM)
        if self.world > 1:  # the epoch's metrics over all ranks; one set of weights to evaluate and save
            distributed.sync_buffers(self.model)
            sums = distributed.sum_over_ranks(torch.stack([tr.tally.loss_sum.float(), tr.tally.correct.float(),
                                                           torch.tensor(float(tr.images), device=device)]))
            tr.loss, tr.acc, tr.images = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item(), int(sums[2])
        return tr, epoch_start_step, resumed_s

    def end_epoch(self, epoch: int, trains: str, tr: EpochResult, start_step: int, started: float) -> dict:
        """Evaluate, keep the best, decide early stopping, checkpoint, write metrics/curves/summary; the row.
        `started`: the perf_counter time the epoch began (earlier by its part before a resume)."""
        cfg, state, summary = self.cfg, self.state, self.summary
        lr = self.lr_at(start_step + tr.steps - 1)
        val_loss, val_acc = self.evaluate_on(self.data.val)
        clean_loss, clean_acc = self.evaluate_on(self.clean) if self.clean is not None else (None, None)
        gap = (clean_acc if clean_acc is not None else tr.acc) - val_acc
        if self.plateau is not None:
            self.plateau.update(val_loss)
        best_before = state["best_val_acc"]
        is_best = best_before is None or val_acc > best_before
        if best_before is None or val_acc > best_before + cfg.early_stop.min_delta:
            state["improved_epoch"] = epoch
        if is_best:
            state["best_val_acc"], state["best_epoch"] = val_acc, epoch
        state["epoch"], state["step"] = epoch, start_step + tr.steps
        trainable = count_params(self.model)[1]
        row = dict(epoch=epoch, train_loss=tr.loss, train_acc=tr.acc, val_loss=val_loss, val_acc=val_acc, gap=gap,
                   lr=lr, epoch_s=time.perf_counter() - started, wall_s=self.wall_before + time.perf_counter() - self.t0,
                   img_per_s=tr.images / tr.seconds, clean_train_loss=clean_loss, clean_train_acc=clean_acc,
                   trainable=trains, trainable_params=trainable)
        state["history"].append(row)
        patience = cfg.early_stop.patience
        by = f" by more than {100 * cfg.early_stop.min_delta:g} points" if cfg.early_stop.min_delta else ""
        if patience and epoch - state["improved_epoch"] >= patience and epoch < cfg.epochs:
            state["stopped_early"] = {
                "epoch": epoch, "best_epoch": state["best_epoch"],
                "reason": f"validation accuracy did not improve{by} for {patience} epoch{'s' * (patience > 1)} "
                          f"(best {100 * state['best_val_acc']:.2f}% at epoch {state['best_epoch']})"}
        self.checkpoint(best=is_best)
        summary.update(epochs_done=epoch, best_epoch=state["best_epoch"], best_val_acc=state["best_val_acc"],
                       final_train_acc=tr.acc, final_val_acc=val_acc, wall_s=round(state["wall_s"], 2),
                       stopped_early=state["stopped_early"], trainable_params=trainable,
                       frozen_params=self.total - trainable)
        if self.main:
            write_metrics(self.run_dir / "metrics.csv", state["history"])
            write_json(self.run_dir / "summary.json", summary)
        self.draw_curves()
        self.log.info("epoch %*d/%d  train loss %.4f acc %6.2f%%  val loss %.4f acc %6.2f%%  gap %+5.1fpp  lr %.3g  %.1fs  %s img/s%s",
                      len(str(cfg.epochs)), epoch, cfg.epochs, tr.loss, 100 * tr.acc, val_loss, 100 * val_acc,
                      100 * gap, lr, row["epoch_s"], f"{row['img_per_s']:,.0f}",
                      ("  *best*" if is_best else "") + (f"  trains: {trains}" if trains != "all" else ""))
        if state["stopped_early"]:
            self.log.info("early stop after epoch %d: %s", epoch, state["stopped_early"]["reason"])
        return row

    def draw_curves(self, final: bool = False) -> None:
        """Redraw curves.png after an epoch when the last drawing took at most 5% of the time since it
        began (short epochs would otherwise spend much of their time drawing), and at the end."""
        history = self.state["history"]
        if not self.main or not history or self.drawn == len(history):
            return
        now = time.perf_counter()
        if not final and now - self.last_draw < 20 * self.draw_cost:
            return
        curves_plot(self.run_dir / "curves.png", history, f"{self.cfg.name}: {self.run_dir.name}")
        self.drawn, self.last_draw, self.draw_cost = len(history), now, time.perf_counter() - now

    def finish(self) -> None:
        """After the last epoch: the DDP agreement check, the test split on best.pt, the verdict."""
        cfg, state, summary, device = self.cfg, self.state, self.summary, self.device
        if self.world > 1:  # the same weights and the same validation accuracy on every rank, checked
            sums = distributed.gather((distributed.checksum(self.model),
                                       state["history"][-1]["val_acc"] if state["history"] else None))
            summary["ddp"] = {"world_size": self.world, "backend": torch.distributed.get_backend(),
                              "weights_identical": len({c for c, _ in sums}) == 1,
                              "val_acc_by_rank": [v for _, v in sums]}
        test_loss = test_acc = None
        test = self.data.test
        if self.main and test is not None and len(test) and (self.ckpt_dir / "best.pt").is_file():
            self.model.load_state_dict(load_verified(self.ckpt_dir / "best.pt", map_location=device)["model"])
            test_loss, test_acc = self.evaluate_on(test)
            if cfg.dropout.mc_samples > 0:
                mc_acc, mc_entropy = mc_dropout(self.eval_net, iterate(test, cfg.eval_batch_size, device=device,
                                                                       workers=cfg.data.workers),
                                                pipeline=self.pipeline, amp=self.amp, samples=cfg.dropout.mc_samples)
                summary.update(mc_test_acc=mc_acc, mc_entropy=mc_entropy)
                self.log.info("MC dropout (%d passes): test acc %.2f%%, mean predictive entropy %.3f nats",
                              cfg.dropout.mc_samples, 100 * mc_acc, mc_entropy)
        summary.update(status="completed", test_acc=test_acc, test_loss=test_loss,
                       wall_s=round(self.wall_before + time.perf_counter() - self.t0, 2),
                       finished=datetime.now().isoformat(timespec="seconds"))
        kind, evidence = verdict(state["history"])
        summary.update(verdict=kind, evidence=evidence,
                       remedies=[f"{what}: {how}" for what, how in remedies(kind, epochs=cfg.epochs, lr=cfg.lr)])
        if self.main:
            write_json(self.run_dir / "summary.json", summary)


def _print_summary(s: dict, log) -> None:
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    rows = [
        ("status", s["status"]),
        ("epochs", str(s.get("epochs_done"))),
        ("best val acc", f"{pct(s.get('best_val_acc'))} (epoch {s.get('best_epoch')})"),
        ("final train / val acc", f"{pct(s.get('final_train_acc'))} / {pct(s.get('final_val_acc'))}"),
        ("test acc (best ckpt)", pct(s.get("test_acc"))),
        ("verdict", s.get("verdict", "-")),
        *([("stopped early", f"after epoch {s['stopped_early']['epoch']}: {s['stopped_early']['reason']}")]
          if s.get("stopped_early") else []),
        ("params (trainable / frozen)", f"{s['params']:,} ({s['trainable_params']:,} / {s['frozen_params']:,})"),
        *([("weights", f"{s['weights']} (finetune={s['finetune']})")] if s.get("weights") else []),
        ("device", f"{s['device']} {s['precision']}"),
        ("wall time", f"{s['wall_s']:.1f}s"),
        ("run dir", s["run_dir"]),
    ]
    table = Table(title=f"regx run: {s['name']}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    console().print(table)
    file_only = logging.getLogger("regx.file")
    for k, v in rows:
        file_only.info("%-22s %s", k, v)
    ev = s.get("evidence") or {}
    if s.get("verdict") in ("overfitting", "underfitting", "diverged"):
        facts = f"train acc {pct(ev.get('train_acc'))}, val acc {pct(ev.get('val_acc'))}, gap {pct(ev.get('gap'))}" if "gap" in ev else str(ev)
        log.info("verdict: %s (%s). Remedies from the course:", s["verdict"], facts)
        for line in s.get("remedies", []):
            log.info("  - %s", line)

"""The Recorder: the only writer of a run directory besides the checkpoints.

It owns train.log and the terminal, config.yaml, summary.json, metrics.csv, curves.png,
aug_preview.png and the experiment trackers (regx.trackers). Under torchrun every rank holds one; only rank 0's
writes anything, the others log warnings and errors only.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from regx.__about__ import __version__
from regx.console import console, setup_logging
from regx.files import (
    DamagedFile,
    clean_temporary,
    read_config,
    read_overrides,
    read_summary,
    write_atomic,
    write_json,
    write_metrics,
    write_text,
)

RESERVE = 64 * 1024  # bytes kept free for the run's last words on a full disk
DRAW_COST = 0.5  # seconds a drawing of curves.png is taken to cost until one is measured (0.28 s measured on 2 cores)


class Recorder:
    def __init__(self, cfg: DictConfig, run_dir: Path, *, main: bool, resume: bool, overrides: list[str] | None = None):
        self.cfg, self.run_dir, self.main = cfg, Path(run_dir), main
        self.log = setup_logging(self.run_dir / "train.log" if main else None, quiet=not main)
        for tmp in clean_temporary(self.run_dir) if main else []:
            self.log.warning("removed %s, left by a run that was killed while writing it", tmp)
        try:
            self.summary = read_summary(self.run_dir) if resume else {}
        except DamagedFile as exc:
            self.log.warning("%s: rebuilding it from the newest checkpoint", exc)
            self.summary = {}
        if resume:
            self.summary["resumes"] = [*self.summary.get("resumes", []), _resume_record(self.run_dir, cfg)]
        if overrides is not None:
            self.summary["overrides"] = list(overrides)
        elif "overrides" not in self.summary:  # a run of regx 0.1 (which kept them in .hydra/ only), or none
            try:
                self.summary["overrides"] = read_overrides(self.run_dir) if resume else []
            except DamagedFile:
                self.summary["overrides"] = []
        self.summary.update(
            status="running",
            name=cfg.name,
            run_dir=str(self.run_dir),
            regx_version=__version__,
            torch_version=torch.__version__,
            host=platform.node(),
            pid=os.getpid(),
            error=None,
            threads=torch.get_num_threads(),
            started=self.summary.get("started") or datetime.now().isoformat(timespec="seconds"),
        )
        self.t0 = time.perf_counter()
        self.wall_before = 0.0  # seconds the run trained before a resume
        self.drawn, self.last_draw, self.draw_cost = 0, self.t0, DRAW_COST  # curves.png: as if drawn at the start
        self.trackers: list = []  # regx.trackers.Guarded, rank 0 only
        if main:
            write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            self._write_summary()
            self._reserve(True)

    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def _write_summary(self) -> None:
        if self.main:
            write_json(self.run_dir / "summary.json", self.summary)

    def _reserve(self, keep: bool) -> None:
        """`.reserve`, 64 KiB held for the run's last words: on a full disk, deleting it leaves room
        to record how the run ended (summary.json, train.log). Removed when the run ends."""
        path = self.run_dir / ".reserve"
        if not keep:
            path.unlink(missing_ok=True)
            return
        try:
            write_atomic(path, lambda f: f.write(bytes(RESERVE)))
        except OSError:
            pass  # no room even for this: the first checkpoint will say so

    def _last_words(self) -> None:
        """summary.json as the run ends badly; a summary that cannot be written is one line on stderr."""
        self._reserve(False)
        try:
            self._write_summary()
        except OSError as exc:
            sys.stderr.write(f"regx: warning: {exc}; the run's status ({self.summary['status']}) is not recorded\n")

    # --- the run's start -----------------------------------------------------------------------

    def weights(self, source: str, dropped: list[str], num_classes: int) -> None:
        self.log.info(
            "loaded %s; new head for %d classes (dropped %s)", source, num_classes, ", ".join(dropped) or "nothing"
        )
        self.summary.update(weights=source, dropped_keys=dropped)

    def label_noise(self, train, rate: float, kind: str) -> None:
        """label_noise.json: which training images (positions in the training split) were given a wrong
        label on purpose, and both labels."""
        if not self.main or train.true_y is None:
            return
        flipped = torch.nonzero(train.y != train.true_y).flatten().cpu()
        write_json(
            self.run_dir / "label_noise.json",
            {
                "rate": rate,
                "kind": kind,
                "n_train": len(train),
                "flipped": flipped.tolist(),
                "given": train.y.cpu()[flipped].tolist(),
                "true": train.true_y.cpu()[flipped].tolist(),
            },
        )

    def aug_preview(self, images: torch.Tensor, resume: bool) -> None:
        """aug_preview.png: what the augmentation does to a few training images (kept on resume)."""
        from regx.plots import save_aug_grid

        path = self.run_dir / "aug_preview.png"
        if self.main and self.cfg.pictures and not (resume and path.is_file()):
            save_aug_grid(path, images, self.cfg.aug, seed=self.cfg.seed)

    def start(self, facts: dict, state) -> None:
        """`facts`: what build() made (device, precision, parameter counts, split sizes); `state`: where
        the run starts (a resumed run's finished epochs)."""
        from regx.trackers import make_trackers

        self.wall_before = state.wall_s
        self.summary.update(facts)
        s, cfg = self.summary, self.cfg
        self.log.info(
            "%s: %s (%s params) on %s %s%s, %d/%d/%d train/val/test images of %dpx, %d classes%s; run dir %s",
            cfg.name,
            f"timm's {cfg.model.name}" if cfg.model.get("zoo") == "timm" else cfg.model.name,
            f"{s['params']:,}",
            s["device"],
            "fp32" if s["precision"] == "32" else s["precision"],
            f", compiled: {' and '.join(s['compiled'])}" if s.get("compiled") else "",
            s["n_train"],
            s["n_val"],
            s["n_test"],
            s["image_size"],
            s["num_classes"],
            "; evaluated with mirror TTA (each image and its mirror)" if s.get("tta") == "flip" else "",
            self.run_dir,
        )
        self.progress(state)
        if self.main:
            self.trackers = make_trackers(cfg, self.run_dir, state.epoch + 1, self.log)
            for tracker in self.trackers:
                tracker.start(state.history)

    # --- each epoch ----------------------------------------------------------------------------

    def progress(self, state) -> None:
        """The summary's account of the epochs done, from the run's state (after each epoch, and after
        a resume, which so rebuilds a damaged summary.json from its checkpoint)."""
        if not state.history:
            return
        row = state.history[-1]
        trainable = row["trainable_params"]
        self.summary.update(
            epochs_done=row["epoch"],
            best_epoch=state.best_epoch,
            best_val_acc=state.best_val_acc,
            final_train_acc=row["train_acc"],
            final_clean_train_acc=row["clean_train_acc"],
            final_val_acc=row["val_acc"],
            wall_s=round(state.wall_s, 2),
            stopped_early=state.stopped_early,
            trainable_params=trainable,
            frozen_params=self.summary["params"] - trainable,
        )

    def epoch(self, row: dict, state, *, is_best: bool) -> None:
        """After an epoch's checkpoint: metrics.csv, summary.json, curves.png, loggers, one log line."""
        cfg = self.cfg
        self.progress(state)
        if self.main:
            write_metrics(self.run_dir / "metrics.csv", state.history)
            self._write_summary()
        self.draw_curves(state.history)
        for tracker in self.trackers:
            tracker.epoch(row)
        clean = "" if row["clean_train_acc"] is None else f"  clean train acc {100 * row['clean_train_acc']:6.2f}%"
        averaged = ""
        if row.get("avg_val_acc") is not None:
            fit = row.get("avg_clean_train_acc")
            fit = f"clean train acc {100 * fit:6.2f}%, " if fit is not None else ""
            averaged = f"  (averaged weights: {fit}val acc {100 * row['avg_val_acc']:6.2f}%)"
        self.log.info(
            "epoch %*d/%d  train loss %.4f acc %6.2f%% (as trained)%s  val loss %.4f acc %6.2f%%  gap %+5.1fpp%s  "
            "lr %.3g  %.1fs  %s img/s%s",
            len(str(cfg.epochs)),
            row["epoch"],
            cfg.epochs,
            row["train_loss"],
            100 * row["train_acc"],
            clean,
            row["val_loss"],
            100 * row["val_acc"],
            100 * row["gap"],
            averaged,
            row["lr"],
            row["epoch_s"],
            f"{row['img_per_s']:,.0f}",
            ("  *best*" if is_best else "") + (f"  trains: {row['trainable']}" if row["trainable"] != "all" else ""),
        )
        if state.stopped_early:
            self.log.info("early stop after epoch %d: %s", row["epoch"], state.stopped_early["reason"])

    def metrics(self, history: list[dict]) -> None:
        """Rewrite metrics.csv (a resumed run drops the rows written after its checkpoint)."""
        if self.main:
            write_metrics(self.run_dir / "metrics.csv", history)

    def draw_curves(self, history: list[dict], final: bool = False) -> None:
        """Redraw curves.png after an epoch when the last drawing took at most 5% of the time since it
        began (short epochs would otherwise spend much of their time drawing: a run of a few seconds
        draws once, at the end), and at the end."""
        from regx.plots import curves_plot

        if not self.main or not self.cfg.pictures or not history or self.drawn == len(history):
            return
        now = time.perf_counter()
        if not final and now - self.last_draw < 20 * self.draw_cost:
            return
        try:
            curves_plot(self.run_dir / "curves.png", history, f"{self.cfg.name}: {self.run_dir.name}")
        except Exception as exc:  # noqa: BLE001 - metrics.csv has it all; `regx plot` redraws
            self.log.warning("curves.png was not redrawn: %s", exc)
        self.drawn, self.last_draw, self.draw_cost = len(history), now, time.perf_counter() - now

    # --- the end -------------------------------------------------------------------------------

    def diverged(self, evidence: dict) -> None:
        self.summary.update(verdict="diverged", evidence=evidence)

    def finish(self, results: dict) -> None:
        """After the last epoch: test metrics, the verdict and its remedies, status completed."""
        self.summary.update(
            results,
            status="completed",
            wall_s=round(self.wall_s(), 2),
            finished=datetime.now().isoformat(timespec="seconds"),
        )
        self._write_summary()

    def interrupted(self) -> None:
        self.summary.update(status="interrupted")
        self._last_words()
        if (self.run_dir / "checkpoints" / "last.pt").is_file():
            self.log.warning("interrupted; resume with: regx resume %s", self.run_dir)
        else:
            self.log.warning("interrupted before the first checkpoint: nothing to resume")

    def failed(self, message: str) -> None:
        self.summary.update(status="failed", error=message)
        self._last_words()
        # the log file's record; the terminal gets it once, from whoever called (regx's one error line)
        logging.getLogger("regx.file").error("run failed: %s", message)

    def close(self, history: list[dict]) -> None:
        """However the run ended: the last curves, the loggers closed, the closing table."""
        self.draw_curves(history, final=True)  # every finished epoch
        if self.main:
            self._reserve(False)
        if self.main and self.summary["status"] == "completed":
            if not self.cfg.pictures:
                self.log.info(
                    "pictures=false: no curves.png or aug_preview.png; draw the curves with: regx plot %s", self.run_dir
                )
            print_summary(self.summary, self.log)

    def end(self) -> None:
        """The very end, once the run's status is final: the trackers' last words, and summary.json's
        `loggers` (how each tracker fared)."""
        if not self.trackers:
            return
        for tracker in self.trackers:
            tracker.finish(self.summary)
        from regx.trackers import status_of

        self.summary["loggers"] = status_of(self.trackers)
        try:
            self._write_summary()
        except OSError as exc:
            sys.stderr.write(f"regx: warning: {exc}\n")


def _resume_record(run_dir: Path, cfg: DictConfig) -> dict:
    """When a run was resumed and what it was resumed with: every key whose value changed."""
    from regx.config import flat_keys

    changed = {}
    try:
        before = read_config(run_dir) if (run_dir / "config.yaml").is_file() else None
    except DamagedFile:
        before = None  # what changed is not known; nothing of the file is resolved
    if before is not None:
        after = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        for key in flat_keys(after):
            old, new = OmegaConf.select(before, key), OmegaConf.select(after, key)
            if old != new and not OmegaConf.is_dict(new):
                changed[key] = OmegaConf.to_container(new) if OmegaConf.is_list(new) else new
    return {"at": datetime.now().isoformat(timespec="seconds"), "changed": changed}


def print_summary(s: dict, log) -> None:
    """The closing table on the terminal (train.log gets it as plain lines), the run directory on a
    line of its own (never wrapped: it is copied), then the verdict."""
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    rows = [
        ("status", s["status"]),
        ("epochs", str(s.get("epochs_done"))),
        ("best val acc", f"{pct(s.get('best_val_acc'))} (epoch {s.get('best_epoch')})"),
        ("train acc (as trained)", pct(s.get("final_train_acc"))),
        *([("clean train acc", pct(s["final_clean_train_acc"]))] if s.get("final_clean_train_acc") is not None else []),
        ("val acc", pct(s.get("final_val_acc"))),
        ("test acc (best ckpt)", pct(s.get("test_acc"))),
        ("verdict", s.get("verdict", "-")),
        *(
            [("stopped early", f"after epoch {s['stopped_early']['epoch']}: {s['stopped_early']['reason']}")]
            if s.get("stopped_early")
            else []
        ),
        ("params (trainable / frozen)", f"{s['params']:,} ({s['trainable_params']:,} / {s['frozen_params']:,})"),
        *([("weights", f"{s['weights']} (finetune={s['finetune']})")] if s.get("weights") else []),
        ("device", f"{s['device']} {s['precision']}"),
        ("wall time", f"{s['wall_s']:.1f}s"),
    ]
    table = Table(title=f"regx run: {s['name']}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    console().print(table)
    log.info("run dir: %s", s["run_dir"])
    file_only = logging.getLogger("regx.file")
    for k, v in rows:
        file_only.info("%-22s %s", k, v)
    ev = s.get("evidence") or {}
    if s.get("verdict") in ("overfitting", "underfitting", "both", "diverged"):
        train = "clean train acc" if ev.get("train_acc_is_clean") else "train acc (as trained)"
        facts = (
            f"at epoch {ev.get('epoch')}, best.pt's{' averaged weights' if ev.get('weights') == 'averaged' else ''}: "
            f"{train} {pct(ev.get('train_acc'))} (target "
            f"{pct(ev.get('target'))}), val acc {pct(ev.get('val_acc'))}, gap {100 * ev.get('gap'):+.1f}pp"
            + ("; validation went past its best after it" if ev.get("past_best") else "")
            if "gap" in ev
            else str(ev)
        )
        from regx.diagnose import FEW_STEPS

        n_val = s.get("n_val") or 0
        if 0 < n_val < 100:  # one image moves validation accuracy by more than a point
            facts += f"; validation has only {n_val} images (one is {100 / n_val:.1f} points): a rough verdict"
        if ev.get("optimizer_steps", FEW_STEPS) < FEW_STEPS:
            facts += f"; only {ev['optimizer_steps']} optimizer steps, too few to judge by"
        if ev.get("memorized_final") is not None:
            facts += (
                f"; it fits {pct(ev['memorized_at_epoch'])} of the flipped training labels at that epoch, "
                f"{pct(ev['memorized_final'])} at the end (memorizing noise)"
            )
        log.info("verdict: %s (%s). Remedies from the course:", s["verdict"], facts)
        for line in s.get("remedies", []):
            log.info("  - %s", line)

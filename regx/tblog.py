"""`logger=tensorboard`: event files in <run>/tensorboard/ (scalars per epoch, the augmentation
grid, and the run's hyperparameters with its final metrics for TensorBoard's HParams view).

`tensorboard --logdir outputs/sweeps/<stamp>` then browses a whole sweep: each job is one session.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from regx.config import GROUPS

# metrics.csv column -> TensorBoard tag
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "clean_train_loss": "loss/clean_train",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "clean_train_acc": "accuracy/clean_train",
    "gap": "gap",
    "lr": "lr",
    "img_per_s": "throughput/img_per_s",
}
# Final metrics shown in the HParams view; logged as scalars under the same tags.
HPARAM_METRICS = ("best_val_acc", "final_val_acc", "test_acc", "gap")


def hparams_of(cfg: DictConfig, overrides: list[str]) -> dict:
    """The hyperparameters a run is told apart by: each group's option, the top-level scalars, and
    every key the command line overrode."""
    out = {}
    for group in GROUPS:
        node = OmegaConf.select(cfg, f"{group}.name") if group in cfg else None
        if node is not None:
            out[group] = str(node)
    for key, value in cfg.items():
        if not isinstance(value, DictConfig) and key != "name":
            out[key] = value
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if "=" in o and key not in out and key not in GROUPS:
            value = OmegaConf.select(cfg, key)
            out[key] = value if isinstance(value, int | float | str | bool) else str(value)
    return {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in out.items()}


class TensorBoardLogger:
    """A tracker (regx.trackers): scalars per epoch, the HParams session, the augmentation grid."""

    def __init__(self, run_dir: Path, hparams: dict, *, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # purge_step: a resumed run drops what a killed run wrote from its last finished epoch on,
        # and start() writes that epoch again (it may have been killed before writing it).
        self.writer = SummaryWriter(
            str(run_dir / "tensorboard"), purge_step=first_epoch - 1 if first_epoch > 1 else None
        )
        self.first_epoch, self.best = first_epoch, None
        experiment, start, _ = hparams_summary(hparams, {f"hparam/{m}": 0.0 for m in HPARAM_METRICS})
        fw = self.writer._get_file_writer()
        fw.add_summary(experiment)
        fw.add_summary(start)

    def start(self, history: list[dict]) -> None:
        for row in history:
            if int(row["epoch"]) >= self.first_epoch - 1:
                self.epoch(row)
            else:
                self.best = max(self.best or 0.0, float(row["val_acc"]))

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        self.best = max(self.best or 0.0, float(row["val_acc"]))
        for column, tag in SCALARS.items():
            if row.get(column) is not None:
                self.writer.add_scalar(tag, float(row[column]), step)
        self.writer.add_scalar("hparam/best_val_acc", self.best, step)
        self.writer.add_scalar("hparam/final_val_acc", float(row["val_acc"]), step)
        self.writer.add_scalar("hparam/gap", float(row["gap"]), step)
        self.writer.flush()

    def image(self, tag: str, png: Path) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(png).convert("RGB")), 0, dataformats="HWC")

    def finish(self, summary: dict) -> None:
        if summary.get("test_acc") is not None:
            self.writer.add_scalar("hparam/test_acc", summary["test_acc"], summary.get("epochs_done") or 0)
        self.writer._get_file_writer().add_summary(_session_end(summary.get("status") == "completed"))
        self.writer.close()


def _session_end(success: bool):
    """The HParams plugin's session-end record (tensorboard's own helper for it needs TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if success else api_pb2.STATUS_FAILURE)
    content = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])

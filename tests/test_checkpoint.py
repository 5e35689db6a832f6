"""regx.checkpoint: one writer, one reader, a versioned format, and old runs that still load.

tests/data/format0 is a run directory regx 0.1.0 wrote before checkpoints had a version (its README
says how): a mid-epoch last.pt with EMA weights and a clipping tally, and best.pt from epoch 1.
"""

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from regx import checkpoint
from regx.checkpoint import FIELDS, FORMAT_VERSION, Checkpoint, CorruptCheckpoint
from regx.files import read_metrics, read_summary
from regx.train import train
from tests.conftest import assert_same_state, regx_here, smoke_cfg, toy_checkpoint

FORMAT0 = Path(__file__).parent / "data" / "format0"


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "old"
    shutil.copytree(FORMAT0, run, ignore=shutil.ignore_patterns("README.md"))
    return run


def test_a_format_0_checkpoint_is_read_as_the_current_format(old_run):
    raw = torch.load(old_run / "checkpoints/last.pt", weights_only=True)
    assert "format" not in raw and "clipped" in raw["state"]["tally"]  # what regx 0.1 wrote
    ckpt = checkpoint.read(old_run / "checkpoints/last.pt")
    assert ckpt.format == FORMAT_VERSION and (ckpt.epoch, ckpt.step, ckpt.state["batch"]) == (1, 10, 4)
    assert ckpt.in_channels == 3 and ckpt.image_size == 16 and len(ckpt.classes) == 10
    assert ckpt.average["updates"] == 10 and ckpt.weights() is ckpt.average["model"]  # average.select=averaged
    for name in FIELDS:
        if name != "format":
            assert name in raw, name  # every entry of format 1 but `format` existed in regx 0.1's files


def test_migration_fills_what_older_files_lack():
    raw = toy_checkpoint(3).to_dict()
    del raw["format"], raw["in_channels"], raw["image_size"]
    raw["config"] = {"data": {"image_size": 24}}  # before the average group
    raw["state"]["tally"] = {
        "loss_sum": torch.zeros(()),
        "correct": torch.zeros((), dtype=torch.long),
        "images": 0,
        "batches": 2,
        "seconds": 0.0,
    }  # before clip_grad
    ckpt = Checkpoint(**checkpoint.migrate(raw))
    assert ckpt.in_channels == 1 and ckpt.image_size == 24 and ckpt.config["average"]["select"] == "averaged"
    assert ckpt.state["tally"]["clipped"].item() == 0 and ckpt.format == FORMAT_VERSION


def test_written_and_read_back_every_entry_is_kept(tmp_path, old_run):
    ckpt = checkpoint.read(old_run / "checkpoints/last.pt")
    checkpoint.save(ckpt, tmp_path / "ckpt", best=True)
    raw = torch.load(tmp_path / "ckpt/last.pt", weights_only=True)
    assert sorted(raw) == sorted(FIELDS) and raw["format"] == FORMAT_VERSION
    again = checkpoint.read(tmp_path / "ckpt/best.pt")
    for key, value in ckpt.model.items():
        assert torch.equal(value, again.model[key]), key
    assert again.state == ckpt.state and again.config == ckpt.config and again.norm == ckpt.norm


def test_a_newer_format_or_an_unknown_entry_is_refused_in_one_line(tmp_path):
    for entry, match in (
        ({"format": FORMAT_VERSION + 1}, "newer than this regx reads"),
        ({"epochs_seen": 3}, "unknown entry epochs_seen"),
    ):
        path = tmp_path / f"{len(entry)}-{next(iter(entry))}.pt"
        torch.save({**toy_checkpoint(1).to_dict(), **entry}, path)
        with pytest.raises(CorruptCheckpoint, match=match):
            checkpoint.read(path)


def test_without_a_manifest_a_flipped_bit_is_found_by_the_zip_crcs(tmp_path):
    path = tmp_path / "ckpt/last.pt"
    checkpoint.save(toy_checkpoint(1, w=torch.arange(4096.0)), path.parent, best=False)
    (path.parent / "last.pt.json").unlink()
    with zipfile.ZipFile(path) as z:
        member = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    data[member.header_offset + 30 + len(member.filename) + member.file_size // 2] ^= 0x10  # inside the tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="fails its CRC check"):
        checkpoint.read(path)


def test_an_old_run_resumes_to_the_end_and_is_evaluated(tmp_path, old_run, cli):
    res = cli("resume", old_run)
    assert res.returncode == 0, res.stderr
    s = read_summary(old_run)
    assert s["status"] == "completed" and s["epochs_done"] == 2 and s["evidence"]["optimizer_steps"] == 12
    rows = read_metrics(old_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["train_loss"] == "2.31819"  # epoch 1 kept as written
    assert checkpoint.read(old_run / "checkpoints/last.pt").format == FORMAT_VERSION
    # the same two epochs trained by this regx from the start: the resumed run ends near them (the old
    # run's first ten steps ran on 2 threads, which may round differently from this process)
    from regx.train import train

    fresh = train(smoke_cfg("epochs=2", "average=ema", "clip_grad=1", "checkpoint.every_steps=4"), tmp_path / "new")
    assert s["final_train_acc"] == pytest.approx(fresh["final_train_acc"], abs=0.03)
    assert cli("eval", old_run).returncode == 0


def test_an_old_run_predicts_exports_and_is_fine_tuned_from(tmp_path, old_run, cli):
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    res = cli("predict", old_run, tmp_path / "red.png")
    assert res.returncode == 0 and "red.png" in res.stdout, res.stderr
    res = regx_here(
        tmp_path, "train", "debug=smoke", "epochs=1", "finetune=full", f"finetune.weights={old_run}", "hydra.run.dir=ft"
    )
    assert res.returncode == 0 and "regx checkpoint" in read_summary(tmp_path / "ft")["weights"], res.stderr


# ---------------------------------------------------------------------------------------------
# checkpoint.background: written beside training


def test_a_background_write_holds_the_checkpoint_as_saved_and_hands_its_error_to_the_next_wait(tmp_path, monkeypatch):
    import errno
    import logging
    import threading

    real, go = checkpoint.save, threading.Event()

    def held(*args, **kw):  # the file is written only after training has changed the weights
        assert go.wait(10)
        real(*args, **kw)

    monkeypatch.setattr(checkpoint, "save", held)
    writer, w = checkpoint.Writer(background=True), torch.ones(3)
    writer.save(toy_checkpoint(1, w=w), tmp_path, best=True)  # returns before the write
    w.fill_(7.0)  # the next step, in place
    go.set()
    writer.wait()
    assert torch.equal(checkpoint.read(tmp_path / "best.pt").model["w"], torch.ones(3))

    def no_space(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", no_space)
    writer.save(toy_checkpoint(2), tmp_path, best=False)  # the write fails in its thread
    with pytest.raises(OSError, match="No space left on device"):
        writer.save(toy_checkpoint(3), tmp_path, best=False)  # the next save raises it, writing nothing
    writer.save(toy_checkpoint(4), tmp_path, best=False)
    warned = []
    log = logging.getLogger("test-writer")
    monkeypatch.setattr(log, "warning", lambda msg, *a: warned.append(msg % a))
    writer.wait(log=log)  # a run already failing: the write's error is a warning
    assert warned == ["the last checkpoint was not written: [Errno 28] No space left on device"]
    writer.wait()  # each error is handed on once
    assert checkpoint.read(tmp_path / "last.pt").step == 1


def test_background_checkpoints_equal_the_foreground_ones_though_training_moves_on_during_each_write(
    tmp_path, monkeypatch
):
    """Each background write starts only after training has taken another step (or is waiting for the
    write at the run's end): the files still hold the state as it was when each was saved."""
    import threading
    import time

    from regx.engine import Hook

    fg = tmp_path / "fg"
    train(smoke_cfg("epochs=2", "checkpoint.every_steps=2", "dropout=fc"), fg)
    stepped, ending, overlapped = threading.Event(), threading.Event(), []
    real_save, real_wait = checkpoint.save, checkpoint.Writer.wait

    def after_a_step(*args, **kw):
        stepped.clear()
        deadline = time.monotonic() + 10
        while not (stepped.is_set() or ending.is_set()) and time.monotonic() < deadline:
            time.sleep(0.001)
        overlapped.append(stepped.is_set())
        real_save(*args, **kw)

    def wait(self, log=None):
        ending.set()
        try:
            real_wait(self, log)
        finally:
            ending.clear()

    class Stepped(Hook):
        def after_step(self, info) -> None:
            stepped.set()

    monkeypatch.setattr(checkpoint, "save", after_a_step)
    monkeypatch.setattr(checkpoint.Writer, "wait", wait)
    bg = tmp_path / "bg"
    s = train(smoke_cfg("epochs=2", "checkpoint.every_steps=2", "dropout=fc", "checkpoint.background=true"), bg,
              hooks=(Stepped(),))  # fmt: skip
    assert s["status"] == "completed" and any(overlapped)
    for name in ("prev.pt", "last.pt", "best.pt"):  # prev.pt: written while training went on
        a, b = (checkpoint.read(run / "checkpoints" / name).to_dict() for run in (fg, bg))
        assert_same_state(a, b)
        assert a["state"]["step"] == b["state"]["step"] and torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert read_summary(fg)["test_acc"] == s["test_acc"]

"""What goes wrong around a run: full disks, damaged files, odd images, bad values, a stop at the very
end. Each case ends in one line naming what is wrong, with nothing lost that was written before.
"""

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import regx.files
import regx.train
from regx import checkpoint
from regx.data.folders import check_images, decode
from regx.engine import Hook
from regx.files import read_metrics
from regx.train import RunFailed, train
from tests.conftest import smoke_cfg, toy_checkpoint, write_images


def summary(run):
    return json.loads((run / "summary.json").read_text())


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ---------------------------------------------------------------------------------------------
# bad values: one line, exit 2, no run directory


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lr=inf", "lr=inf is invalid: must be a finite number"),
        ("lr=nan", "lr=nan is invalid: must be a finite number"),
        ("wd=1e10", "weight decay alone makes the weights diverge (lr*2*wd = 1e+09, must be < 3.8)"),
        ("optim=adamw decay=decoupled lr=1e-3 wd=2000", "(lr*wd = 2, must be < 1)"),
        ("device=cuda", "device=cuda: CUDA is not available on this machine"),
        ("device=cuda:3", "device=cuda:3: "),
        ("device=mps", "device=mps: MPS (Apple's GPU) is not available on this machine"),
        ("data.train_size=100000", "data.train_size=100000 exceeds the 360 training images available"),
        ("seed=9223372036854775807", "seed=9223372036854775807 is invalid: must be in [0, 4294967295]"),
        ("name=日本語テスト", "Hydra reads letters beyond ASCII only inside quotes: name='日本語テスト'"),
    ],
)
def test_bad_values_are_refused_before_a_run_directory_exists(tmp_path, cli, value, message):
    if value.startswith("device=cuda") and torch.cuda.device_count() > 3:
        pytest.skip("this machine has the device")
    if value == "device=mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    res = cli("train", "debug=smoke", *value.split())
    assert res.returncode == 2 and message in one_line(res.stderr), res.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("value", ["wd=5e-4", "optim=adamw decay=decoupled lr=1e-3 wd=0.05", "lr=0.4 wd=1e-3"])
def test_usual_weight_decay_is_not_refused(value):
    from regx import errors

    errors.preflight(["debug=smoke", *value.split()])  # raises ConfigError if refused


def test_a_file_name_too_long_and_a_read_only_folder_are_one_line(tmp_path, cli):
    res = cli("train", "debug=smoke", f"hydra.run.dir={tmp_path / ('x' * 300) / 'run'}")
    assert res.returncode == 2 and "is 300 bytes long; a file name can have at most 255" in one_line(res.stderr)
    ro = read_only_folder(tmp_path / "ro")
    res = cli("train", "debug=smoke", f"hydra.run.dir={ro / 'outputs' / 'run'}")
    assert res.returncode == 1 and f"{ro} is not writable" in one_line(res.stderr)


def read_only_folder(path: Path) -> Path:
    """A folder this process cannot write in: chmod where that binds, else (root) a read-only tmpfs."""
    path.mkdir()
    path.chmod(0o555)
    try:
        (path / "probe").touch()
    except PermissionError:
        return path
    (path / "probe").unlink()
    path.chmod(0o755)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip("cannot make a read-only folder here (root without mount)")
    return path


@pytest.fixture(autouse=True)
def _unmount(tmp_path):
    yield
    for mounted in Path("/proc/mounts").read_text().splitlines() if Path("/proc/mounts").exists() else []:
        point = mounted.split()[1]
        if point.startswith(str(tmp_path)):
            subprocess.run(["umount", "-l", point], capture_output=True)


# ---------------------------------------------------------------------------------------------
# full disks


class FullDisk(Hook):
    """A hook that fills the run's file system (a real tmpfs) before step `at`, leaving 0 bytes."""

    def __init__(self, mount: Path, at: int):
        self.mount, self.at = mount, at

    def before_step(self, step):
        if step == self.at:
            free = os.statvfs(self.mount).f_bavail * os.statvfs(self.mount).f_frsize
            with open(self.mount / "filler", "wb") as f:
                f.write(b"\0" * free)  # tmpfs: exactly what is left


def small_tmpfs(path: Path, size: str = "8m") -> Path:
    path.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    return path


@pytest.mark.parametrize("at", [3, 6, 17])  # mid-epoch 1, the first step of epoch 2, the last step
def test_a_disk_that_fills_during_a_run_ends_it_with_one_line_and_the_last_checkpoint(tmp_path, monkeypatch, cli, at):
    """A real full file system: on main, summary.json could not be written either (status stayed
    `running`) and Hydra printed 70 lines. Now: the file named, the status recorded from the reserve,
    the last checkpoint intact, no temporary file left."""
    disk = small_tmpfs(tmp_path / "disk")
    run = disk / "run"
    original = regx.train.train
    monkeypatch.setattr(
        regx.train, "train", lambda cfg, run_dir, **kw: original(cfg, run_dir, hooks=[FullDisk(disk, at)], **kw)
    )
    res = cli("train", "debug=smoke", "epochs=3", "checkpoint.every_steps=2", f"hydra.run.dir={run}")
    assert res.returncode == 1
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("regx: error:")]
    assert len(line) == 1 and "No space left on device" in line[0] and f"could not write {run}/" in line[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout and "Logging error" not in res.stderr
    s = summary(run)
    assert s["status"] == "failed" and "No space left on device" in s["error"]
    assert "run failed: could not write" in (run / "train.log").read_text()
    for name in ("last.pt", "prev.pt", "best.pt"):
        if (run / "checkpoints" / name).exists():
            checkpoint.verify(run / "checkpoints" / name)
    assert not list(run.rglob(".*.tmp-*"))
    (disk / "filler").unlink()  # space again: the run resumes from its last checkpoint
    monkeypatch.undo()
    res = cli("resume", str(run))
    assert res.returncode == 0, res.stderr
    assert summary(run)["status"] == "completed"
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == ["1", "2", "3"]
    assert not (run / ".reserve").exists()


def test_a_run_does_not_start_on_a_full_disk(tmp_path, cli):
    disk = small_tmpfs(tmp_path / "disk", "2m")
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - 64 * 1024))
    res = cli("train", "debug=smoke", f"hydra.run.dir={disk / 'run'}")
    assert res.returncode == 1 and "KiB free on its file system (at least 1 MiB needed)" in one_line(res.stderr)
    assert not (disk / "run").exists()


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_a_low_open_file_limit_is_one_line_and_a_failed_status(tmp_path):
    """`ulimit -n 16`: the streamed folder's decoding workers cannot get their pipes."""
    import resource
    import sys

    write_images(tmp_path / "imgs", per_class=10)
    args = ["debug=smoke", "epochs=1", "data=imagefolder", f"data.path={tmp_path / 'imgs'}", "data.image_size=16",
            "data.stream=true", "data.workers=2", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "regx", "train", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16)),
    )
    assert res.returncode == 1
    assert "too many open files: this process may hold 16 open files (ulimit -n)" in one_line(res.stderr)
    assert summary(tmp_path / "run")["status"] == "failed"


class FailingOpen:
    """`open` for regx.files: the `nth` file opened for writing raises ENOSPC as it is written."""

    def __init__(self, nth: int):
        self.nth, self.count, self.failed = nth, 0, None

    def __call__(self, path, mode="r", *args, **kw):
        f = open(path, mode, *args, **kw)
        if "w" in mode:
            self.count += 1
            if self.count == self.nth:
                self.failed = Path(path)
                f.close()
                raise OSError(errno.ENOSPC, "No space left on device")
        return f


@pytest.mark.parametrize("nth", range(1, 16))
def test_each_write_site_fails_cleanly(tmp_path, monkeypatch, capfd, nth):
    """ENOSPC at each write of a run in turn (config, summary, reserve, preview, checkpoints, their
    manifests, metrics, curves): the run fails naming the file (or, for the reserve and the
    pictures, warns and goes on), and what was written before stays intact."""
    failing = FailingOpen(nth)
    monkeypatch.setattr(regx.files, "open", failing, raising=False)
    run = tmp_path / "r"
    try:
        train(smoke_cfg("epochs=2", "checkpoint.every_steps=3"), run)
        outcome = None
    except (RunFailed, OSError) as exc:
        outcome = str(exc)
    monkeypatch.undo()
    name = failing.failed.name.split(".tmp-")[0].lstrip(".")
    if outcome is None:
        assert name in (".reserve", "reserve", "aug_preview.png", "curves.png"), name
        assert summary(run)["status"] == "completed"
    else:
        assert "No space left on device" in outcome and "could not write" in outcome and name in outcome
        if (run / "summary.json").exists() and name != "config.yaml":
            assert summary(run)["status"] == "failed"
    assert "Traceback" not in capfd.readouterr().err
    for ckpt in (run / "checkpoints").glob("*.pt"):
        checkpoint.verify(ckpt)
    assert not list(run.rglob(".*.tmp-*"))


# ---------------------------------------------------------------------------------------------
# the end of a run


def test_sigterm_during_the_test_evaluation_is_honoured_and_resume_finishes(tmp_path, monkeypatch, cli):
    """On main the run printed "stopping after this step", then exited 0 as completed."""
    original = regx.train._best_weights

    def stop_then_load(rec, device):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(rec, device)

    monkeypatch.setattr(regx.train, "_best_weights", stop_then_load)
    run = tmp_path / "run"
    res = cli("train", "debug=smoke", "epochs=2", f"hydra.run.dir={run}")
    assert res.returncode == 143 and summary(run)["status"] == "interrupted"
    assert summary(run).get("test_acc") is None
    monkeypatch.undo()
    res = cli("resume", str(run))
    assert res.returncode == 0, res.stderr
    s = summary(run)
    assert s["status"] == "completed" and s["epochs_done"] == 2 and s["test_acc"] is not None
    assert s["test_checkpoint"] == "best.pt" and len(read_metrics(run / "metrics.csv")) == 2


@pytest.mark.parametrize("command", ["train", "resume"])
def test_sigterm_after_the_run_completed_exits_0_and_keeps_the_status(tmp_path, monkeypatch, cli, command):
    """On main the process died of the signal: exit 143 with summary.json saying completed."""
    run = tmp_path / "run"
    if command == "resume":
        assert cli("train", "debug=smoke", "epochs=1", f"hydra.run.dir={run}").returncode == 0
    original = regx.train.train

    def train_then_stop(*a, **kw):
        summary = original(*a, **kw)
        os.kill(os.getpid(), signal.SIGTERM)  # as the process ends (trackers, plots, Hydra's teardown)
        return summary

    monkeypatch.setattr(regx.train, "train", train_then_stop)
    args = (
        ["train", "debug=smoke", "epochs=1", f"hydra.run.dir={run}"]
        if command == "train"
        else ["resume", run, "epochs=2", "sched.restart=true"]
    )
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "SIGTERM came after the run completed; its results are whole" in res.stdout
    assert summary(run)["status"] == "completed"


def test_sigterm_before_the_run_starts_starts_nothing(tmp_path, monkeypatch, cli):
    import regx.sweep

    original = regx.sweep.Jobs.task

    def stop_then_task(self, cfg):  # while Hydra composes the job
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, cfg)

    monkeypatch.setattr(regx.sweep.Jobs, "task", stop_then_task)
    res = cli("train", "debug=smoke", "epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 143 and "SIGTERM before the run started: not started" in res.stdout
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "malicious"])
def test_a_damaged_best_checkpoint_falls_back_for_the_test_evaluation(tmp_path, monkeypatch, cli, damage):
    """On main a corrupt best.pt failed the run after all its training was done."""
    original = regx.train._best_weights
    monkeypatch.setattr(
        regx.train,
        "_best_weights",
        lambda rec, device: (os.kill(os.getpid(), signal.SIGTERM), original(rec, device))[1],
    )
    run = tmp_path / "run"
    assert cli("train", "debug=smoke", "epochs=2", f"hydra.run.dir={run}").returncode == 143
    monkeypatch.undo()
    best = run / "checkpoints" / "best.pt"
    best.unlink()  # a hard link to last.pt or prev.pt: damage it alone
    if damage == "garbage":
        best.write_bytes(b"\0" * 100)
    else:

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))

        torch.save({"model": Payload()}, best)
    res = cli("resume", str(run))
    assert res.returncode == 0, res.stderr
    assert "the test evaluation uses last.pt (epoch 2) instead" in res.stdout
    s = summary(run)
    assert s["status"] == "completed" and s["test_checkpoint"] == "last.pt" and s["test_acc"] is not None
    assert not (tmp_path / "pwned").exists()


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("train", "debug=smoke", "epochs=3", f"hydra.run.dir={run}").returncode == 0
    saved = (run / "config.yaml").read_text()
    res = cli("resume", str(run), "epochs=2")
    assert res.returncode == 2
    assert f"epochs=2 is below the 3 epochs {run} has trained already" in one_line(res.stderr)
    assert (run / "config.yaml").read_text() == saved and summary(run)["epochs_done"] == 3


# ---------------------------------------------------------------------------------------------
# damaged metadata


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        train(smoke_cfg("epochs=2", f"seed={ord(name)}"), root / name)
    return root


def copy_run(finished, name, tmp_path):
    import shutil

    return Path(shutil.copytree(finished / name, tmp_path / name))


def test_a_damaged_config_is_named_by_resume_and_skipped_by_report(tmp_path, finished, cli):
    run = copy_run(finished, "a", tmp_path)
    copy_run(finished, "b", tmp_path)
    (run / "config.yaml").write_text("epochs: [1, 2\nlr: 0.1\n")
    res = cli("resume", str(run), "epochs=3", "sched.restart=true")
    assert res.returncode == 2 and f"{run}/config.yaml is damaged (" in one_line(res.stderr)
    res = cli("report", str(tmp_path / "*"))
    assert res.returncode == 0, res.stderr
    assert f"left out a run: {run}/config.yaml is damaged" in one_line(res.stderr)
    assert "b" in res.stdout and "1 run" in res.stdout


def test_a_truncated_summary_is_rebuilt_by_resume(tmp_path, finished, cli):
    run = copy_run(finished, "a", tmp_path)
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[: len(text) // 2])
    res = cli("report", str(run))
    assert res.returncode == 2 and "summary.json is damaged" in res.stderr
    res = cli("resume", str(run), "epochs=3", "sched.restart=true")
    assert res.returncode == 0, res.stderr
    assert "summary.json is damaged" in res.stdout and "rebuilding it from the newest checkpoint" in res.stdout
    s = summary(run)
    assert s["status"] == "completed" and s["epochs_done"] == 3 and s["best_epoch"] in (1, 2, 3)
    assert len(read_metrics(run / "metrics.csv")) == 3


# ---------------------------------------------------------------------------------------------
# images


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    x = decode(str(tmp_path / "ramp16.png"), 64, "L").float()
    assert x.mean().item() == pytest.approx(127.5, abs=1.5)  # main: 247, 97% of pixels 255
    assert x.min().item() == 0 and x.max().item() == 255


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # stored: white left half
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    x = decode(str(tmp_path / "phone.jpg"), 20, "L").float()[0]
    assert x[:8].mean() > 200 and x[-8:].mean() < 50  # upright: white on top


def test_an_image_over_pillows_limit_says_so(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _, _, bad = check_images([(str(tmp_path / "big.png"), 0)], 16, workers=0)
    assert bad == [(str(tmp_path / "big.png"), "over Pillow's size limit of 200 pixels (a decompression bomb?)")]


def test_a_huge_png_is_named_not_decoded_and_a_huge_jpeg_decodes_reduced(tmp_path, monkeypatch):
    """On main a 13000x13000 PNG (over Pillow's warning limit, under its error limit) decoded whole: 1.3 GB."""
    Image.new("RGB", (64, 64), "red").save(tmp_path / "huge.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "huge.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4,096 pixels: over the limit, under twice it
    items = [(str(tmp_path / "huge.png"), 0), (str(tmp_path / "huge.jpg"), 0)]
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's, as it opens the files
        x, _, bad = check_images(items, 16, workers=0)
    assert bad == [(str(tmp_path / "huge.png"), "64x64 pixels, about 0.0 GB to decode whole (regx reads only JPEGs "
                                                "at a reduced scale): shrink it first")]  # fmt: skip
    assert x.shape[0] == 1  # the JPEG, read at a quarter of its size (256 pixels)


def test_a_streamed_folder_is_checked_before_training(tmp_path, cli):
    """On main a truncated JPEG in test/ failed the run after all its epochs, naming no file, and
    data.on_bad_image=skip did nothing for a streamed folder."""
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        write_images(root / split, per_class=6)
    good = (root / "test" / "cat" / "0.jpg").read_bytes()
    (root / "test" / "cat" / "trunc.jpg").write_bytes(good[: len(good) // 3])
    args = [
        "train",
        "debug=smoke",
        "data=imagefolder",
        f"data.path={root}",
        "data.image_size=16",
        "data.stream=true",
        "epochs=1",
    ]
    res = cli(*args, "hydra.run.dir=err")
    assert res.returncode == 1 and f"{root}/test/cat/trunc.jpg (truncated)" in res.stderr
    assert not (tmp_path / "err" / "metrics.csv").exists()  # before any epoch
    res = cli(*args, "data.on_bad_image=skip", "hydra.run.dir=skip")
    assert res.returncode == 0, res.stderr
    assert "skipped 1 unreadable image(s)" in (tmp_path / "skip" / "train.log").read_text() + res.stdout
    assert summary(tmp_path / "skip")["n_test"] == 18
    res = cli("check-data", "data=imagefolder", f"data.path={root}", "data.image_size=16")
    assert res.returncode == 1 and f"unreadable: {root}/test/cat/trunc.jpg (truncated)" in res.stdout


def test_a_checkpoint_cut_short_between_manifest_and_file_still_verifies(tmp_path):
    """Each manifest is written before its file is published: a failure between the two (twice in a
    row, even) leaves the old file matching the manifest's earlier entries."""
    from regx import checkpoint
    from regx.checkpoint import newest_intact

    def cut(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt = tmp_path / "checkpoints"
    checkpoint.save(toy_checkpoint(1), ckpt, best=True)
    checkpoint.save(toy_checkpoint(2), ckpt, best=False)
    for step in (3, 4):
        with pytest.raises(OSError):
            checkpoint.save(toy_checkpoint(step), ckpt, best=False, before_rename=cut)
        for name in ("last.pt", "prev.pt", "best.pt"):
            checkpoint.verify(ckpt / name)
        assert newest_intact(ckpt)[1].step == 2
    checkpoint.save(toy_checkpoint(5), ckpt, best=True)
    for name in ("last.pt", "prev.pt", "best.pt"):
        checkpoint.verify(ckpt / name)
    assert newest_intact(ckpt)[1].step == 5


def test_too_little_address_space_is_one_line_before_torch_loads(tmp_path):
    """On main `ulimit -v` of 2.4 GiB gave "libtorch_cpu.so: failed to map segment" with exit 2 (the bad
    input code), and 2.9 GiB a C++ abort (std::bad_alloc, exit 134)."""
    import resource
    import sys

    for gib in (2.4, 2.9):
        limit = int(gib * 2**30)
        res = subprocess.run(
            [sys.executable, "-m", "regx", "train", "debug=smoke", f"hydra.run.dir={tmp_path / 'r'}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda limit=limit: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
        )
        assert res.returncode == 1, res.stderr
        assert f"may use {gib} GiB of address space (ulimit -v)" in one_line(res.stderr)
        assert not (tmp_path / "r").exists()

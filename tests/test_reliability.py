"""Killed, corrupted, poisoned or malformed: a run loses nothing and says what went wrong.

A SIGKILL runs in a subprocess (tests/fault_main.py installs the fault hook there); signals that the
run handles (SIGTERM, SIGINT) are real signals sent to this process. The smoke preset has 360
training images in batches of 64: 6 steps per epoch, steps 0-17 over 3 epochs, so step 9 is the
fourth batch of epoch 2.
"""

import errno
import json
import math
import os
import pickle
import shutil

import pytest
import torch

from regx import checkpoint, config
from regx.checkpoint import CorruptCheckpoint, newest_intact
from regx.files import read_metrics
from regx.train import Interrupted, RunFailed, train
from tests.conftest import assert_same_state, metric_rows, run_regx, smoke_cfg, toy_checkpoint, write_images
from tests.fault_main import Fault

COMMON = ["debug=smoke", "epochs=3", "aug=flip_rotate", "dropout=fc", "checkpoint.every_steps=2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of COMMON: what every interrupted-and-resumed run must equal."""
    root = tmp_path_factory.mktemp("ref")
    assert train(smoke_cfg(*COMMON[1:]), root / "full")["status"] == "completed"
    return root / "full"


def start(tmp_path, name, fault):
    """COMMON in a subprocess that the fault kills."""
    return run_regx(["train", *COMMON, f"hydra.run.dir={tmp_path / name}"], tmp_path, fault=fault)


def assert_equal_runs(a, b):
    assert metric_rows(a) == metric_rows(b)
    assert_same_state(
        checkpoint.read(a / "checkpoints/last.pt").to_dict(), checkpoint.read(b / "checkpoints/last.pt").to_dict()
    )


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_killed_mid_epoch_resumes_at_the_next_unseen_batch(tmp_path, reference, cli):
    killed = start(tmp_path, "k", "kill@9")
    assert killed.returncode == -9
    state = checkpoint.read(tmp_path / "k/checkpoints/last.pt").to_dict()["state"]
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 8)  # mid-epoch 2, after its 2nd batch
    code, out, err = cli("resume", str(tmp_path / "k"))
    assert code == 0, err
    assert "at epoch 2 batch 3 (step 8)" in out
    assert_equal_runs(reference, tmp_path / "k")
    assert summary(tmp_path / "k")["status"] == "completed"
    code, out, _ = cli("resume", str(tmp_path / "k"))
    assert code == 0 and "already completed 3 epochs; nothing to do" in out


@pytest.mark.slow  # 10-20 s; the fast guard is tests/test_data.py's global random stream test
def test_a_streamed_run_with_dropout_resumes_mid_epoch_bit_exact(tmp_path):
    """Streamed batches come from a DataLoader made at each (re)start of an epoch; it must not draw from
    the random stream that dropout uses, or the resumed run's masks differ from the uninterrupted run's."""
    write_images(tmp_path / "imgs", per_class=8, size=(20, 20))
    args = ["debug=smoke", "data=imagefolder", f"data.path={tmp_path / 'imgs'}", "data.image_size=16",
            "data.stream=true", "data.workers=0", "batch_size=4", "epochs=2", "dropout=fc",
            "checkpoint.every_steps=1"]  # fmt: skip
    assert train(config.compose(args), tmp_path / "ref")["status"] == "completed"
    killed = run_regx(["train", *args, f"hydra.run.dir={tmp_path / 'k'}"], tmp_path, fault="kill@7")  # epoch 2
    assert killed.returncode == -9
    assert checkpoint.read(tmp_path / "k/checkpoints/last.pt").to_dict()["state"]["batch"] > 0  # mid-epoch
    resumed = run_regx(["resume", str(tmp_path / "k")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_equal_runs(tmp_path / "ref", tmp_path / "k")


@pytest.mark.slow  # 6 s; among the chaos test's 20 stops (slow too) are kills while a checkpoint is written
def test_killed_while_writing_a_checkpoint(tmp_path, reference, cli):
    killed = start(tmp_path, "w", "killsave@9")  # the checkpoint after step 9 dies before its rename
    assert killed.returncode == -9
    ckpt = tmp_path / "w/checkpoints"
    leftovers = list(ckpt.glob(".last.pt.tmp-*"))
    assert len(leftovers) == 1
    checkpoint.verify(ckpt / "last.pt")
    assert checkpoint.read(ckpt / "last.pt").to_dict()["state"]["step"] == 8  # still the previous checkpoint
    code, out, err = cli("resume", str(tmp_path / "w"))
    assert code == 0, err
    assert "removed" in out and not list(ckpt.glob(".*tmp*"))
    assert_equal_runs(reference, tmp_path / "w")


def test_an_error_while_pickling_or_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(toy_checkpoint(6, w=torch.ones(3)), tmp_path, best=True)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # a lambda does not pickle
        checkpoint.save(toy_checkpoint(7, plateau={"bad": lambda: 0}), tmp_path, best=False)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as info:
        checkpoint.save(toy_checkpoint(12, w=torch.zeros(3)), tmp_path, best=False)
    assert f"could not write {tmp_path}/" in str(info.value) and "No space left" in str(info.value)  # names the file
    for name in ("last.pt", "best.pt"):
        checkpoint.verify(tmp_path / name)
        assert torch.equal(checkpoint.read(tmp_path / name).to_dict()["model"]["w"], torch.ones(3))
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_a_full_disk_during_training_fails_cleanly(tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        if ".last.pt.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append(fd)
            if len(calls) == 2:  # the second epoch's checkpoint
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "full-disk"
    with pytest.raises(RunFailed, match="No space left on device"):
        train(smoke_cfg("epochs=3"), run)
    s = summary(run)
    assert s["status"] == "failed" and str(run / "checkpoints" / "last.pt") in s["error"]
    assert checkpoint.read(run / "checkpoints/last.pt").to_dict()["state"]["epoch"] == 1
    assert [int(r["epoch"]) for r in read_metrics(run / "metrics.csv")] == [1]
    assert not [p for p in run.rglob("*") if "tmp" in p.name]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_last_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, reference, damage):
    run = tmp_path / "run"
    shutil.copytree(reference, run)  # copies: best.pt is no longer the same file as last.pt
    last = run / "checkpoints/last.pt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(len(data))}[damage])
    with pytest.raises(CorruptCheckpoint):
        checkpoint.verify(last)
    path, ckpt, problems = newest_intact(run / "checkpoints")
    assert "last.pt is corrupt" in problems[0]
    steps = {n: checkpoint.read(run / "checkpoints" / n).to_dict()["state"]["step"] for n in ("prev.pt", "best.pt")}
    assert steps["prev.pt"] == 16  # the end of epoch 3's checkpoint came after mid-epoch step 16
    assert ckpt.step == max(steps.values()) and path.name == max(steps, key=steps.get)
    (run / "checkpoints/best.pt").write_bytes(b"")  # as when best.pt is a hard link to last.pt
    path, ckpt, problems = newest_intact(run / "checkpoints")
    assert path.name == "prev.pt" and len(problems) == 2


def test_resume_says_which_checkpoint_it_fell_back_to_and_fails_when_none_is_intact(tmp_path, reference, cli):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "checkpoints/last.pt").write_bytes(b"")
    res = cli("resume", str(run), "epochs=4", "sched.restart=true")
    assert res.returncode == 0, res.stderr
    assert "last.pt is corrupt" in res.stdout and "falling back to" in res.stdout
    assert summary(run)["epochs_done"] == 4
    for name in ("last.pt", "prev.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes(b"not a checkpoint")
    res = cli("resume", str(run), "epochs=5", "sched.restart=true")
    assert res.returncode == 1
    assert "last.pt is corrupt" in res.stderr and "no intact checkpoint remains" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, reference, cli):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for name in ("last.pt", "prev.pt", "best.pt"):
        torch.save({"model": Evil(), "state": {"step": 99}}, run / "checkpoints" / name)
        (run / "checkpoints" / f"{name}.json").unlink()  # no manifest: loading is the only check left
    with pytest.raises(checkpoint.CorruptCheckpoint, match="holds posix.system, .* regx never unpickles code"):
        checkpoint.read(run / "checkpoints/last.pt")
    res = cli("resume", str(run), "epochs=4", "sched.restart=true")
    assert res.returncode == 1 and "last.pt does not load (it holds posix.system" in res.stderr
    assert "weights_only" not in res.stderr + res.stdout  # the unsafe way round is never suggested
    assert (res.stdout + res.stderr).count("last.pt does not load") == 1  # said once (train.log has it too)
    assert "run failed: " in (run / "train.log").read_text()
    res = cli("eval", str(run))
    assert res.returncode == 2 and "best.pt does not load (it holds posix.system" in res.stderr
    assert not marker.exists()
    # regx's own checkpoints load under the same rule
    assert checkpoint.read(reference / "checkpoints/last.pt").to_dict()["state"]["epoch"] == 3


def run_with(tmp_path, name, fault):
    """COMMON in this process with the fault hook: real signals reach this process's handlers."""
    return train(smoke_cfg(*COMMON[1:]), tmp_path / name, hooks=[Fault(fault)])


@pytest.mark.parametrize(("fault", "code"), [("term@9", 143), ("int@9", 130)])
def test_sigterm_or_sigint_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, reference, fault, code, capfd):
    with pytest.raises(Interrupted) as stopped:
        run_with(tmp_path, "s", fault)
    assert stopped.value.code == code
    assert "stopping after this step" in capfd.readouterr().err
    run = tmp_path / "s"
    assert summary(run)["status"] == "interrupted"
    state = checkpoint.read(run / "checkpoints/last.pt").to_dict()["state"]
    assert (state["epoch"], state["batch"], state["step"]) == (1, 4, 10)  # step 9 finished, then saved
    train(smoke_cfg(*COMMON[1:]), run, resume=True)
    assert_equal_runs(reference, run)


def test_a_signal_reaches_the_cli_as_its_exit_status(tmp_path):
    stopped = start(tmp_path, "t", "term@3")
    assert stopped.returncode == 143 and "stopping after this step" in stopped.stderr
    assert "interrupted; resume with: regx resume" in stopped.stdout


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_with(tmp_path, "c", "int2@9")
    assert not isinstance(stopped.value, Interrupted)
    run = tmp_path / "c"
    assert summary(run)["status"] == "interrupted"
    assert checkpoint.read(run / "checkpoints/last.pt").to_dict()["state"]["step"] == 8  # no checkpoint for step 9


def test_nan_loss_stops_with_step_loss_and_lr_and_keeps_checkpoints_finite(tmp_path):
    with pytest.raises(RunFailed, match=r"loss became nan at step 9 \(epoch 2, lr "):
        run_with(tmp_path, "n", "nan@9")
    run = tmp_path / "n"
    s = summary(run)
    assert s["status"] == "failed" and s["verdict"] == "diverged" and s["evidence"]["step"] == 9
    for name in ("last.pt", "best.pt"):
        ckpt = checkpoint.read(run / "checkpoints" / name).to_dict()
        assert ckpt["state"]["step"] <= 8
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("overrides", [("lr=50", "optim=sgd", "wd=0"), ("lr=1e6", "optim=adamw", "decay=l2")])
def test_a_loss_far_above_its_start_is_divergence_not_underfitting(tmp_path, overrides):
    """Finite but exploding losses (1e19 and more on main, which called it underfitting and said
    "train longer") stop the run at the first step above 100 x ln(classes)."""
    with pytest.raises(
        RunFailed,
        match=r"loss (reached \S+|became \S+) at step \d+.* \(epoch 1, lr [\d.e+]+\): the run "
        r"diverged; no checkpoint was written before it\. Lower the learning rate",
    ):
        train(smoke_cfg(*overrides, "sched=constant"), tmp_path / "d")
    s = summary(tmp_path / "d")
    assert s["status"] == "failed" and s["verdict"] == "diverged"
    assert s["evidence"]["limit"] == pytest.approx(100 * math.log(10))
    assert not (tmp_path / "d" / "checkpoints" / "last.pt").exists()


def test_the_divergence_message_names_the_checkpoint_that_exists(tmp_path):
    with pytest.raises(RunFailed, match=r"the newest checkpoint \(epoch 1, step 8\) is from before it"):
        run_with(tmp_path, "n", "nan@9")
    manifest = json.loads((tmp_path / "n" / "checkpoints" / "last.pt.json").read_text())
    assert (manifest["epoch"], manifest["step"]) == (1, 8)


def bad_folder(root):
    write_images(root, per_class=4)
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "emu" / "text.png").write_text("not an image")
    return root


def test_check_data_names_every_bad_image_without_training(tmp_path, cli):
    root = bad_folder(tmp_path / "imgs")
    res = cli("check-data", "data=imagefolder", f"data.path={root}", "data.image_size=16")
    assert res.returncode == 1
    for name in ("cat/trunc.jpg", "dog/empty.png", "emu/text.png"):
        assert f"unreadable: {root / name}" in res.stdout
    assert "error: 3 unreadable image(s)" in res.stdout and not (tmp_path / "outputs").exists()
    ok = cli("check-data", "debug=smoke")
    assert ok.returncode == 0 and "every image decodes" in ok.stdout


def test_check_data_lists_every_problem_at_once(tmp_path, cli):
    """On main check-data stopped at the first problem, and once fixed said ok, nothing of a 1x1 image
    that would be upscaled to the run's size."""
    from PIL import Image

    root = bad_folder(tmp_path / "imgs")
    (root / "zebra").mkdir()  # an empty class folder: a structural error
    (root / "yak").mkdir()
    Image.new("RGB", (1, 1)).save(root / "yak" / "dot.png")  # tiny
    Image.new("RGB", (200, 20)).save(root / "yak" / "strip.png")  # 10:1
    for i in range(20):
        (root / "cat" / f"copy{i}.jpg").write_bytes((root / "cat" / "0.jpg").read_bytes())  # imbalance
    res = cli("check-data", "data=imagefolder", f"data.path={root}", "data.image_size=16")
    assert res.returncode == 1, res.stderr
    out = res.stdout
    assert f"error: {root / 'zebra'}: class folder has no images" in out and "error: 3 unreadable image(s)" in out
    assert f"unreadable: {root / 'cat' / 'trunc.jpg'} (truncated)" in out
    assert f"under half of data.image_size=16 (upscaled): {root / 'yak' / 'dot.png'} (1x1)" in out
    assert (
        "4 or more times as wide as high (or high as wide): the center crop keeps a part: "
        f"{root / 'yak' / 'strip.png'} (200x20)" in out
    )
    assert "warning: classes out of balance in train/: cat has 25 images, yak 2 (12x)" in out
    assert "regx: 2 problem(s) a run would stop at" in res.stderr


def test_check_data_finds_a_file_in_two_splits(tmp_path, cli):
    write_images(tmp_path / "imgs" / "train", per_class=3)
    write_images(tmp_path / "imgs" / "test", per_class=2, size=(32, 24))  # other bytes than train's
    (tmp_path / "imgs" / "test" / "cat" / "leak.jpg").write_bytes(
        (tmp_path / "imgs" / "train" / "cat" / "0.jpg").read_bytes()
    )
    res = cli("check-data", "data=imagefolder", f"data.path={tmp_path / 'imgs'}", "data.image_size=16")
    assert res.returncode == 0 and "warning: 1 file(s) in two splits (the same bytes)" in res.stdout
    assert "ok: every image decodes; 1 warning(s) above" in res.stdout


def test_training_on_bad_images_names_them_or_skips_and_counts(tmp_path, cli):
    root = bad_folder(tmp_path / "imgs")
    args = ["train", "debug=smoke", "data=imagefolder", f"data.path={root}", "data.image_size=16", "epochs=1"]
    res = cli(*[*args, "hydra.run.dir=err"])
    assert res.returncode == 1 and "3 unreadable image(s)" in res.stderr and "trunc.jpg" in res.stderr
    res = cli(*[*args, "data.on_bad_image=skip", "hydra.run.dir=skip"])
    assert res.returncode == 0, res.stderr
    assert "skipped 3 unreadable image(s)" in (tmp_path / "skip" / "train.log").read_text() + res.stdout


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("one_class", "found 1 class folder(s); need at least 2"),
        ("empty_class", "zebra: class folder has no images"),
    ],
)
def test_bad_folders_stop_before_training_naming_the_path(tmp_path, layout, message, cli):
    root = tmp_path / "imgs"
    if layout == "one_class":
        write_images(root, classes=("only",))
    elif layout == "empty_class":
        write_images(root)
        (root / "zebra").mkdir()
    res = cli("train", "debug=smoke", "data=imagefolder", f"data.path={root}", "hydra.run.dir=r")
    assert res.returncode == 2 and message in res.stderr and str(root) in res.stderr
    assert not (tmp_path / "r").exists()  # preflight: on main a failed run directory, and the error twice
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # 6 s; the chaos test's first kill comes before any checkpoint too
def test_a_run_killed_before_its_first_checkpoint_is_started_again_by_resume(tmp_path, cli):
    """No checkpoint yet: regx resume starts it from the beginning with its saved config, and cleans up."""
    killed = run_regx(["train", "debug=smoke", "epochs=2", "hydra.run.dir=r"], tmp_path, fault="kill@3")
    assert killed.returncode == -9 and summary(tmp_path / "r")["status"] == "running"
    res = cli("resume", str(tmp_path / "r"))
    assert res.returncode == 0 and "stopped before its first checkpoint: starting it again" in res.stdout, res.stderr
    assert summary(tmp_path / "r")["status"] == "completed" and summary(tmp_path / "r")["epochs_done"] == 2
    train(smoke_cfg("epochs=2"), tmp_path / "ref")
    assert metric_rows(tmp_path / "ref") == metric_rows(tmp_path / "r")
    assert not [p for p in (tmp_path / "r").rglob("*") if ".tmp-" in p.name]


def test_best_pt_is_published_again_when_a_stop_came_between_last_and_best(tmp_path, reference, cli):
    """Stopped after last.pt held a new best but before best.pt did: resume makes best.pt that checkpoint,
    and a best.pt of the wrong epoch is never tested as the best."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    last = checkpoint.read(run / "checkpoints/last.pt")
    ckpt_dir = run / "checkpoints"
    (ckpt_dir / "best.pt").unlink()
    (ckpt_dir / "best.pt.json").unlink()
    # as if epoch 3 had been the best: last.pt's own state says so
    state = {**last.state, "best_epoch": last.epoch, "best_val_acc": 1.0}
    checkpoint.save(checkpoint.Checkpoint(**{**last.to_dict(), "state": state}), ckpt_dir, best=False)
    s = summary(run)
    (run / "summary.json").write_text(json.dumps({**s, "status": "running", "best_epoch": last.epoch}))
    res = cli("resume", str(run), "epochs=4", "sched.restart=true")
    assert res.returncode == 0, res.stderr
    assert "best.pt did not hold the best epoch (3)" in (run / "train.log").read_text()
    assert checkpoint.read(ckpt_dir / "best.pt").epoch in (3, 4) and summary(run)["test_checkpoint"] == "best.pt"


STUCK_WORKERS = """
import os, sys, time, torch
from regx.data.core import data_loader

class Stuck(torch.utils.data.Dataset):  # a worker busy in a decode when its parent dies
    def __len__(self):
        return 8
    def __getitem__(self, i):
        open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
        time.sleep(120)
        return i

for _ in data_loader(Stuck(), batch_size=1, num_workers=2):
    pass
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_decoding_workers_die_with_a_killed_parent(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", STUCK_WORKERS, str(tmp_path)])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    assert len(workers) == 2, "the workers did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            return "\nState:\tZ" not in open(f"/proc/{pid}/status").read()  # a zombie has died
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [w for w in workers if alive(w)]
    for w in survivors:
        os.kill(w, signal.SIGKILL)
    assert not survivors, "a decoding worker outlived its killed parent"


def test_workers_still_running_at_exit_do_not_hold_the_process():
    """A batch iterator kept alive to the end (by a traceback: a stopped run) left its workers running at
    exit, and multiprocessing's exit function SIGTERMs such workers (which ignore it) and then joins them:
    the process hung after "interrupted" until killed. regx ends them first."""
    import subprocess
    import sys

    script = (
        "from regx.data.core import data_loader\n"
        "it = iter(data_loader(list(range(8)), batch_size=2, num_workers=1))\n"
        "next(it)\n"
        "KEPT = it\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: its workers held it")
    assert done.returncode == 0, done.stderr


def test_a_killed_writers_temporary_files_go_at_the_next_write_and_a_live_ones_stay(tmp_path):
    import subprocess
    import sys

    from regx.files import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = tmp_path / f".labels.csv.tmp-{int(dead.stdout)}"  # kill -9 of regx predict --out labels.csv
        onnx = tmp_path / f".m1.onnx.tmp-{int(dead.stdout)}.onnx"  # ... of regx export
        busy = tmp_path / f".labels.csv.tmp-{live.pid}"  # another regx writing it now
        for f in (left, onnx, busy):
            f.write_text("partial")
        write_text(tmp_path / "labels.csv", "path,label\n")
        assert not left.exists() and busy.exists() and onnx.exists()
        from regx.files import clear_dead_temporaries

        assert clear_dead_temporaries(tmp_path / "m1.onnx") == [onnx]
    finally:
        live.kill()


@pytest.mark.parametrize("kind", ["run", "command"])
def test_a_process_forked_under_a_stop_handler_dies_of_sigterm_silently(kind):
    """A decoding worker is forked with the run's handlers; torch's DataLoader may terminate one before
    its worker_init ignores the signals. It ran the run's handler: a stray "regx: SIGTERM: stopping
    after this step" on the run's stderr (test_a_low_open_file_limit_is_one_line_and_a_failed_status
    failed about one time in four) and a worker that went on instead of dying."""
    import signal

    from regx.signals import TermAsInterrupt
    from regx.train import StopRequest

    with StopRequest() if kind == "run" else TermAsInterrupt() as stop:
        pid = os.fork()
        if pid == 0:  # the child: what a worker does before its worker_init
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    assert not stop()

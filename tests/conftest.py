"""Helpers every test module may use (test modules never import from each other)."""

import contextlib
import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from regx import checkpoint, config
from regx.files import TIMING_COLUMNS, read_metrics

REPO = Path(__file__).resolve().parents[1]
# Under pytest-xdist the workers share the cores: one thread each on two cores, not two that fight.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)  # from the start: a module-scoped fixture may run before any test's _threads
REGX = [sys.executable, "-m", "regx"]
FAULTY = [sys.executable, str(REPO / "tests" / "fault_main.py")]


def _command(args, env, fault):
    full_env = {k: v for k, v in os.environ.items() if k != "REGX_DEBUG"}
    full_env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(THREADS), **(env or {}))
    return [*([*FAULTY, fault] if fault else REGX), *[str(a) for a in args]], full_env


def run_regx(args, cwd, env=None, timeout=300, fault=None, new_session=False):
    """Run `regx ARGS` in a subprocess, as a user would; with `fault` (tests/fault_main.py's KIND@STEP)
    a fault hook is installed in that process first; with `new_session` it leads its own process
    group (a signal to the group reaches nothing else). Returns CompletedProcess (text)."""
    cmd, full_env = _command(args, env, fault)
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, start_new_session=new_session
    )


def start_regx(args, cwd, fault=None) -> subprocess.Popen:
    """run_regx without waiting: a Popen leading its own process group, output to cwd/out.txt."""
    cmd, full_env = _command(args, None, fault)
    out = open(Path(cwd) / "out.txt", "w")  # noqa: SIM115 - the child holds it
    return subprocess.Popen(
        cmd, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.fixture
def regx(tmp_path):
    def call(*args, env=None, cwd=None):
        return run_regx(list(args), cwd or tmp_path, env=env)

    return call


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def regx_here(cwd, *args) -> Result:
    """`regx ARGS` in this process, as regx.cli.main runs it, from `cwd`: for everything a new process
    proves nothing more about."""
    from regx.cli import main

    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(before)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(tmp_path):
    """regx_here from tmp_path."""
    return lambda *args: regx_here(tmp_path, *args)


@pytest.fixture(autouse=True)
def _threads():
    """THREADS during each test and after it: a module-scoped fixture, set up before this one, runs with
    the count the test before it left (an in-process sweep sets its own), and results that equal runs
    must share exactly depend on it."""
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


def smoke_cfg(*overrides):
    return config.compose(["debug=smoke", *overrides])


def only_run(root):
    runs = sorted((root / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def metric_rows(run):
    """metrics.csv without its timing columns: what two equal runs must share exactly."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_metrics(run / "metrics.csv")]


def assert_same_state(a, b):
    """Two checkpoints hold the same weights and optimizer state, bit for bit."""
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name, value in sa[k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[k][name])), (k, name)


def write_images(folder: Path, classes=("cat", "dog", "emu"), per_class=6, size=(40, 30)):
    """A folder of class subfolders holding small JPEG and PNG files (PIL writes the real formats)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, c in enumerate(classes):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            arr = (rng.random((size[1], size[0], 3)) * 60 + 60 * i).astype(np.uint8)
            ext = ".png" if j % 2 else ".jpg"
            Image.fromarray(arr).save(folder / c / f"{j}{ext}")


def write_smooth_jpegs(folder: Path) -> list[str]:
    """JPEGs a tensor decoder takes (RGB and grey, three shapes) and ones it leaves to Pillow (an
    EXIF-rotated photo, a PNG): smooth pictures, as photos are, so that resizing is compared, not noise."""
    from PIL import Image

    from regx.data import folders

    folder.mkdir(parents=True)
    paths = []
    for i, (w, h) in enumerate([(120, 90), (32, 32), (50, 70)]):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h) + 60 * i], -1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"rgb{i}.jpg", quality=95)
        paths.append(str(folder / f"rgb{i}.jpg"))
    Image.fromarray(rgb[..., 0]).save(folder / "grey.jpg", quality=95)
    exif = Image.Exif()
    exif[folders.EXIF_ORIENTATION] = 6  # stored sideways: Pillow's path turns it upright
    Image.fromarray(rgb).save(folder / "rotated.jpg", quality=95, exif=exif)
    Image.fromarray(rgb).save(folder / "lossless.png")
    return [*paths, *(str(folder / n) for n in ("grey.jpg", "rotated.jpg", "lossless.png"))]


def load(name, **kw):
    """regx.data.load_data with the schema's defaults for every key not given."""
    from regx.data import load_data
    from regx.data.core import loading_keys

    defaults = OmegaConf.to_container(OmegaConf.structured(config.DataConfig(name=name)))
    return load_data(**loading_keys({**defaults, **kw}))


def model_args(name="smallcnn", *, num_classes=5, in_channels=3, image_size=32, **kw) -> dict:
    """build_model's keywords: the schema's defaults for every key not given."""
    from regx.models import model_kwargs

    cfg = OmegaConf.structured({"model": config.ModelConfig(name=name), "dropout": config.DropoutConfig(name="none")})
    return {**model_kwargs(cfg, num_classes=num_classes, in_channels=in_channels, image_size=image_size), **kw}


def make_model(name="smallcnn", **kw):
    from regx.models import build_model

    return build_model(**model_args(name, **kw))


def toy_checkpoint(step: int, w: torch.Tensor | None = None, **entries) -> checkpoint.Checkpoint:
    """A small Checkpoint (one weight) for tests of how checkpoint files are written and read."""
    return checkpoint.Checkpoint(
        model={"w": torch.full((3,), float(step)) if w is None else w},
        config={"average": {"select": "averaged"}},
        state={"epoch": step, "step": step},
        classes=["a", "b"],
        norm={"mean": [0.5], "std": [0.5]},
        in_channels=1,
        image_size=8,
        **entries,
    )


def write_idx(path: Path, array: np.ndarray, compress=False):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_family(folder: Path, compress=False, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)


def write_cifar(folder: Path, kind: str, per_file=10):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    n_classes = 10 if kind == "cifar10" else 100
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if kind == "cifar10" else ["train", "test"]
    for name in files:
        entry = {
            "data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            label_key: list(np.arange(per_file) % n_classes),
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = (
        {"label_names": [f"c{i}" for i in range(10)]}
        if kind == "cifar10"
        else {"fine_label_names": [f"c{i}" for i in range(100)]}
    )
    (folder / ("batches.meta" if kind == "cifar10" else "meta")).write_bytes(pickle.dumps(meta))

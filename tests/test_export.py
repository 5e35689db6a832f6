"""`regx export`: TorchScript and ONNX files that take uint8 images and agree with the PyTorch model."""

import json

import pytest
import torch

from regx.train import train
from tests.conftest import regx_here, smoke_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    train(smoke_cfg("epochs=1"), root / "run")
    return root / "run"


def check_onnx(path, size, classes):
    import onnx
    import onnxruntime

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["classes"] == classes and meta["image_size"] == size and meta["channels"] == 3
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # a dynamic batch axis
        out = session.run(None, {"images": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).numpy()})
        assert out[0].shape == (batch, len(classes))
    assert not list(path.parent.glob("*.data")) and not list(path.parent.glob(".*tmp*"))  # one file, no leftovers


def check_torchscript(path, size, classes):
    import warnings

    files = {"regx.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), _extra_files=files)
    assert json.loads(files["regx.json"])["classes"] == classes
    assert model(torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)).shape == (3, len(classes))


def export_both(run, tmp_path, size, classes):
    for fmt, check in (("onnx", check_onnx), ("torchscript", check_torchscript)):
        res = regx_here(tmp_path, "export", run, "--format", fmt, "--out", f"m.{fmt}")
        assert res.returncode == 0, res.stderr
        assert "top-1 agreement 100.00%" in res.stdout and "max |logit difference|" in res.stdout
        check(tmp_path / f"m.{fmt}", size, classes)


def test_smallcnn_exports_with_its_normalization_inside(run, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'regx[export]'")
    import regx

    export_both(run, tmp_path, 16, regx.load(run).classes)
    res = regx_here(tmp_path, "export", run, "--format", "onnx")  # the default place
    assert res.returncode == 0 and (run / "export" / "model.onnx").is_file()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("resnet18", marks=pytest.mark.slow),
        pytest.param("mobilenet_v3_small", marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", marks=pytest.mark.slow),
        pytest.param("convnext_tiny", marks=pytest.mark.slow),
        pytest.param("vit_b_16", marks=pytest.mark.slow),
    ],
)
def test_torchvision_models_export_at_small_image_size(tmp_path, name):
    pytest.importorskip("onnxruntime", reason="pip install 'regx[export]'")
    import regx

    train(
        smoke_cfg("epochs=1", "model=tv", f"model.name={name}", "data.image_size=32", "data.n_train=200"),
        tmp_path / "r",
    )
    export_both(tmp_path / "r", tmp_path, 32, regx.load(tmp_path / "r").classes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}", "--format", "tflite"], "invalid choice: 'tflite'"),
        (["{run}", "--format", "onnx", "--out", "no/dir/m.onnx"], "no such directory no/dir"),
        (["nowhere", "--format", "onnx"], "no such run directory: nowhere"),
        (["{run}"], "the following arguments are required: --format"),
    ],
)
def test_export_bad_input_is_one_line_and_writes_nothing(run, tmp_path, args, message):
    res = regx_here(tmp_path, "export", *[a.format(run=run) for a in args])
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not list(tmp_path.rglob("*.onnx"))

"""Mirror test-time augmentation (tta=flip) against its reference: airbench's `infer_mirror` (Keller Jordan,
cifar10-airbench), `0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))`, the logits of each image and its
left-right mirror averaged (pytorch-toolbelt's `fliplr_image2label` is the same)."""

import json

import torch
import torch.nn.functional as F

import regx
from regx.engine import Pipeline, evaluate
from regx.models import build_model
from tests.conftest import model_args


def infer_mirror(inputs, net):  # airbench94.py, tta_level=1
    return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))


def _net():
    torch.manual_seed(0)
    return build_model(**model_args(num_classes=4, in_channels=3, image_size=16)).eval()


def test_evaluation_with_tta_is_airbenchs_infer_mirror():
    net, g = _net(), torch.Generator().manual_seed(1)
    xb = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g)
    yb = torch.randint(0, 4, (12,), generator=g)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, -1, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, -1, 1, 1)
    ev = {
        tta: evaluate(
            net,
            [(xb[:5], yb[:5]), (xb[5:], yb[5:])],
            pipeline=Pipeline(mean=mean, std=std, channels_last=False, tta=tta),
            amp=None,
            keep_logits=True,
        )
        for tta in (False, True)
    }
    with torch.no_grad():
        ref = infer_mirror((xb.float() / 255 - mean) / std, net)
    assert torch.allclose(ev[True].logits, ref, atol=1e-5)
    assert abs(ev[True].loss - F.cross_entropy(ref, yb).item()) < 1e-5
    assert ev[True].acc == (ref.argmax(1) == yb).sum().item() / len(yb)
    assert (ev[False].logits - ref).abs().max() > 1e-4  # the mirror changes what even a random net says


def test_a_run_with_tta_says_so_and_predicts_with_the_mirror_too(cli, tmp_path):
    res = cli("train", "debug=smoke", "epochs=1", "tta=flip", "hydra.run.dir=r")
    assert res.returncode == 0, res.stderr
    assert "evaluated with mirror TTA (each image and its mirror)" in res.stdout + res.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["tta"] == "flip"
    clf = regx.load(tmp_path / "r")
    batch = torch.randint(0, 256, (6, clf.preprocess.channels, clf.preprocess.size, clf.preprocess.size))
    batch = batch.to(torch.uint8)
    with torch.no_grad(), clf.amp:
        ref = infer_mirror(clf.preprocess(batch), lambda x: clf.model(x).float()).softmax(1)  # bf16 logits, as float
    assert clf.tta and torch.allclose(clf.probabilities(batch), ref, atol=1e-5)
    for tta, said in (("flip", True), ("none", False)):  # regx eval takes the run's, or the one it is given
        res = cli("eval", "r", *(["tta=none"] if tta == "none" else []), "--out", f"e_{tta}")
        assert res.returncode == 0, res.stderr
        (written,) = (tmp_path / f"e_{tta}").glob("eval*.json")  # eval_tta=none.json: named by its overrides
        assert json.loads(written.read_text())["tta"] == tta
        assert ("each image and its mirror)" in res.stdout) == said
    res = cli("resume", "r", "epochs=2", "tta=none")  # best.pt's epochs were chosen with the mirror
    assert res.returncode == 2 and "resuming with changed tta would not continue the same run" in res.stderr


def test_an_exported_model_holds_the_mirror_of_a_tta_run(cli, tmp_path):
    """regx export of a tta=flip run: the file scores each image and its mirror, as regx.load does."""
    import warnings

    assert cli("train", "debug=smoke", "epochs=1", "tta=flip", "hydra.run.dir=r").returncode == 0
    res = cli("export", "r", "--format", "torchscript", "--out", "m.pt")
    assert res.returncode == 0 and "top-1 agreement 100.00%" in res.stdout, res.stderr
    files = {"regx.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    assert json.loads(files["regx.json"])["tta"] == "flip"
    clf = regx.load(tmp_path / "r", device="cpu")
    batch = torch.randint(0, 256, (5, clf.preprocess.channels, clf.preprocess.size, clf.preprocess.size))
    batch = batch.to(torch.uint8)
    with torch.no_grad():
        ref = infer_mirror(clf.preprocess(batch), lambda x: clf.model.float()(x).float())
        assert torch.allclose(exported(batch), ref, atol=1e-4)

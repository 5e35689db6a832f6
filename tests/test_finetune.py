"""Fine-tuning: weights from ImageNet (a cached file, no network), a regx run or a file; head
replacement across torchvision's families; freezing, gradual unfreezing, the BatchNorm policy."""

import pytest
import torch
from torch import nn

from regx import checkpoint, config, errors
from regx.files import read_metrics
from regx.finetune import (
    FinetuneError,
    FreezePlan,
    Pretrained,
    _fix_densenet_keys,
    build_pretrained,
    head_path,
)
from regx.train import RunFailed, train
from tests.conftest import (
    assert_same_state,
    make_model,
    metric_rows,
    model_args,
    regx_here,
    run_regx,
    smoke_cfg,
)

# (model, input size, its head's path)
FAMILIES = [
    ("resnet18", 64, "fc"),
    ("regnet_y_400mf", 64, "fc"),
    ("googlenet", 64, "fc"),
    ("shufflenet_v2_x0_5", 64, "fc"),
    ("mobilenet_v3_small", 64, "classifier.3"),
    ("efficientnet_b0", 64, "classifier.1"),
    ("mnasnet0_5", 64, "classifier.1"),
    pytest.param("vgg11", 64, "classifier.6", marks=pytest.mark.slow),
    ("alexnet", 64, "classifier.6"),
    ("convnext_tiny", 64, "classifier.2"),
    ("densenet121", 64, "classifier"),
    ("squeezenet1_0", 64, "classifier.1"),
    ("swin_t", 64, "head"),
    ("smallcnn", 32, "head.out"),
    pytest.param("vit_b_16", 224, "heads.head", marks=pytest.mark.slow),
    pytest.param("maxvit_t", 224, "classifier.5", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "size", "head"), FAMILIES)
def test_the_head_is_replaced_for_every_family(name, size, head):
    torch.manual_seed(0)
    source = make_model(name, num_classes=1000, in_channels=3, image_size=size)
    assert head_path(source) == head
    p = 0.0 if name == "squeezenet1_0" else 0.3  # squeezenet's head is a conv: no linear layer to drop into
    model, dropped = build_pretrained(
        Pretrained(source.state_dict(), "test"), **model_args(name, num_classes=7, dropout=p, image_size=size)
    )
    assert dropped and all(d.startswith(head + ".") for d in dropped)
    assert any("1000" in d for d in dropped)
    own = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith(head + "."):
            assert torch.equal(own[key], value), key  # everything but the head came across
    if p > 0:
        assert any(isinstance(m, nn.Dropout) and m.p == p for m in model.modules())
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(q.grad is not None for n, q in model.named_parameters() if n.startswith(head_path(model)))


def test_densenet_legacy_keys_are_renamed():
    sd = {"features.denseblock1.denselayer1.norm.1.weight": 1, "features.norm5.weight": 2}
    assert _fix_densenet_keys(sd) == {"features.denseblock1.denselayer1.norm1.weight": 1, "features.norm5.weight": 2}


def test_weights_that_do_not_fit_beyond_the_head_are_named():
    source = make_model("resnet18", num_classes=1000, in_channels=3).state_dict()
    source["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(FinetuneError, match=r"shape mismatch: layer1\.0\.conv1\.weight"):
        build_pretrained(Pretrained(source, "t"), **model_args("resnet18", num_classes=3))
    with pytest.raises(FinetuneError, match="missing: "):
        build_pretrained(
            Pretrained(make_model("alexnet", num_classes=5, in_channels=3).state_dict(), "t"),
            **model_args("resnet18", num_classes=3),
        )


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A smallcnn trained on 10 shape classes: the weights the fine-tuning tests start from."""
    root = tmp_path_factory.mktemp("pre")
    train(smoke_cfg("epochs=2"), root / "pre")
    return root / "pre"


def test_linear_probe_leaves_frozen_weights_and_bn_statistics_bitwise_unchanged(tmp_path, pretrained_run):
    s = train(
        smoke_cfg("finetune=linear_probe", f"finetune.weights={pretrained_run}", "data.num_classes=4", "epochs=2"),
        tmp_path / "probe",
    )
    source = checkpoint.read(pretrained_run / "checkpoints/best.pt").to_dict()["model"]
    tuned = checkpoint.read(tmp_path / "probe/checkpoints/last.pt").to_dict()["model"]
    for key, value in source.items():
        if key.startswith("head.out."):
            continue
        assert torch.equal(tuned[key], value), key  # weights and BatchNorm buffers alike
    assert tuned["head.out.weight"].shape == (4, 32)
    assert s["frozen_params"] > 0 and s["trainable_params"] == 4 * 32 + 4
    assert s["dropped_keys"] == ["head.out.weight [10, 32]", "head.out.bias [10]"]
    assert [r["trainable"] for r in read_metrics(tmp_path / "probe/metrics.csv")] == ["head.out", "head.out"]

    # bn=train: the same frozen parameters, but BatchNorm running statistics drift (the usual trap)
    train(
        smoke_cfg(
            "finetune=linear_probe",
            f"finetune.weights={pretrained_run}",
            "data.num_classes=4",
            "epochs=1",
            "finetune.bn=train",
        ),
        tmp_path / "drift",
    )
    drift = checkpoint.read(tmp_path / "drift/checkpoints/last.pt").to_dict()["model"]
    assert torch.equal(drift["features.0.weight"], source["features.0.weight"])
    assert not torch.equal(drift["features.1.running_mean"], source["features.1.running_mean"])


def test_full_fine_tuning_trains_the_backbone_at_a_lower_learning_rate(tmp_path, pretrained_run):
    train(
        smoke_cfg(
            "finetune=full",
            f"finetune.weights={pretrained_run}",
            "epochs=1",
            "sched=constant",
            "finetune.backbone_lr_mult=0.25",
        ),
        tmp_path / "full",
    )
    ckpt = checkpoint.read(tmp_path / "full/checkpoints/last.pt").to_dict()
    lrs = {g["lr_mult"]: g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert lrs[0.25] == pytest.approx(0.25 * lrs[1.0]) and lrs[1.0] == pytest.approx(0.05)
    source = checkpoint.read(pretrained_run / "checkpoints/best.pt").to_dict()["model"]
    assert not torch.equal(ckpt["model"]["features.0.weight"], source["features.0.weight"])


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_gradual_unfreezing_shows_in_metrics_and_survives_a_kill(tmp_path, pretrained_run):
    common = [
        "debug=smoke",
        "epochs=3",
        "finetune=gradual",
        f"finetune.weights={pretrained_run}",
        "finetune.unfreeze_epoch=1",
        "finetune.stages=2",
        "checkpoint.every_steps=2",
        "aug=flip",
    ]
    full = regx_here(tmp_path, "train", *common, "hydra.run.dir=full")
    assert full.returncode == 0, full.stderr
    rows = read_metrics(tmp_path / "full/metrics.csv")
    assert [r["trainable"] for r in rows] == ["head.out", "head.out+head.fc1", "all"]
    counts = [int(r["trainable_params"]) for r in rows]
    assert counts[0] < counts[1] < counts[2]
    # killed in the first partly unfrozen epoch: resuming must restore that epoch's freeze state
    for step in (9,):
        killed = run_regx(["train", *common, f"hydra.run.dir=k{step}"], tmp_path, fault=f"kill@{step}")
        assert killed.returncode == -9
        resumed = regx_here(tmp_path, "resume", f"k{step}")
        assert resumed.returncode == 0, resumed.stderr
        assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / f"k{step}")
        assert_same_state(
            checkpoint.read(tmp_path / "full/checkpoints/last.pt").to_dict(),
            checkpoint.read(tmp_path / f"k{step}/checkpoints/last.pt").to_dict(),
        )


def test_freeze_patterns_and_their_errors(tmp_path, pretrained_run):
    s = train(
        smoke_cfg(
            "finetune=full", f"finetune.weights={pretrained_run}", "epochs=1", "finetune.freeze=[features.0,features.1]"
        ),
        tmp_path / "pat",
    )
    source = checkpoint.read(pretrained_run / "checkpoints/best.pt").to_dict()["model"]
    tuned = checkpoint.read(tmp_path / "pat/checkpoints/last.pt").to_dict()["model"]
    assert torch.equal(tuned["features.0.weight"], source["features.0.weight"])
    assert not torch.equal(tuned["features.4.weight"], source["features.4.weight"])
    assert s["frozen_params"] == source["features.0.weight"].numel() + 2 * source["features.1.weight"].numel()
    with pytest.raises(RunFailed, match="finetune.freeze pattern 'layer9' matches no parameter"):
        train(smoke_cfg("finetune.freeze=[layer9]", "epochs=1"), tmp_path / "bad")


def write_fake_imagenet(tmp_path, monkeypatch, name="resnet18"):
    """Put a (random) state dict where torchvision's loader caches `name`'s ImageNet weights."""
    from regx.finetune import imagenet_file, imagenet_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = imagenet_file(imagenet_weights(name))
    file.parent.mkdir(parents=True)
    torch.save(make_model(name, num_classes=1000, in_channels=3).state_dict(), file)
    return file


def test_imagenet_weights_from_torchvisions_cache_with_their_preprocessing(tmp_path, monkeypatch):
    import regx.finetune as ft

    file = write_fake_imagenet(tmp_path, monkeypatch)
    monkeypatch.setattr(ft, "_reachable", lambda *a, **k: pytest.fail("tried the network with a cached file"))
    s = train(smoke_cfg("model=resnet18", "finetune=linear_probe", "epochs=1", "data.channels=1"), tmp_path / "in")
    assert str(file) in s["weights"] and s["dropped_keys"] == ["fc.weight [1000, 512]", "fc.bias [1000]"]
    ckpt = checkpoint.read(tmp_path / "in/checkpoints/last.pt").to_dict()
    assert ckpt["norm"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # the weights' statistics
    assert ckpt["in_channels"] == 1 and ckpt["config"]["model"]["small_input"] is False
    source = torch.load(file, weights_only=True)
    assert torch.equal(ckpt["model"]["model.layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    res = regx_here(tmp_path, "eval", tmp_path / "in")  # grey data through the RGB backbone again
    assert res.returncode == 0, res.stderr


def test_imagenet_weights_offline_and_not_cached_stop_at_once(tmp_path, monkeypatch):
    import regx.finetune as ft

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(ft, "_reachable", lambda *a, **k: False)
    with pytest.raises(RunFailed) as err:
        train(smoke_cfg("model=resnet18", "finetune=full"), tmp_path / "off")
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"put it at {expected}" in str(err.value) and "cannot be reached" in str(err.value)


def test_imagenet_weights_that_cannot_be_had_stop_before_a_run_directory(tmp_path, monkeypatch, cli):
    """On main the run directory was made, recorded as failed, and the error printed twice."""
    import regx.finetune as ft

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(ft, "_reachable", lambda *a, **k: False)
    res = cli("train", "debug=smoke", "model=resnet18", "finetune=full", f"hydra.run.dir={tmp_path / 'r'}")
    assert res.returncode == 2 and "resnet18-f37072fd.pth is not cached" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_connection_that_never_answers_is_given_up(monkeypatch):
    """A resolver or connect that hangs must not hang the run: the probe is abandoned after its timeout."""
    import socket
    import threading

    from regx.finetune import _reachable

    never = threading.Event()

    def hang(*args, **kwargs):
        never.wait()
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hang)
    assert _reachable("https://download.pytorch.org/models/x.pth", timeout=0.2) is False
    never.set()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune.weights=imagenet"], "finetune=scratch starts from random weights"),
        (["finetune=full"], "smallcnn has no ImageNet weights"),
        (
            ["finetune=full", "finetune.weights=/no/such/run"],
            "finetune.weights=/no/such/run: no such file or directory",
        ),
        (["finetune=gradual", "finetune.weights=null"], "finetune=gradual needs finetune.weights"),
        (["finetune=full", "model=resnet18", "finetune.stages=0"], "finetune.stages=0 is invalid"),
    ],
)
def test_bad_finetune_config_is_one_line(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        errors.preflight(overrides)


def test_weights_for_another_architecture_or_garbage_are_refused(tmp_path, pretrained_run):
    with pytest.raises(RunFailed, match="model.channels=.* in that run"):
        train(smoke_cfg("finetune=full", f"finetune.weights={pretrained_run}", "model.channels=[4,8]"), tmp_path / "a")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(RunFailed, match=r"junk.pt does not load \(not a torch checkpoint"):
        train(smoke_cfg("finetune=full", f"finetune.weights={junk}"), tmp_path / "b")
    res = regx_here(tmp_path, "train", "debug=smoke", "finetune=full", f"finetune.weights={junk}", "hydra.run.dir=c")
    assert res.returncode == 2 and "junk.pt does not load (not a torch checkpoint" in res.stderr
    assert not (tmp_path / "c").exists()  # refused in the preflight, before a run directory


def test_bn_frozen_layers_stay_in_eval_mode_only_while_frozen():
    model = make_model("smallcnn", num_classes=3, in_channels=3, channels=[4], fc=[8])
    plan = FreezePlan(model, mode="gradual", freeze=[], bn="frozen", unfreeze_epoch=1, stages=1, stage_epochs=1)
    assert plan.apply(1) == "head.out"
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert plan.apply(2) == "all"
    model.train()
    assert all(m.training for m in bns)


def test_weights_that_do_not_fit_stop_before_a_run_directory(tmp_path, pretrained_run, cli):
    """On main the mismatch was found after the run directory was made: status failed, the error twice."""
    res = cli("train", "debug=smoke", "finetune=full", f"finetune.weights={pretrained_run}", "model.fc=[16]",
              f"hydra.run.dir={tmp_path / 'r'}")  # fmt: skip
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith(f"regx: error: finetune.weights={pretrained_run}: ") and not (tmp_path / "r").exists()

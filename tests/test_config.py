"""Every option of every group composes, validates and builds; bad input fails with one line."""

import math
from pathlib import Path

import pytest
import torch

from regx import config, errors
from regx.data import iterate
from regx.distributed import Ranks
from regx.engine import Tally, train_one_epoch
from regx.train import build

HEAVY = {("model", "vgg11_bn")}  # 130M parameters to initialize: the slow suite builds it
OPTIONS = [
    pytest.param(g, o, marks=pytest.mark.slow) if (g, o) in HEAVY else (g, o)
    for g in config.GROUPS
    for o in config.group_options(g)
]
EXTRA = {
    ("data", "imagefolder"): [f"data.path={Path(__file__).parent}"],  # any folder that exists
    ("experiment", "finetune_folder"): [f"data.path={Path(__file__).parent}"],
    **{("finetune", o): ["model=resnet18"] for o in ("linear_probe", "full", "gradual")},
}  # ImageNet weights


def test_every_group_has_options():
    for group in config.GROUPS:
        assert config.group_options(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize(
    "group,option", OPTIONS, ids=[f"{g}={o}" for g, o in (x.values if hasattr(x, "values") else x for x in OPTIONS)]
)
def test_option_composes_builds_and_trains_a_step(group, option):
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install 'regx[sweeps]'")
    cfg = config.compose(
        [
            "debug=smoke",
            "data.image_size=32",
            "data.n_train=800",
            "batch_size=8",
            f"{group}={option}",
            *EXTRA.get((group, option), []),
        ]
    )
    config.validate(cfg)
    if cfg.data.name != "shapes" or cfg.finetune.weights:  # loaders are tested on files in their formats in
        return  # test_data.py (presets of real data train on them in test_recipes.py), weights in test_finetune.py
    parts = build(cfg, torch.device("cpu"), Ranks())  # what a run builds from this option
    before = [p.detach().clone() for p in parts.model.parameters()]
    batches = iterate(parts.data.train, cfg.batch_size, device="cpu")
    r = train_one_epoch(parts.model, parts.step, [next(batches)], first_step=0, tally=Tally.zero(torch.device("cpu")))
    assert r.steps == 1 and math.isfinite(r.loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, parts.model.parameters()))  # it trained
    lrs = [parts.step.lr_at(s) for s in range(parts.steps * cfg.epochs)]
    assert all(0 <= lr <= cfg.lr * cfg.sched.max_lr_mult for lr in lrs)


def test_used_by_command_composes():
    cfg = config.compose(["aug=flip_rotate", "wd=1e-4"])
    assert cfg.aug.name == "flip_rotate" and cfg.aug.hflip.p == 0.5 and cfg.aug.rotate.degrees > 0
    assert cfg.wd == 1e-4


def test_a_list_of_aug_options_is_named_by_all_of_them(tmp_path):
    """aug.name labels runs (regx report --group-by aug, the trackers): a list used to be named by its
    last option, so 'aug=[crop_flip,erasing]' runs were grouped with 'aug=erasing' ones."""
    assert config.compose(["aug=[crop_flip,erasing]"]).aug.name == "[crop_flip,erasing]"
    assert config.compose(["experiment=fashion_mnist_1000"]).aug.name == "[crop_flip,erasing]"
    for option in config.group_options("aug"):  # each option's file adds itself
        assert config.compose([f"aug={option}"]).aug.name == option
    (tmp_path / "aug").mkdir()
    (tmp_path / "aug" / "mine.yaml").write_text("name: mine\nhflip:\n  p: 0.25\n")  # names itself
    assert config.compose(["aug=mine"], config_dir=str(tmp_path)).aug.name == "mine"
    (tmp_path / "aug" / "mine.yaml").write_text("hflip:\n  p: 0.25\n")
    assert config.compose(["aug=[flip,mine]"], config_dir=str(tmp_path)).aug.name == "flip"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["lrr=0.1"], "unknown config key 'lrr'; did you mean 'lr'?"),
        (["aug.rotate.degres=30"], "did you mean 'aug.rotate.degrees'?"),
        (["optim=adamw", "optim.lr=0.01"], "unknown config key 'optim.lr'; did you mean 'lr'?"),  # main: 'optim'
        (["optim.weight_decay=0.01"], "unknown config key 'optim.weight_decay'; did you mean 'wd'?"),
        (["aug=flip_rotat"], "unknown option aug=flip_rotat; did you mean 'flip_rotate'? (valid options: "),
        (["epochs=ten"], "epochs='ten' is invalid: must be of type integer"),
        (["channels_last=maybe"], "channels_last='maybe' is invalid: must be of type bool"),
        (["wd=-1"], "wd=-1.0 is invalid: must be >= 0"),
        (["lr=0"], "lr=0.0 is invalid: must be > 0"),
        (["epochs=0"], "epochs=0 is invalid: must be >= 1"),
        (["batch_size=0"], "batch_size=0 is invalid: must be >= 1"),
        (["dropout.p=1"], "dropout.p=1.0 is invalid: must be in [0, 1)"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5 is invalid: must be in (0, 1)"),
        (["device=gpu"], "device='gpu' is invalid: must be one of auto, cpu, cuda, cuda:N or mps"),
        (["precision=8"], "precision='8' is invalid"),
        (["compile_mode=fast"], "compile_mode='fast' is invalid: must be one of default, reduce-overhead, "),
        (["data.decode=device"], "data.decode='device' is not read by data=shapes: only data=imagefolder reads it"),
        (["aug=mixup", "compile_aug=true"], "compile_aug=True is invalid: compiles the per-image augmentation, and"),
        (["data=imagefolder"], "data.path is required for data=imagefolder"),
        (
            ["data=imagefolder", "data.path=/no/such/folder", "data.image_size=32"],
            "data.path=/no/such/folder: no such directory",
        ),
        (["aug=[all,flipp]"], "unknown option aug=flipp; did you mean 'flip'? (valid options: "),
        (["model.fc=3"], "model.fc=3 is invalid"),
        (["oops"], "cannot parse override 'oops'"),
        (["wd=0,-1"], "wd=-1.0 is invalid: must be >= 0"),  # a bad value inside a sweep fails up front
        # on main the model was built with 1 channel while config.yaml recorded 3
        (
            ["data=fashion_mnist", "data.channels=3"],
            "data.channels=3 is not read by data=fashion_mnist: only data=shapes",
        ),
        (["sched=cosine", "sched.gamma=0.5"], "sched.gamma=0.5 is not read by sched=cosine: only sched=step or "),
        # named at its default, it is as unread (main checked only values that differ from the default: exit 0)
        (["sched=cosine", "sched.gamma=0.1"], "sched.gamma=0.1 is not read by sched=cosine: only sched=step or "),
        (["finetune.backbone_lr_mult=0.1"], "finetune.backbone_lr_mult=0.1 is not read by finetune=scratch: only "),
        (  # an augmentation's setting while it is off: main trained without rotation, exit 0
            ["aug=flip", "aug.rotate.degrees=10"],
            "aug.rotate.degrees=10.0 is not read: aug.rotate.p is 0, so no image gets rotate; add aug.rotate.p (e.g. "
            "0.5) or an option that applies it (aug=all, aug=flip_rotate)",
        ),
        (["aug=none", "++aug.mixup.alpha=0.2"], "aug.mixup.alpha=0.2 is not read: aug.mixup.p is 0"),
        (["data=mnist", "tta=flip"], "tta='flip' is invalid: mirrors the images it evaluates, and a mirror changes"),
    ],
)
def test_bad_config_is_one_line(overrides, message):
    with pytest.raises(config.ConfigError) as err:
        errors.preflight(overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(("low", "high"), config.RANGES)
def test_each_ordered_pair_of_keys_is_refused_out_of_order(low, high):
    group = low.split(".")[1]
    option = {"erasing": "erasing", "scale": "scale_crop", "rrc": "rrc"}[group]
    with pytest.raises(config.ConfigError, match=rf"^{low}=0.9 is invalid: must be <= {high} \(0.5\)$"):
        errors.preflight([f"aug={option}", f"{low}=0.9", f"{high}=0.5"])


def test_a_sweep_refuses_a_setting_only_where_none_of_its_jobs_reads_it():
    """`-m optim=sgd,adamw optim.momentum=0.8` is meant for the SGD jobs (main refused the whole sweep, so
    the only way was two sweeps): the others are named in a warning. Where no job reads it, it is refused."""
    warnings = errors.preflight(["optim=sgd,adamw", "optim.momentum=0.8"])
    assert warnings == [
        "some jobs of this sweep do not read optim.momentum=0.8 (optim=adamw: only optim=sgd reads it); "
        "they run without it"
    ]
    assert errors.preflight(["aug=none,flip_rotate", "aug.rotate.degrees=20"]) == [
        "some jobs of this sweep do not read aug.rotate.degrees=20.0 (aug.rotate.p is 0, so no image gets rotate); "
        "they run without it"
    ]
    assert errors.preflight(["optim=sgd,adamw", "lr=0.1,0.01"]) == []
    for no_job_reads_it in (["optim=adam,adamw", "optim.momentum=0.8"], ["wd=0,1e-4", "sched.gamma=0.1"]):
        with pytest.raises(config.ConfigError, match="is not read by"):
            errors.preflight(no_job_reads_it)
    with pytest.raises(config.ConfigError, match="aug.rotate.p is 0"):
        errors.preflight(["aug=none,flip", "aug.rotate.degrees=10"])


def test_sweep_preview_covers_every_value():
    variants = errors.expand_sweep(["aug=none,flip", "wd=0,1e-4,1e-3", "epochs=2"])
    assert len(variants) == 4  # first combination + one per further value, not the 6 of the product
    flat = {o for v in variants for o in v}
    assert {"aug=none", "aug=flip", "wd=0", "wd=0.0001", "wd=0.001", "epochs=2"} <= flat


def test_the_config_reference_is_the_schemas():
    from regx import reference

    assert reference.written().read_text() == reference.render(), "docs/config.md is stale: run make docs"


def test_the_run_directory_reference_lists_every_metrics_column():
    from regx.files import METRIC_COLUMNS
    from regx.reference import written

    reliability = written().parent / "reliability.md"
    assert f"`{','.join(METRIC_COLUMNS)}`" in reliability.read_text(), "docs/reliability.md: metrics.csv columns"


def test_a_composed_config_is_reused_only_while_its_files_are_unchanged(tmp_path):
    """compose is memoized per process (a study composes the same configs again): what it returns is a
    copy, and a YAML file edited, added or removed in the -cd folder composes anew."""
    (tmp_path / "aug").mkdir()
    option = tmp_path / "aug" / "mine.yaml"
    option.write_text("name: mine\nhflip:\n  p: 0.25\n")
    first = config.compose(["aug=mine"], config_dir=str(tmp_path))
    assert first.aug.hflip.p == 0.25
    first.aug.hflip.p = 0.9  # the caller's copy
    assert config.compose(["aug=mine"], config_dir=str(tmp_path)).aug.hflip.p == 0.25
    option.write_text("name: mine\nhflip:\n  p: 0.75\n")  # the same size
    assert config.compose(["aug=mine"], config_dir=str(tmp_path)).aug.hflip.p == 0.75
    (tmp_path / "aug" / "other.yaml").write_text("name: other\n")
    assert config.compose(["aug=other"], config_dir=str(tmp_path)).aug.hflip.p == 0


@pytest.mark.parametrize(
    ("overrides", "cd"),
    [
        (  # a key set before its group, +/~, Hydra's node, a group at a package
            ["hydra.mode=MULTIRUN", "epochs=2", "aug.rotate.degrees=5", "aug=flip_rotate", "+notes.why=x", "~dropout"]
            + ["hydra.run.dir=/x", "+aug@notes.extra=flip", "epochs=4"],
            False,
        ),
        (["experiment=fashion_mnist_1000", "~data.train_size", "++wd=0.1", "dropout=none"], False),
        (["aug=mine", "aug.hflip.p=0.5", "seed=3"], True),  # a group option in the user's -cd folder
        (["+arm=wide", "epochs=3", "hydra.searchpath=[file://{tmp}/more]"], False),  # a group from the search path
        (["aug=nope"], True),  # Hydra's errors, word for word
        (["aug@extra=flip"], False),
        (["aug.nokey=1"], False),
        (["+epochs=3", "aug=none"], False),
        (["epochs=abc"], False),
    ],
)
def test_the_memoized_composition_is_hydras(overrides, cd, tmp_path):
    """compose memoizes the defaults list's config by the group overrides alone and sets the other
    overrides on a copy as Hydra does: the config and any error equal a whole composition by
    hydra.compose (cd: with the user's -cd folder on the search path; Hydra's node, its mode included,
    is compared by the test below)."""
    from omegaconf import OmegaConf

    (tmp_path / "aug").mkdir()
    (tmp_path / "aug" / "mine.yaml").write_text("name: mine\nhflip:\n  p: 0.25\n")
    (tmp_path / "more" / "arm").mkdir(parents=True)
    (tmp_path / "more" / "arm" / "wide.yaml").write_text("# @package _global_\nmodel:\n  channels: [64, 128]\n")
    overrides, config_dir = [o.format(tmp=tmp_path) for o in overrides], str(tmp_path) if cd else None

    def composed(how):
        try:
            if how == "hydra":
                cfg = config._without_hydra(
                    config._hydra_compose(overrides, config_dir, str(config.conf_dir()), "train")
                )
            else:
                cfg = config.compose(overrides, config_dir)
            return OmegaConf.to_yaml(cfg), OmegaConf.is_struct(cfg)
        except Exception as exc:
            return type(exc).__name__, str(exc)

    assert composed("memo") == composed("hydra")


@pytest.mark.parametrize(
    "overrides",
    [
        ["debug=smoke", "epochs=1", "hydra.output_subdir=null"],  # what regx train hands Hydra
        ["hydra.mode=MULTIRUN", "aug.rotate.degrees=5", "aug=flip_rotate", "+notes.why=x", "hydra.job.env_copy=[HOME]"],
        ["experiment=fashion_mnist_1000", "data.train_size=200", "hydra.run.dir=/x", "seed=3", "hydra.verbose=true"],
    ],
)
def test_the_config_hydras_launch_takes_from_the_memo_is_hydras_own(overrides, tmp_path, monkeypatch):
    """config.hydra_config, which Hydra's launch of a run takes instead of composing (twice), equals what
    Hydra.compose_config composes for the same overrides, Hydra's node included (its overrides lists,
    override_dirname, mode), in another working directory than the memo's."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    config.hydra_config(overrides)  # memoized here, served below from another directory
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(config.conf_dir()), version_base="1.3"):
        want = GlobalHydra.instance().hydra.compose_config("train", overrides, run_mode=RunMode.RUN)
    got = config.hydra_config(overrides)
    assert OmegaConf.to_container(got) == OmegaConf.to_container(want)
    assert got.hydra.runtime.cwd == str(tmp_path) and got.hydra.job.override_dirname == want.hydra.job.override_dirname


@pytest.mark.parametrize(
    ("setting", "switch", "message"),
    [
        ("early_stop.min_delta=0.01", "early_stop.patience=0", "early_stop.patience is 0, so no run stops early"),
        ("data.label_noise_kind=pairflip", "data.label_noise=0", "data.label_noise is 0, so no label is changed"),
        ("compile_mode=reduce-overhead", "compile=false", "compile is false, so nothing is compiled; add compile=true"),
        ("clip_mode=value", "clip_grad=0", "clip_grad is 0, so no gradient is clipped"),
        ("aug.color.hue=0.1", "aug.color.p=0", "aug.color.p is 0, so no image gets color"),
        (
            "diagnose.corrupt_severities=[3]",
            "diagnose.corrupt=[]",
            "diagnose.corrupt is empty, so nothing is corrupted",
        ),
    ],
)
def test_a_setting_of_something_switched_off_is_refused_unless_the_switch_is_named(setting, switch, message):
    """main trained with each of these settings unread and exited 0. A switch named too is deliberate
    (a path or sweep from 0: `regx path data.label_noise=0,0.2 data.label_noise_kind=pairflip`)."""
    with pytest.raises(config.ConfigError) as err:
        errors.preflight(["debug=smoke", setting])
    assert str(err.value).startswith(f"{setting.split('=')[0]}=") and message in str(err.value)
    errors.preflight(["debug=smoke", setting, switch])


def test_smallcnns_layers_are_refused_for_another_model_and_its_option_brings_what_it_may():
    with pytest.raises(config.ConfigError, match=r"model.channels=\[8, 16\] is not read: it shapes model=smallcnn"):
        errors.preflight(["model=resnet18", "model.channels=[8,16]"])
    with pytest.raises(config.ConfigError, match="model.small_input=True is not read: it swaps a ResNet's stem"):
        errors.preflight(["model.small_input=true"])
    with pytest.raises(config.ConfigError, match="sched.restart=True is not read: a new run starts its schedule"):
        errors.preflight(["sched.restart=true"])
    errors.preflight(["debug=smoke", "model=resnet18"])  # debug=smoke's own smallcnn widths are not named
    for p in ("0", "0.5"):  # aug=flip_rotate's file sets the degrees: rotation off keeps them
        errors.preflight(["aug=flip_rotate", f"aug.rotate.p={p}"])

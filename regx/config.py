"""Config schema, Hydra registration, and the checks that turn bad input into one clear line.

Every config group option is YAML that fills one dataclass below; the dataclass is the single home
of every default. `TrainConfig` is registered with Hydra's ConfigStore as `train_schema` and sits
first in conf/train.yaml's defaults list, so a wrong type or an unknown key fails at composition.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad configuration value: the message is one line naming the key, the value and the rule."""


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data"  # downloads and caches
    download: bool = True
    path: str | None = None  # imagefolder: the folder of class subfolders
    image_size: int | None = None  # null: the data's own size
    channels: int = 3  # shapes only; other sets have their own
    num_classes: int = 10  # shapes only
    n_train: int = 12000  # shapes only: training pool (validation is carved from it)
    n_test: int = 2000  # shapes only
    val_fraction: float = 0.1  # carved from training data when the set has no validation split
    train_size: int | None = None  # train on a stratified subset of this many images
    seed: int = 0  # data generation and split seed, independent of the run's seed
    mean: list[float] | None = None  # null: measured on the training split
    std: list[float] | None = None
    stream: bool | None = None  # null: stream only when the decoded set exceeds max_memory_gb
    max_memory_gb: float = 4.0
    workers: int = 2  # decoding workers when streaming
    on_bad_image: str = "error"  # error | skip


@dataclass
class ModelConfig:
    name: str = MISSING
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # smallcnn conv blocks
    convs_per_block: int = 2
    fc: list[int] = field(default_factory=lambda: [256])  # smallcnn hidden fully connected layers
    small_input: bool = False  # torchvision ResNets: 3x3 stride-1 stem, no max-pool (CIFAR style)


@dataclass
class OptimConfig:
    name: str = MISSING  # sgd | adamw | adam
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class FlipConfig:
    p: float = 0.0


@dataclass
class RotateConfig:
    p: float = 0.0
    degrees: float = 0.0  # uniform in [-degrees, degrees]


@dataclass
class ScaleConfig:
    p: float = 0.0
    min: float = 1.0
    max: float = 1.0


@dataclass
class TranslateConfig:
    p: float = 0.0
    fraction: float = 0.0  # shift up to this fraction of the image size in x and y


@dataclass
class CropConfig:
    p: float = 0.0
    pad: int = 0  # CIFAR-style: pad by this many pixels (zeros), crop back at a random position


@dataclass
class ColorConfig:
    p: float = 0.0
    brightness: float = 0.0  # factor uniform in [1-b, 1+b]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # shift uniform in [-hue, hue], in turns (0.5 = 180 degrees)


@dataclass
class ErasingConfig:
    p: float = 0.0
    area_min: float = 0.02  # erased fraction of the image, uniform in [area_min, area_max]
    area_max: float = 0.33
    ratio: float = 3.3  # aspect ratio log-uniform in [1/ratio, ratio]


@dataclass
class MixConfig:
    p: float = 0.0  # fraction of samples mixed
    alpha: float = 1.0  # mixing weight ~ Beta(alpha, alpha)


@dataclass
class AugConfig:
    name: str = MISSING
    hflip: FlipConfig = field(default_factory=FlipConfig)
    vflip: FlipConfig = field(default_factory=FlipConfig)
    rotate: RotateConfig = field(default_factory=RotateConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    color: ColorConfig = field(default_factory=ColorConfig)
    erasing: ErasingConfig = field(default_factory=ErasingConfig)
    mixup: MixConfig = field(default_factory=MixConfig)
    cutmix: MixConfig = field(default_factory=MixConfig)


@dataclass
class DropoutConfig:
    name: str = MISSING
    p: float = 0.0  # probability of DROPPING a unit (as nn.Dropout), before each fully connected layer
    conv_p: float = 0.0  # nn.Dropout2d after each conv block
    features: bool = False  # smallcnn: also drop the pooled conv features entering the first FC layer
    mc_samples: int = 0  # >0: also evaluate the test set with dropout on, averaging this many passes


@dataclass
class DecayConfig:
    name: str = MISSING  # l2 | decoupled | l1; the strength is the top-level `wd`
    exclude: list[str] = field(default_factory=lambda: ["bias", "norm"])


@dataclass
class SchedConfig:
    name: str = MISSING
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # cosine floor, as an absolute learning rate
    step_epochs: float = 30.0  # step
    gamma: float = 0.1  # step, multistep, exponential (per epoch)
    milestones: list[float] = field(default_factory=list)  # multistep, in epochs
    max_lr_mult: float = 10.0  # onecycle peak = lr * max_lr_mult
    pct_start: float = 0.3  # onecycle
    factor: float = 0.1  # plateau
    patience: int = 5  # plateau


@dataclass
class FinetuneConfig:
    name: str = MISSING  # scratch | linear_probe | full | gradual
    weights: str | None = None  # imagenet | a regx run directory | a checkpoint or state-dict file
    freeze: list[str] = field(default_factory=list)  # module/parameter name patterns kept frozen
    bn: str = "train"  # frozen: BatchNorm layers whose parameters are frozen stay in eval mode
    backbone_lr_mult: float = 0.1  # the backbone's learning rate, relative to the head's
    unfreeze_epoch: int = 3  # gradual: epochs of head-only training before the backbone unfreezes
    stages: int = 1  # gradual: unfreeze the backbone in this many steps, from the top
    stage_epochs: int = 1  # gradual: epochs between those steps


@dataclass
class DiagnoseConfig:
    clean_train: bool = True  # also evaluate a fixed training subset in eval mode, without augmentation
    clean_size: int = 2000  # images in that subset (at most the training set)


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # also checkpoint every N optimizer steps within an epoch; 0: at epoch ends only


@dataclass
class EarlyStopConfig:
    patience: int = 0  # stop after this many epochs without a new best validation accuracy; 0: off
    min_delta: float = 0.0  # an improvement must exceed this much accuracy (0.001 = 0.1 points)


@dataclass
class TrainConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    aug: AugConfig = MISSING
    dropout: DropoutConfig = MISSING
    decay: DecayConfig = MISSING
    sched: SchedConfig = MISSING
    finetune: FinetuneConfig = MISSING
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    epochs: int = 12
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 0.05
    wd: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | 32 | bf16 | 16
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode; reduce-overhead adds CUDA graphs on GPUs
    name: str = "${model.name}_${data.name}"
    progress_every: int = 25  # steps between progress-bar refreshes (each one reads metrics back)
    logger: str = "none"  # none | tensorboard (event files in <run>/tensorboard/)


AUG_OPS = ("hflip", "vflip", "rotate", "scale", "translate", "crop", "color", "erasing", "mixup", "cutmix")
GROUPS = ("data", "model", "optim", "aug", "dropout", "decay", "sched", "finetune", "experiment", "debug",
          "hparams_search")
# Optional Hydra plugins (pip install 'regx[sweeps]'): an override naming one -> the module it needs.
PLUGINS = {"hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
           "hydra/launcher=submitit": "hydra_plugins.hydra_submitit_launcher",
           "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
           "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper",
           "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper"}
CHOICES = {  # key: (pattern, what to tell the user)
    "device": (r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps"),
    "precision": (r"auto|32|bf16|16", "auto, 32, bf16 or 16"),
    "data.on_bad_image": (r"error|skip", "error or skip"),
    "optim.name": (r"sgd|adamw|adam", "sgd, adamw or adam"),
    "decay.name": (r"l2|decoupled|l1", "l2, decoupled or l1"),
    "finetune.bn": (r"train|frozen", "train or frozen"),
    "finetune.name": (r"scratch|linear_probe|full|gradual", "scratch, linear_probe, full or gradual"),
    "logger": (r"none|tensorboard", "none or tensorboard"),
    "compile_mode": (r"default|reduce-overhead|max-autotune|max-autotune-no-cudagraphs",
                     "default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs"),
}


def conf_dir() -> Path:
    """The config tree: conf/ beside the package in a checkout, regx/conf inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"regx's config tree (conf/train.yaml) was not found near {here}")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _slug(text: str, limit: int = 120) -> str:
    text = re.sub(r"[^A-Za-z0-9=,.+_-]+", "_", str(text)).strip("_")
    return text[:limit] or "run"


last_claimed: str | None = None  # the directory _claim_dir made last (a sweep's, for its summary)


def _claim_dir(root: str, name: str) -> str:
    """Create `root/<stamp>_<name>` atomically; a suffix keeps two runs started together apart."""
    global last_claimed
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(root) / f"{stamp}_{_slug(name)}" if name else Path(root) / stamp
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
            last_claimed = str(path)
            return last_claimed
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique directory under {root}")


_registered = False


def register() -> None:
    """Register the schema and regx's resolvers with Hydra/OmegaConf (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    # use_cache: Hydra copies the cache into each sweep job's config, so a directory is claimed once.
    OmegaConf.register_new_resolver("regx_dir", _claim_dir, use_cache=True)
    OmegaConf.register_new_resolver("regx_slug", _slug)
    _registered = True


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose conf/train.yaml with overrides, as `regx train` would (no run directory is made)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig | dict):
            keys.extend(flat_keys(v, full + "."))
    return keys


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}")


def validate(cfg: DictConfig) -> None:
    """Range checks run after composition and before any data is loaded."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        hint = " (data=imagefolder needs the folder of images)" if key == "data.path" else ""
        raise ConfigError(f"{key} is required but has no value{hint}: add {key}=...")
    for key, (pattern, allowed) in CHOICES.items():
        value = str(OmegaConf.select(cfg, key))
        _check(re.fullmatch(pattern, value) is not None, key, value, f"must be one of {allowed}")
    c = cfg
    _check(c.epochs >= 1, "epochs", c.epochs, "must be >= 1")
    _check(c.batch_size >= 1, "batch_size", c.batch_size, "must be >= 1")
    _check(c.eval_batch_size >= 1, "eval_batch_size", c.eval_batch_size, "must be >= 1")
    _check(c.lr > 0, "lr", c.lr, "must be > 0")
    _check(c.wd >= 0, "wd", c.wd, "must be >= 0")
    _check(0 <= c.label_smoothing < 1, "label_smoothing", c.label_smoothing, "must be in [0, 1)")
    _check(c.diagnose.clean_size >= 1, "diagnose.clean_size", c.diagnose.clean_size, "must be >= 1")
    _check(c.checkpoint.every_steps >= 0, "checkpoint.every_steps", c.checkpoint.every_steps, "must be >= 0 (0: epoch ends only)")
    _check(c.early_stop.patience >= 0, "early_stop.patience", c.early_stop.patience, "must be >= 0 (0: off)")
    _check(0 <= c.early_stop.min_delta < 1, "early_stop.min_delta", c.early_stop.min_delta, "must be in [0, 1)")
    if c.logger == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install 'regx[tensorboard]'")
    _check(c.progress_every >= 1, "progress_every", c.progress_every, "must be >= 1")
    _check(0 <= c.dropout.p < 1, "dropout.p", c.dropout.p, "must be in [0, 1) (the probability of dropping)")
    _check(0 <= c.dropout.conv_p < 1, "dropout.conv_p", c.dropout.conv_p, "must be in [0, 1)")
    d = c.data
    _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _check(d.train_size is None or d.train_size >= 1, "data.train_size", d.train_size, "must be >= 1 or null")
    _check(d.image_size is None or 8 <= d.image_size <= 1024, "data.image_size", d.image_size, "must be in [8, 1024] or null")
    _check(d.channels in (1, 3), "data.channels", d.channels, "must be 1 or 3")
    _check(2 <= d.num_classes <= 10, "data.num_classes", d.num_classes, "must be in [2, 10] for data=shapes")
    _check(d.n_train >= 10, "data.n_train", d.n_train, "must be >= 10")
    _check(d.n_test >= 0, "data.n_test", d.n_test, "must be >= 0")
    _check(d.workers >= 0, "data.workers", d.workers, "must be >= 0")
    _check(d.max_memory_gb > 0, "data.max_memory_gb", d.max_memory_gb, "must be > 0")
    for key in ("mean", "std"):
        v = d[key]
        _check(v is None or len(v) in (1, 3), f"data.{key}", v, "must list 1 or 3 numbers, or be null")
    _check(d.std is None or all(s > 0 for s in d.std), "data.std", d.std, "every entry must be > 0")
    m = c.model
    _check(len(m.channels) >= 1 and all(ch >= 1 for ch in m.channels), "model.channels", list(m.channels), "must list positive widths")
    _check(m.convs_per_block >= 1, "model.convs_per_block", m.convs_per_block, "must be >= 1")
    _check(all(h >= 1 for h in m.fc), "model.fc", list(m.fc), "must list positive widths")
    _check(c.optim.momentum >= 0, "optim.momentum", c.optim.momentum, "must be >= 0")
    for name in AUG_OPS:
        p = c.aug[name].p
        _check(0 <= p <= 1, f"aug.{name}.p", p, "must be in [0, 1]")
    a = c.aug
    _check(a.crop.pad >= 0, "aug.crop.pad", a.crop.pad, "must be >= 0 pixels")
    _check(0 < a.erasing.area_min <= a.erasing.area_max < 1, "aug.erasing.area_min", a.erasing.area_min,
           f"must be > 0 and <= aug.erasing.area_max ({a.erasing.area_max}) < 1")
    _check(a.erasing.ratio >= 1, "aug.erasing.ratio", a.erasing.ratio, "must be >= 1")
    for name in ("mixup", "cutmix"):
        _check(a[name].alpha > 0, f"aug.{name}.alpha", a[name].alpha, "must be > 0")
    _check(a.mixup.p + a.cutmix.p <= 1, "aug.cutmix.p", a.cutmix.p, f"aug.mixup.p + aug.cutmix.p must be <= 1 (mixup.p={a.mixup.p})")
    _check(c.dropout.mc_samples >= 0, "dropout.mc_samples", c.dropout.mc_samples, "must be >= 0")
    _check(c.dropout.mc_samples == 0 or c.dropout.p > 0 or c.dropout.conv_p > 0, "dropout.mc_samples",
           c.dropout.mc_samples, "needs dropout in the model (dropout=fc, conv or both)")
    _check(0 < a.scale.min <= a.scale.max, "aug.scale.min", a.scale.min, f"must be > 0 and <= aug.scale.max ({a.scale.max})")
    _check(0 <= a.translate.fraction <= 0.5, "aug.translate.fraction", a.translate.fraction, "must be in [0, 0.5]")
    _check(a.rotate.degrees >= 0, "aug.rotate.degrees", a.rotate.degrees, "must be >= 0")
    for name in ("brightness", "contrast", "saturation"):
        _check(0 <= a.color[name] <= 1, f"aug.color.{name}", a.color[name], "must be in [0, 1]")
    _check(0 <= a.color.hue <= 0.5, "aug.color.hue", a.color.hue, "must be in [0, 0.5]")
    s = c.sched
    _check(s.warmup_epochs >= 0, "sched.warmup_epochs", s.warmup_epochs, "must be >= 0")
    _check(0 <= s.min_lr <= c.lr, "sched.min_lr", s.min_lr, f"must be in [0, lr={c.lr}]")
    _check(s.step_epochs > 0, "sched.step_epochs", s.step_epochs, "must be > 0")
    _check(0 < s.gamma <= 1, "sched.gamma", s.gamma, "must be in (0, 1]")
    _check(0 < s.pct_start < 1, "sched.pct_start", s.pct_start, "must be in (0, 1)")
    _check(s.max_lr_mult >= 1, "sched.max_lr_mult", s.max_lr_mult, "must be >= 1")
    _check(0 < s.factor < 1, "sched.factor", s.factor, "must be in (0, 1)")
    _check(s.patience >= 0, "sched.patience", s.patience, "must be >= 0")
    f = c.finetune
    _check(f.backbone_lr_mult >= 0, "finetune.backbone_lr_mult", f.backbone_lr_mult, "must be >= 0")
    _check(f.unfreeze_epoch >= 0, "finetune.unfreeze_epoch", f.unfreeze_epoch, "must be >= 0")
    _check(f.stages >= 1, "finetune.stages", f.stages, "must be >= 1")
    _check(f.stage_epochs >= 1, "finetune.stage_epochs", f.stage_epochs, "must be >= 1")
    if f.name == "scratch" and f.weights:
        raise ConfigError(f"finetune.weights={f.weights} is set but finetune=scratch starts from random weights: "
                          "use finetune=full, linear_probe or gradual")
    if f.name != "scratch" and not f.weights:
        raise ConfigError(f"finetune={f.name} needs finetune.weights: imagenet, a regx run directory or a weights file")
    if f.weights == "imagenet" and c.model.name == "smallcnn":
        raise ConfigError("finetune.weights=imagenet: smallcnn has no ImageNet weights; pretrain it with a regx run "
                          "and pass its directory (finetune.weights=outputs/runs/<run>), or pick a torchvision model")
    if f.weights and f.weights != "imagenet" and not Path(f.weights).expanduser().exists():
        raise ConfigError(f"finetune.weights={f.weights}: no such file or directory")
    if d.name == "imagefolder":
        if not d.path:
            raise ConfigError("data.path is required for data=imagefolder: add data.path=/path/to/images")
        if not Path(d.path).expanduser().is_dir():  # before a run directory is made for it
            raise ConfigError(f"data.path={d.path}: no such directory")
        _check(d.image_size is not None, "data.image_size", d.image_size, "data=imagefolder needs an image size")


# ---------------------------------------------------------------------------------------------
# Turning Hydra/OmegaConf exceptions into one line.


def _closest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def explain(exc: BaseException, overrides: list[str]) -> str:
    """One line for a composition error: the key, the value given, and what would be valid."""
    chain = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    m = re.search(r"Could not (?:find|load) '([^/']+)/([^']+)'", text)  # load: an option inside a list
    if m:
        group, option = m.groups()
        options = group_options(group)
        if options:
            return f"unknown option {group}={option}{_closest(option, options)} (valid options: {', '.join(options)})"
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' (?:is )?not in", text)
    if m and re.search(r"not in struct|not in '|Could not append", text):
        key = m.group(1)
        full = re.search(r"full_key: (\S+)", text)
        key = full.group(1) if full else key
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            known = flat_keys(compose(rest))
        except Exception:
            known = flat_keys(compose())
        return f"unknown config key '{key}'{_closest(key, known)}"
    m = re.search(r"Value '([^']*)' (?:of type '[^']*' )?(?:could not be converted to|is not a valid) (\w+)", text)
    if m:
        full = re.search(r"full_key: (\S+)", text)
        key = full.group(1) if full else "?"
        return f"{key}={m.group(1)!r} is invalid: must be of type {m.group(2).lower()}"
    m = re.search(r"Error merging override (\S+)", text)
    if m and len(chain) > 1:
        detail = str(chain[1]).strip().splitlines()[0].replace("Invalid value assigned: ", "")
        return f"{m.group(1)} is invalid: {detail}"
    m = re.search(r"Error parsing override '([^']+)'", text)
    if m:
        return f"cannot parse override '{m.group(1)}': expected key=value (see `regx train --help`)"
    return first


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Override lists that together use every value of every sweep: a fail-fast preview of a sweep.

    The first variant takes each sweep's first value; each further variant changes one sweep to one
    other value, so N sweep values cost about N compositions rather than their product.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(explain(exc, overrides)) from exc
    fixed, sweeps = [], []
    for o in parsed:
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # intervals and globs are the sweeper's business
                continue
            sweeps.append((o.get_key_element(), values))
        else:
            fixed.append(o.input_line)
    first = [f"{k}={v[0]}" for k, v in sweeps]
    variants = [fixed + first]
    for i, (k, values) in enumerate(sweeps):
        for v in values[1:]:
            variant = list(first)
            variant[i] = f"{k}={v}"
            variants.append(fixed + variant)
    return variants


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_plugins(overrides: list[str]) -> None:
    """A clear line when an override names a Hydra plugin that is not installed."""
    for o in overrides:
        for prefix, module in PLUGINS.items():
            if o.lstrip("+~").startswith(prefix) and not _installed(module):
                plugin = module.split(".")[-1].replace("_", "-")
                raise ConfigError(f"{o} needs the {plugin} plugin: pip install 'regx[sweeps]'")


def preflight(overrides: list[str]) -> None:
    """Compose and check every value the overrides name; raise ConfigError with one line."""
    check_plugins(overrides)
    for variant in expand_sweep(overrides):
        try:
            cfg = compose(variant)
        except ConfigError:
            raise
        except Exception as exc:  # Hydra and OmegaConf raise many kinds; all mean bad input here
            raise ConfigError(explain(exc, variant)) from exc
        try:
            validate(cfg)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(explain(exc, variant)) from exc


def debug_enabled() -> bool:
    return os.environ.get("REGX_DEBUG", "") not in ("", "0")

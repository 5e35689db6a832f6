"""The config schema: one dataclass per group, the single home of every default and every range.

Each config group option is YAML that fills one dataclass below. `TrainConfig` is registered with
Hydra's ConfigStore as `train_schema` and sits first in conf/train.yaml's defaults list, so a wrong
type or an unknown key fails at composition. A field's allowed values are written once, beside its
default, as field metadata (`num(...)`, `choice(...)`); `validate` checks them all in one loop, then
the few rules that tie two keys together.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib.util
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict


class ConfigError(ValueError):
    """A bad configuration value: the message is one line naming the key, the value and the rule."""


_INTERVAL = re.compile(
    r"(?P<lo>[\[(])\s*(?P<a>[-\d.e]+)\s*,\s*(?P<b>[-\d.e]+)\s*(?P<hi>[\])])|(?P<op>>=|>|<=|<)\s*(?P<v>[-\d.e]+)"
)


def num(default: Any, allowed: str, note: str = "", min_items: int = 0, by: str = ""):
    """A number (or each number of a list, or null) in `allowed`: "[0, 1)", ">= 1", "> 0", ...; `by`:
    the group's options that read it ("a|b"), where not every option does (see `only`)."""
    if not _INTERVAL.fullmatch(allowed):
        raise ValueError(f"bad interval {allowed!r}")
    meta = {"interval": allowed, "note": note, "min_items": min_items, **({"by": by} if by else {})}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def choice(default: Any, options: str, shown: str | None = None, by: str = ""):
    """One of `options` ("a|b|c", a regular expression); `shown` says it in words where it is one."""
    words = shown or ", ".join(options.split("|")[:-1]) + " or " + options.split("|")[-1]
    return field(default=default, metadata={"pattern": options, "shown": words, **({"by": by} if by else {})})


def only(by: str, default: Any):
    """A key that only the group's options `by` ("a|b") read: set to anything but its default under
    another option, it is refused (validate), never silently ignored."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"by": by})
    return field(default=default, metadata={"by": by})


def _within(value: float, allowed: str) -> bool:
    m = _INTERVAL.fullmatch(allowed)
    if m["op"]:
        v = float(m["v"])
        return {">=": value >= v, ">": value > v, "<=": value <= v, "<": value < v}[m["op"]]
    a, b = float(m["a"]), float(m["b"])
    return (value >= a if m["lo"] == "[" else value > a) and (value <= b if m["hi"] == "]" else value < b)


def _rule(allowed: str) -> str:
    return f"must be {allowed}" if allowed[0] in "<>" else f"must be in {allowed}"


@dataclass
class DataConfig:
    name: str = MISSING  # the option's name: shapes, mnist, fashion_mnist, cifar10, cifar100, imagefolder
    root: str = "data"  # downloads and caches
    download: bool = True  # torchvision sets: download into root when the files are not there
    path: str | None = None  # imagefolder: the folder of class subfolders
    image_size: int | None = num(None, "[8, 1024]", "or null")  # null: the data's own size
    channels: int | None = choice(None, "1|3", by="shapes")  # shapes only (3 unless set); other sets have their own
    num_classes: int = num(10, "[2, 10]", "for data=shapes")  # shapes only
    n_train: int = num(12000, ">= 10")  # shapes only: training pool (validation is carved from it)
    n_test: int = num(2000, ">= 0")  # shapes only
    val_fraction: float = num(0.1, "(0, 1)")  # carved from training data when the set has no validation split
    train_size: int | None = num(None, ">= 1", "or null")  # train on a stratified subset of this many images
    seed: int = 0  # data generation and split seed, independent of the run's seed
    mean: list[float] | None = None  # null: measured on the training split (streamed: on 4,096 of its images)
    std: list[float] | None = num(None, "> 0", "(every entry)")  # null: as mean
    stream: bool | None = None  # null: stream only when the decoded set exceeds max_memory_gb
    max_memory_gb: float = num(4.0, "> 0")  # a folder larger than this decoded streams from disk
    workers: int = num(2, ">= 0")  # decoding workers when streaming
    # imagefolder: where files become pixels: pil (Pillow in the workers), cpu (TorchCodec's or torchvision's
    # JPEG decoder in the workers), device (the workers read JPEGs' bytes; each batch is decoded together
    # on the training device, nvJPEG on CUDA); other formats, rotated or CMYK JPEGs always go through Pillow
    decode: str = choice("pil", "pil|cpu|device", by="imagefolder")
    # an image that does not decode: stop with the list (error) or leave it out (skip)
    on_bad_image: str = choice("error", "error|skip")
    # this fraction of the training labels made wrong on purpose, with the data seed (never validation or test):
    # to another class drawn uniformly (symmetric) or to the next class (pairflip); see the memorization columns
    label_noise: float = num(0.0, "[0, 1)")
    label_noise_kind: str = choice("symmetric", "symmetric|pairflip")
    # whether a left-right mirror keeps an image's class (clothing: yes; digits and text: no): the verdict's
    # remedies propose mirroring transforms only where it does
    mirror: bool = True


@dataclass
class ModelConfig:
    name: str = MISSING  # smallcnn, a torchvision model's name, or (zoo=timm) a timm model's
    channels: list[int] = num([32, 64, 128], ">= 1", "(positive widths)", min_items=1)  # smallcnn conv blocks
    convs_per_block: int = num(2, ">= 1")  # smallcnn: conv-BN-ReLU layers per block
    fc: list[int] = num([256], ">= 1", "(positive widths)")  # smallcnn hidden fully connected layers
    small_input: bool = False  # torchvision ResNets: 3x3 stride-1 stem, no max-pool (CIFAR style)
    zoo: str = choice("torchvision", "torchvision|timm")  # where model.name is found (smallcnn is regx's own)
    # Stochastic depth: the rate of dropping a residual branch, rising linearly with depth to this value
    # (timm's drop_path_rate; torchvision's stochastic_depth_prob). null: the model's own default.
    drop_path: float | None = num(None, "[0, 1)", "or null")


@dataclass
class OptimConfig:
    name: str = choice(MISSING, "sgd|adamw|adam")  # the optimizer; its learning rate is the top-level lr
    momentum: float = num(0.9, ">= 0", by="sgd")  # sgd
    nesterov: bool = only("sgd", True)  # sgd
    betas: list[float] = only("adam|adamw", [0.9, 0.999])  # adam, adamw
    eps: float = only("adam|adamw", 1e-8)  # adam, adamw


@dataclass
class FlipConfig:
    p: float = num(0.0, "[0, 1]")  # the chance an image is flipped


@dataclass
class RotateConfig:
    p: float = num(0.0, "[0, 1]")  # the chance an image is rotated
    degrees: float = num(0.0, ">= 0")  # uniform in [-degrees, degrees]


@dataclass
class ScaleConfig:
    p: float = num(0.0, "[0, 1]")  # the chance an image is rescaled
    min: float = num(1.0, "> 0")  # factor uniform in [min, max] (> 1 zooms in)
    max: float = num(1.0, "> 0")


@dataclass
class TranslateConfig:
    p: float = num(0.0, "[0, 1]")  # the chance an image is shifted
    fraction: float = num(0.0, "[0, 0.5]")  # shift up to this fraction of the image size in x and y


@dataclass
class CropConfig:
    p: float = num(0.0, "[0, 1]")  # the chance an image is padded and cropped
    pad: int = num(0, ">= 0", "pixels")  # CIFAR-style: pad by this many pixels (zeros), crop back at a random position


@dataclass
class RRCConfig:
    """torchvision's RandomResizedCrop: a crop of a random area and aspect ratio, resized to the image size."""

    p: float = num(0.0, "[0, 1]")  # the chance an image is cropped (torchvision's transform: always)
    scale_min: float = num(0.08, "(0, 1]")  # the crop's area, a fraction of the image's, uniform in [min, max]
    scale_max: float = num(1.0, "(0, 1]")
    ratio_min: float = num(3 / 4, "> 0")  # its aspect ratio (width/height), log-uniform in [min, max]
    ratio_max: float = num(4 / 3, "> 0")


@dataclass
class ColorConfig:
    p: float = num(0.0, "[0, 1]")  # the chance an image's colour changes (all four factors together)
    brightness: float = num(0.0, "[0, 1]")  # factor uniform in [1-b, 1+b]
    contrast: float = num(0.0, "[0, 1]")  # factor uniform in [1-c, 1+c]
    saturation: float = num(0.0, "[0, 1]")  # factor uniform in [1-s, 1+s] (RGB only)
    hue: float = num(0.0, "[0, 0.5]")  # shift uniform in [-hue, hue], in turns (0.5 = 180 degrees)


@dataclass
class ErasingConfig:
    p: float = num(0.0, "[0, 1]")  # the chance an image gets one erased box, filled with noise
    area_min: float = num(0.02, "(0, 1)")  # erased fraction of the image, uniform in [area_min, area_max]
    area_max: float = num(0.33, "(0, 1)")
    ratio: float = num(3.3, ">= 1")  # aspect ratio log-uniform in [1/ratio, ratio]


@dataclass
class MixConfig:
    p: float = num(0.0, "[0, 1]")  # fraction of samples mixed
    alpha: float = num(1.0, "> 0")  # mixing weight ~ Beta(alpha, alpha)


@dataclass
class TrivialAugmentConfig:
    """TrivialAugment (Müller & Hutter 2021; torchvision's TrivialAugmentWide): one operation of 14 per
    image, its magnitude bin drawn uniformly."""

    p: float = num(0.0, "[0, 1]")  # the chance an image gets the policy (torchvision's transform: always)
    bins: int = num(31, ">= 2")  # magnitude bins (torchvision's num_magnitude_bins)


@dataclass
class RandAugmentConfig:
    """RandAugment (Cubuk et al. 2020; torchvision's RandAugment): `num_ops` operations per image, each
    at magnitude bin `magnitude` of `bins`."""

    p: float = num(0.0, "[0, 1]")  # the chance an image gets the policy
    num_ops: int = num(2, ">= 1")  # operations per image
    magnitude: int = num(9, ">= 0", "(a bin: below aug.randaugment.bins)")  # every operation's magnitude bin
    bins: int = num(31, ">= 2")  # magnitude bins


@dataclass
class AutoAugmentConfig:
    """AutoAugment (Cubuk et al. 2019; torchvision's AutoAugment): one of the policy's 25 learned
    sub-policies per image, two operations each with its own probability and magnitude."""

    p: float = num(0.0, "[0, 1]")  # the chance an image gets the policy
    policy: str = choice("imagenet", "imagenet|cifar10|svhn")  # whose learned sub-policies


@dataclass
class AugMixConfig:
    """AugMix (Hendrycks et al. 2020; torchvision's AugMix): `width` chains of 1 to 3 operations
    (`depth`, 0: drawn per chain and image) at a magnitude bin below `severity` of 10, mixed with
    Dirichlet(`alpha`) weights and blended with the image by a Beta(`alpha`, `alpha`) weight."""

    p: float = num(0.0, "[0, 1]")  # the chance an image is replaced by its AugMix
    severity: int = num(3, "[1, 10]")  # magnitude bins drawn below this (of 10)
    width: int = num(3, "[1, 10]")  # chains mixed
    depth: int = num(0, "[0, 10]", "(0: 1 to 3 operations, drawn per chain)")  # operations per chain
    alpha: float = num(1.0, "> 0")  # Dirichlet and Beta concentration of the mixing weights
    all_ops: bool = True  # False: no brightness, colour, contrast or sharpness (the paper's ImageNet-C-safe set)
    # > 0: train on the clean image and two AugMix views (3x the forward pass) with this weight on the
    # Jensen-Shannon consistency loss between their predictions (the paper's and timm's: 12)
    jsd: float = num(0.0, ">= 0")


def aug_name(options) -> str:
    """aug.name: the option, or the list of options merged in order ('[crop_flip,erasing]', as typed)."""
    names = list(options)
    return names[0] if len(names) == 1 else f"[{','.join(names)}]" if names else "custom"


if not OmegaConf.has_resolver("regx_aug_name"):
    OmegaConf.register_new_resolver("regx_aug_name", aug_name)


@dataclass
class AugConfig:
    # the option, or the options a list merges ('aug=[crop_flip,mixup]'), made from `options`
    name: str = "${regx_aug_name:${.options}}"
    options: dict[str, bool] = field(default_factory=dict)  # each option's file adds itself, in order
    hflip: FlipConfig = field(default_factory=FlipConfig)
    vflip: FlipConfig = field(default_factory=FlipConfig)
    rotate: RotateConfig = field(default_factory=RotateConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    rrc: RRCConfig = field(default_factory=RRCConfig)
    color: ColorConfig = field(default_factory=ColorConfig)
    erasing: ErasingConfig = field(default_factory=ErasingConfig)
    mixup: MixConfig = field(default_factory=MixConfig)
    cutmix: MixConfig = field(default_factory=MixConfig)
    trivialaugment: TrivialAugmentConfig = field(default_factory=TrivialAugmentConfig)
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)
    autoaugment: AutoAugmentConfig = field(default_factory=AutoAugmentConfig)
    augmix: AugMixConfig = field(default_factory=AugMixConfig)


# the aug options applied to each image with its own parameters (regx/augment.py's OPS; compile_aug compiles them)
PER_IMAGE_OPS = ("hflip", "vflip", "rotate", "scale", "translate", "crop", "rrc", "color", "erasing")


@dataclass
class DropoutConfig:
    name: str = MISSING  # none, fc, conv or both
    # the probability of DROPPING a unit (as nn.Dropout), before each fully connected layer
    p: float = num(0.0, "[0, 1)", "(the probability of dropping)", by="fc|both")
    conv_p: float = num(0.0, "[0, 1)", by="conv|both")  # nn.Dropout2d after each conv block
    features: bool = only("fc|both", False)  # smallcnn: also drop the pooled conv features entering the first FC layer
    # >0: also evaluate the test set with dropout on, averaging this many passes (MC dropout)
    mc_samples: int = num(0, ">= 0", by="fc|conv|both")


@dataclass
class DecayConfig:
    name: str = choice(MISSING, "l2|decoupled|l1")  # the strength is the top-level `wd`
    # Kept out of the decay, as timm's param_groups_weight_decay: 1d (every parameter with at most one dimension,
    # and every bias), no_weight_decay (the model's own list), bias, norm (norm layers), or name patterns
    exclude: list[str] = field(default_factory=lambda: ["1d", "no_weight_decay"])


@dataclass
class SchedConfig:
    name: str = choice(MISSING, "constant|step|multistep|exponential|cosine|onecycle|plateau")
    warmup_epochs: float = num(0.0, ">= 0")  # a linear warmup from 0 over this many epochs, before any schedule
    min_lr: float = num(0.0, ">= 0", by="cosine")  # cosine floor, as an absolute learning rate
    step_epochs: float = num(30.0, "> 0", by="step")  # step
    gamma: float = num(0.1, "(0, 1]", by="step|multistep|exponential")  # step, multistep, exponential (per epoch)
    milestones: list[float] = only("multistep", [])  # multistep, in epochs
    max_lr_mult: float = num(10.0, ">= 1", by="onecycle")  # onecycle peak = lr * max_lr_mult
    pct_start: float = num(0.3, "(0, 1)", by="onecycle")  # onecycle
    # onecycle: cycle the momentum (SGD's, Adam's first beta) inversely to the rate, between these, as
    # torch's OneCycleLR does by default; false keeps the optimizer's own
    cycle_momentum: bool = only("onecycle", True)
    base_momentum: float = num(0.85, "[0, 1)", by="onecycle")
    max_momentum: float = num(0.95, "[0, 1)", by="onecycle")
    factor: float = num(0.1, "(0, 1)", by="plateau")  # plateau
    patience: int = num(5, ">= 0", by="plateau")  # plateau
    # resuming with more epochs than the schedule was planned for: a new cycle over the added epochs
    # (true), or the rate the schedule ended with (false)
    restart: bool = False


@dataclass
class FinetuneConfig:
    name: str = choice(
        MISSING, "scratch|linear_probe|full|gradual"
    )  # scratch: random weights; the others start from finetune.weights
    weights: str | None = None  # imagenet | a regx run directory | a checkpoint or state-dict file
    freeze: list[str] = field(default_factory=list)  # module/parameter name patterns kept frozen
    bn: str = choice("train", "train|frozen")  # frozen: BatchNorm layers whose parameters are frozen stay in eval mode
    # the backbone's learning rate, relative to the head's
    backbone_lr_mult: float = num(0.1, ">= 0", by="full|gradual")
    # gradual: epochs of head-only training before the backbone unfreezes
    unfreeze_epoch: int = num(3, ">= 0", by="gradual")
    stages: int = num(1, ">= 1", by="gradual")  # gradual: unfreeze the backbone in this many steps, from the top
    stage_epochs: int = num(1, ">= 1", by="gradual")  # gradual: epochs between those steps


@dataclass
class DiagnoseConfig:
    clean_train: bool = True  # also evaluate a fixed training subset in eval mode, without augmentation
    clean_size: int = num(2000, ">= 1")  # images in that subset (at most the training set)
    # the clean training accuracy a model that fits this data should reach: below it the verdict finds high
    # bias (underfitting); set it to what the data allows (a published accuracy, a human's)
    target: float = num(0.9, "(0, 1]")
    # at the end, also score the test split (best.pt) corrupted: corruption names or [all] (regx.corrupt:
    # gaussian_noise, gaussian_blur, contrast, brightness, jpeg, saturate), each at every severity below;
    # summary.json's test_corrupt_acc is the mean over them (regx ablate/curve --corrupt)
    corrupt: list[str] = field(default_factory=list)
    corrupt_severities: list[int] = num([1, 2, 3, 4, 5], "[1, 5]", "(1 mild to 5 severe)", min_items=1)


@dataclass
class CheckpointConfig:
    every_steps: int = num(0, ">= 0", "(0: epoch ends only)")  # also checkpoint every N optimizer steps within an epoch
    # write each checkpoint in a background thread while training goes on (a kill mid-write leaves the one
    # before); null: on CUDA, where a write is long next to a step, not on the CPU
    background: bool | None = None


@dataclass
class EarlyStopConfig:
    patience: int = num(0, ">= 0", "(0: off)")  # stop after this many epochs without a new best validation accuracy
    min_delta: float = num(0.0, "[0, 1)")  # an improvement beats the last one by more than this (0.001 = 0.1 points)


@dataclass
class AverageConfig:
    """Weight averaging (the `average` group), evaluated and checkpointed beside the trained weights:
    an exponential moving average updated every `every` optimizer steps (ema), or the equal average of
    the weights at the end of each epoch from `start_epoch` on, BatchNorm recomputed at the end (swa)."""

    name: str = choice("none", "none|ema|swa")  # a default, not MISSING: runs made before this group resume
    decay: float = num(0.999, "(0, 1)", by="ema")  # ema <- decay * ema + (1 - decay) * weights
    # ModelEmaV3's warmup: the decay after t steps is min(decay, 1 - (1 + t)^-warmup_power), so early updates
    # follow the weights closely instead of averaging in the random start. On by default here (timm's train.py
    # leaves it off, made for runs of hundreds of thousands of steps; regx's runs are short)
    warmup: bool = only("ema", True)
    # ModelEmaV3's: 2/3 reaches 0.999 after 31.6K steps, 3/4 after 10K
    warmup_power: float = num(2 / 3, "(0, 1]", by="ema")
    every: int = num(1, ">= 1", by="ema")  # optimizer steps between updates
    # which weights count: the best epoch, early stopping, best.pt's test evaluation, predict and export
    select: str = choice("averaged", "averaged|raw", by="ema|swa")
    # swa: the first epoch averaged; null: 75% into the run
    start_epoch: int | None = num(None, ">= 1", "or null", by="swa")
    swa_lr: float | None = num(
        None, "> 0", "or null", by="swa"
    )  # swa: the rate from start_epoch on; null: the schedule's
    anneal_epochs: int = num(1, ">= 0", by="swa")  # swa: epochs to move linearly from the schedule's rate to swa_lr


@dataclass
class LoggerConfig:
    """Experiment trackers, as the `logger` group's options select them: one (`logger=mlflow`) or
    several (`logger=[tensorboard,mlflow]`); each option sets its own flag."""

    tensorboard: bool = False  # event files in <run>/tensorboard/
    mlflow: bool = False  # runs in MLflow (tracking_uri)
    wandb: bool = False  # runs in Weights & Biases (mode)
    tracking_uri: str | None = only("mlflow", None)  # mlflow: null is sqlite:///<cwd>/outputs/mlflow.db
    # mlflow experiment / W&B project; null: the run's name (mlflow), regx (W&B)
    experiment: str | None = only("mlflow|wandb", None)
    log_model: bool = only("mlflow|wandb", False)  # mlflow, wandb: also upload best.pt as an artifact
    mode: str = choice("online", "online|offline|disabled", by="wandb")  # wandb


@dataclass
class AblateConfig:
    """`regx ablate`: every arm is the baseline plus one technique's overrides; `all` adds them all.
    The default is the course's four, each against a run with none of them."""

    # the overrides of the arm every technique is added to
    baseline: list[str] = field(default_factory=lambda: ["aug=none", "dropout=none", "wd=0", "sched=constant"])
    arms: dict[str, list[str]] = field(
        default_factory=lambda: {  # technique name -> its overrides
            "augmentation": ["aug=crop_flip"],
            "dropout": ["dropout=fc"],
            "weight_decay": ["decay=l2", "wd=5e-4"],
            "lr_decay": ["sched=cosine"],
        }
    )
    vary_split: bool = False  # each seed its own subset and split, data.seed = seed (regx ablate --vary-split)


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
    average: AverageConfig = field(default_factory=AverageConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    epochs: int = num(12, ">= 1")  # passes over the training split
    batch_size: int = num(128, ">= 1")  # images per optimizer step (all processes together under torchrun)
    eval_batch_size: int = num(512, ">= 1")  # images per batch when evaluating
    # test-time augmentation in every evaluation (validation, clean training subset, test, regx eval and
    # predict): flip = the mean of the logits of each image and its left-right mirror (airbench's mirror TTA)
    tta: str = choice("none", "none|flip")
    lr: float = num(0.05, "> 0")  # the learning rate (the schedule's peak; onecycle's is lr * sched.max_lr_mult)
    wd: float = num(5e-4, ">= 0")  # weight decay strength, applied as the decay group says (0: off)
    label_smoothing: float = num(0.0, "[0, 1)")  # cross-entropy against (1-e) one-hot + e/classes
    # Gradient clipping before each optimizer step: rescale the gradients to this total L2 norm at most
    # (clip_mode=norm), or clamp every element to [-clip_grad, clip_grad] (value). 0: off.
    clip_grad: float = num(0.0, ">= 0", "(0: off)")
    clip_mode: str = choice("norm", "norm|value")
    seed: int = num(0, "[0, 4294967295]")  # initial weights, batch order, augmentation draws, dropout masks
    device: str = choice(
        "auto", r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps"
    )  # auto: CUDA, else MPS, else the CPU
    precision: str = choice(
        "auto", "auto|32|bf16|16"
    )  # auto: bf16 where the hardware computes it natively, else fp32; 16: fp16 with a GradScaler
    channels_last: bool = True  # NHWC memory layout for the model and batches
    compile: bool = False  # torch.compile the model (costs seconds of compiling first)
    # torch.compile's mode; reduce-overhead adds CUDA graphs on GPUs
    compile_mode: str = choice("default", "default|reduce-overhead|max-autotune|max-autotune-no-cudagraphs")
    # torch.compile the per-image augmentation (flips, warp, colour, erasing: from the draws to the pixels)
    # into a few fused kernels per batch shape, in torch.compile's default mode; null: on CUDA when
    # `compile` is on. Policies, AugMix and mixup/cutmix stay eager.
    compile_aug: bool | None = None
    name: str = "${model.name}_${data.name}"  # the run's name, in its directory's name and the trackers'
    progress_every: int = num(25, ">= 1")  # steps between progress-bar refreshes (each one reads metrics back)
    # draw curves.png (as the run goes) and aug_preview.png; false: neither, for sweeps of many short runs
    # (`regx plot RUN_DIR` draws curves.png from metrics.csv later)
    pictures: bool = True
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)  # read by regx ablate only
    notes: dict[str, Any] = field(default_factory=dict)  # free-form, kept with the run: +notes.why=baseline


AUG_OPS = tuple(f.name for f in dataclasses.fields(AugConfig) if f.name not in ("name", "options"))
_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
GROUPS = (
    "data",
    "model",
    "optim",
    "aug",
    "dropout",
    "decay",
    "sched",
    "finetune",
    "average",
    "logger",
    "experiment",
    "debug",
    "hparams_search",
)


def conf_dir() -> Path:
    """The config tree: conf/ beside the package in a checkout, regx/conf inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"regx's config tree (conf/train.yaml) was not found near {here}")


def group_options(group: str, config_dir: str | None = None) -> list[str]:
    """The options of `group`: regx's, and with `config_dir` (regx train -cd) the user's own there."""
    dirs = [conf_dir(), *([Path(config_dir)] if config_dir else [])]
    return sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})


_registered = False


def register() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent). The resolvers that conf/train.yaml's
    `hydra:` section names (regx_dir, regx_slug) are the command line's: regx.cli registers them."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    _registered = True


def compose(
    overrides: list[str] | tuple[str, ...] = (),
    config_dir: str | None = None,
    primary: str | None = None,
    name: str = "train",
) -> DictConfig:
    """Compose the primary config with overrides, as `regx train` would (no run directory is made).
    `config_dir` (-cd): a user's folder searched before the primary one; `primary` (-cp): a folder
    that replaces regx's conf/; `name` (-cn): the primary config's name."""
    return copy.deepcopy(_composed(*_compose_key(overrides, config_dir, primary, name)))  # callers may change it


def _compose_key(overrides, config_dir, primary, name) -> tuple:
    register()
    primary = primary or str(conf_dir())
    if config_dir:
        config_dir = str(Path(config_dir).expanduser().resolve())
        if not (Path(primary) / f"{name}.yaml").is_file() and (Path(config_dir) / f"{name}.yaml").is_file():
            primary, config_dir = config_dir, primary  # -cn names a config in the -cd folder
    return tuple(overrides), config_dir or None, primary, name, _tree_state(primary, config_dir)


@functools.lru_cache(maxsize=32)
def _composed(overrides: tuple, config_dir: str | None, primary: str, name: str, state: tuple) -> DictConfig:
    """Hydra's composition, once per process for the same arguments and config files (a study's
    preflight composes the same configs again, the tests the same presets): the config without Hydra's
    node, as hydra.compose returns it.

    Hydra composes in two steps: the defaults list, which only the config-group overrides (`aug=flip`,
    `~dropout`) and the search path choose, merged into one config (about 0.2 s), then every other
    override (`epochs=3`, `+notes.why=x`) set on it (ConfigLoaderImpl._apply_overrides_to_config). The
    first step is memoized by the group overrides alone (_structure); the second is Hydra's own, run on
    a copy. A sweep (`seed=1,2`) is left to Hydra whole, as is anything that is not parsed."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    split = _split_overrides(overrides, config_dir, primary, state)
    if split is None:
        return _without_hydra(_hydra_compose(overrides, config_dir, primary, name))
    _, shaping, values = split
    full, bare = _structure(tuple(o.input_line for o in shaping), config_dir, primary, name, state)
    if any(o.key_or_group.split(".")[0] == "hydra" for o in values):  # hydra.mode=MULTIRUN, hydra.run.dir=...
        cfg = copy.deepcopy(full)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return _without_hydra(cfg)
    cfg = copy.deepcopy(bare)
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


def hydra_config(overrides: list[str] | tuple[str, ...], name: str = "train") -> DictConfig | None:
    """The config with Hydra's node that Hydra's launch of `regx train OVERRIDES` composes for itself
    (Hydra.compose_config, about 0.2 s), from compose's memo: the overrides set on the memoized defaults
    list, then the node's per-run fields set as ConfigLoaderImpl sets them (the overrides lists,
    override_dirname, cwd, env_set; the rest was composed with the same name). regx's own config tree
    only (no -cd, -cp); None where the memo cannot give it (a sweep, what Hydra's parser refuses)."""
    import os

    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    overrides, config_dir, primary, name, state = _compose_key(overrides, None, None, name)
    split = _split_overrides(overrides, config_dir, primary, state)
    if split is None:
        return None
    parsed, shaping, values = split
    cfg = copy.deepcopy(_structure(tuple(o.input_line for o in shaping), config_dir, primary, name, state)[0])
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    h = cfg.hydra
    h.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
    h.overrides.task = [o.input_line for o in parsed if not o.is_hydra_override()]
    with open_dict(h):
        for key in h.job.env_copy:
            h.job.env_set[key] = os.environ[key]
    h.runtime.cwd = os.getcwd()
    dirname = h.job.config.override_dirname
    h.job.override_dirname = get_overrides_dirname(
        overrides=[o for o in parsed if not o.is_hydra_override()],
        kv_sep=dirname.kv_sep,
        item_sep=dirname.item_sep,
        exclude_keys=dirname.exclude_keys,
    )
    return cfg


def _split_overrides(overrides: tuple, config_dir: str | None, primary: str, state: tuple):
    """(the parsed overrides, those that shape the defaults list, the rest), in order; None for a sweep
    or for what Hydra's parser refuses (Hydra's own composition says what is wrong, in its words)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    except Exception:
        return None
    if any(o.is_sweep_override() for o in parsed):
        return None
    groups = _groups(primary, config_dir, state)
    shaping = [o for o in parsed if _shapes_defaults(o, groups)]
    return parsed, shaping, [o for o in parsed if not _shapes_defaults(o, groups)]


@functools.lru_cache(maxsize=32)
def _structure(
    shaping: tuple, config_dir: str | None, primary: str, name: str, _state: tuple
) -> tuple[DictConfig, DictConfig]:
    """The config that the group overrides `shaping` compose, with Hydra's node and without it."""
    full = _hydra_compose(shaping, config_dir, primary, name)
    return full, _without_hydra(copy.deepcopy(full))


def _hydra_compose(overrides, config_dir: str | None, primary: str, name: str) -> DictConfig:
    """hydra.compose, as `regx train -cd config_dir -cp primary -cn name overrides` composes (-cd: a user's
    folder searched before the primary one), with Hydra's node."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    searched = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    with initialize_config_dir(config_dir=primary, version_base="1.3"):
        return hydra_compose(config_name=name, overrides=[*overrides, *searched], return_hydra_config=True)


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """`cfg` without Hydra's node, as hydra.compose returns it (`cfg` is changed)."""
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _shapes_defaults(override, groups: frozenset) -> bool:
    """Whether Hydra may read `override` when it builds the defaults list: a config group (`aug=flip`,
    `~dropout`, `hydra/launcher=joblib`, `+experiment=x`, `+aug@notes.x=flip`, `+ablate_arm=all` from a
    folder on hydra.searchpath) or the search path. A config key is dotted (`aug.crop.pad=2`) or one of
    the schema's top-level fields that no config folder holds a group of (`epochs=3`); a group never is."""
    key = override.key_or_group
    if key in ("hydra", "hydra.searchpath") or "/" in key or key in groups:
        return True
    return "." not in key and key not in _FIELDS


@functools.lru_cache(maxsize=8)
def _groups(primary: str, config_dir: str | None, _state: tuple) -> frozenset:
    """The top-level config groups of the config trees: their folders (Hydra's own are under hydra/)."""
    dirs = [Path(d) for d in (primary, config_dir) if d and Path(d).is_dir()]
    return frozenset(p.name for d in dirs for p in d.iterdir() if p.is_dir() and p.name != "__pycache__")


def _tree_state(*dirs: str | None) -> tuple:
    """The YAML files of config trees `dirs` (a primary config, its groups, their subgroups: three levels,
    not all, since a -cd folder may hold a dataset) with a hash of each: a file changed, added or removed
    composes anew. Contents, not modification times, which two writes in one clock tick share. Not
    watched: folders a config adds to Hydra's search path itself (hydra.searchpath in a YAML file)."""
    return tuple(
        (str(f), hashlib.blake2b(f.read_bytes(), digest_size=16).digest())
        for d in dirs
        if d
        for pattern in ("*.yaml", "*/*.yaml", "*/*/*.yaml")
        for f in sorted(Path(d).glob(pattern))
    )


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


def _check_fields(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Every field's metadata rule, recursively, in schema order."""
    for f in dataclasses.fields(schema):
        key, value = prefix + f.name, node.get(f.name)
        if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else _SCHEMAS.get(f.type)):
            _check_fields(value, _SCHEMAS.get(f.type, f.type), key + ".")
        elif value is None:
            continue
        elif "pattern" in f.metadata:
            _check(
                re.fullmatch(f.metadata["pattern"], str(value)) is not None,
                key,
                str(value),
                f"must be one of {f.metadata['shown']}",
            )
        elif "interval" in f.metadata:
            values = list(value) if OmegaConf.is_list(value) else [value]
            _check(
                all(math.isfinite(v) for v in values),
                key,
                list(value) if OmegaConf.is_list(value) else value,
                "must be a finite number",
            )
            rule = " ".join(filter(None, [_rule(f.metadata["interval"]), f.metadata["note"]]))
            shown = list(value) if OmegaConf.is_list(value) else value
            _check(
                all(_within(v, f.metadata["interval"]) for v in values) and len(values) >= f.metadata["min_items"],
                key,
                shown,
                rule,
            )


# `from __future__ import annotations` makes field types strings: the nested schemas by name.
_SCHEMAS = {
    name: obj for name, obj in dict(globals()).items() if name.endswith("Config") and dataclasses.is_dataclass(obj)
}


def validate(cfg: DictConfig, unread: bool = True) -> None:
    """Every value in its range, then the rules between keys; run after composition and before any
    data is loaded. Raises ConfigError with one line. (Whether model.name names a model is the model
    registry's to say: regx.errors.check does both.) `unread=False`: leave the keys the chosen options do
    not read to the caller (a sweep's preflight weighs them over all its jobs: unread_settings)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        hint = " (data=imagefolder needs the folder of images)" if key == "data.path" else ""
        raise ConfigError(f"{key} is required but has no value{hint}: add {key}=...")
    _check_fields(cfg, TrainConfig)
    if unread:
        _check_unread(cfg)
    _check_between(cfg)


# The groups whose options each read some of the group's keys (field metadata `by`); for logger, the
# options are flags that several may set at once.
READ_BY_OPTION = ("data", "optim", "sched", "dropout", "average", "finetune", "logger")
UNREAD_HINTS = {  # what to do instead, where the key is a common mistake
    "data.channels": "the set's images have the channels they have; a model built for RGB, pretrained weights "
    "included, takes grey images as three equal channels by itself",
}


def _read_by_schema(group: str):
    return {
        "data": DataConfig,
        "optim": OptimConfig,
        "sched": SchedConfig,
        "dropout": DropoutConfig,
        "average": AverageConfig,
        "finetune": FinetuneConfig,
        "logger": LoggerConfig,
    }[group]


def unread_by_option(c: DictConfig, key: str) -> str | None:
    """Why `key` (GROUP.FIELD) is not read by the group's chosen option, as the end of "KEY=V is not
    read by ...", or None where it is read (or is not an option's key)."""
    group, _, name = key.partition(".")
    if group not in READ_BY_OPTION:
        return None
    field_ = next((f for f in dataclasses.fields(_read_by_schema(group)) if f.name == name), None)
    by = field_.metadata.get("by") if field_ is not None else None
    node = c[group]
    chosen = {f for f in ("tensorboard", "mlflow", "wandb") if node[f]} if group == "logger" else {node.name}
    if not by or chosen & set(by.split("|")):
        return None
    which = " or ".join(f"{group}={o}" for o in by.split("|"))
    hint = UNREAD_HINTS.get(key)
    return f"{group}={', '.join(sorted(chosen)) or 'none'}: only {which} reads it " + (
        f"({hint})" if hint else "(remove it, or choose that option)"
    )


def unread_settings(c: DictConfig) -> Iterator[tuple[str, str]]:
    """(key, why) for each key that the chosen option does not read and that is set to anything but its
    default (a silent no-op: `sched=cosine sched.gamma=0.5`)."""
    for group in READ_BY_OPTION:
        for f in dataclasses.fields(_read_by_schema(group)):
            why = unread_by_option(c, f"{group}.{f.name}") if f.metadata.get("by") else None
            if why is None:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = c[group][f.name]
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            if value != default:
                yield f"{group}.{f.name}", f"{group}.{f.name}={value!r} is not read by {why}"


def _check_unread(c: DictConfig) -> None:
    """The first of unread_settings, refused. Named on the command line at its default, such a key is
    refused too (errors._check_switches)."""
    for _, why in unread_settings(c):
        raise ConfigError(why)


# (low, high): keys whose values must keep that order
RANGES = (
    ("aug.erasing.area_min", "aug.erasing.area_max"),
    ("aug.scale.min", "aug.scale.max"),
    ("aug.rrc.scale_min", "aug.rrc.scale_max"),
    ("aug.rrc.ratio_min", "aug.rrc.ratio_max"),
)


def _check_between(c: DictConfig) -> None:
    """The rules that tie two keys together, or a key to the machine or the file system."""
    d, a = c.data, c.aug
    _check(
        not c.compile_aug or any(a[k].p > 0 for k in PER_IMAGE_OPS),
        "compile_aug",
        c.compile_aug,
        f"compiles the per-image augmentation, and aug={a.name} has none on ({', '.join(PER_IMAGE_OPS)})",
    )
    for key in ("mean", "std"):
        _check(d[key] is None or len(d[key]) in (1, 3), f"data.{key}", d[key], "must list 1 or 3 numbers, or be null")
    for low, high in RANGES:
        lo, hi = OmegaConf.select(c, low), OmegaConf.select(c, high)
        _check(lo <= hi, low, lo, f"must be <= {high} ({hi})")
    _check(
        a.mixup.p + a.cutmix.p <= 1,
        "aug.cutmix.p",
        a.cutmix.p,
        f"aug.mixup.p + aug.cutmix.p must be <= 1 (mixup.p={a.mixup.p})",
    )
    _check(
        a.randaugment.magnitude < a.randaugment.bins,
        "aug.randaugment.magnitude",
        a.randaugment.magnitude,
        f"must be a bin below aug.randaugment.bins ({a.randaugment.bins})",
    )
    _check(
        a.augmix.p == 0 or a.augmix.jsd == 0 or a.mixup.p + a.cutmix.p == 0,
        "aug.augmix.jsd",
        a.augmix.jsd,
        "does not combine with mixup or cutmix (their mixed targets have no clean view); set aug.augmix.jsd=0",
    )
    _check(
        c.dropout.mc_samples == 0 or c.dropout.p > 0 or c.dropout.conv_p > 0,
        "dropout.mc_samples",
        c.dropout.mc_samples,
        "needs dropout in the model (dropout=fc, conv or both)",
    )
    _check(c.sched.min_lr <= c.lr, "sched.min_lr", c.sched.min_lr, f"must be in [0, lr={c.lr}]")
    _check(
        c.tta == "none" or d.mirror,
        "tta",
        c.tta,
        f"mirrors the images it evaluates, and a mirror changes the class of data={d.name}'s (data.mirror=false)",
    )
    _check_decay_stable(c)
    _check(
        c.average.name != "swa" or c.average.start_epoch is None or c.average.start_epoch <= c.epochs,
        "average.start_epoch",
        c.average.start_epoch,
        f"must be <= epochs ({c.epochs}); a later start averages nothing",
    )
    _check_outside(c)


def _check_outside(c: DictConfig) -> None:
    """The rules that tie a key to the machine or the file system: the device, the trackers' packages,
    pretrained weights and image folders."""
    d, f = c.data, c.finetune
    check_device(c.device)
    for tracker, module in (("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")):
        if c.logger[tracker] and importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger={tracker} needs the {module} package: pip install 'regx[{tracker}]'")
    if f.name == "scratch" and f.weights:
        raise ConfigError(
            f"finetune.weights={f.weights} is set but finetune=scratch starts from random weights: "
            "use finetune=full, linear_probe or gradual"
        )
    if f.name != "scratch" and not f.weights:
        raise ConfigError(f"finetune={f.name} needs finetune.weights: imagenet, a regx run directory or a weights file")
    if f.weights == "imagenet" and c.model.name == "smallcnn":
        raise ConfigError(
            "finetune.weights=imagenet: smallcnn has no ImageNet weights; pretrain it with a regx run "
            "and pass its directory (finetune.weights=outputs/runs/<run>), or pick a torchvision or "
            "timm model"
        )
    if f.weights and f.weights != "imagenet" and not Path(f.weights).expanduser().exists():
        raise ConfigError(f"finetune.weights={f.weights}: no such file or directory")
    if d.name == "imagefolder":
        if not d.path:
            raise ConfigError("data.path is required for data=imagefolder: add data.path=/path/to/images")
        if not Path(d.path).expanduser().is_dir():  # before a run directory is made for it
            raise ConfigError(f"data.path={d.path}: no such directory")
        _check(d.image_size is not None, "data.image_size", d.image_size, "data=imagefolder needs an image size")


def _check_decay_stable(c: DictConfig) -> None:
    """Weight decay alone must not blow the weights up. Its step is p <- p - lr*h*p with h = 2*wd
    (decay=l2, the gradient of wd*sum(p^2)) or wd (decoupled); with SGD's momentum m that iteration
    grows without bound once lr*h >= 2*(1+m), and AdamW's p <- (1 - lr*wd)*p flips every weight's sign
    once lr*wd >= 1. Adam with l2 or l1 normalizes the step, and l1's step does not grow with p."""
    peak = c.lr * (c.sched.max_lr_mult if c.sched.name == "onecycle" else 1.0)
    if c.optim.name == "sgd" and c.decay.name in ("l2", "decoupled"):
        h = (2 if c.decay.name == "l2" else 1) * c.wd
        limit = 2 * (1 + c.optim.momentum)
    elif c.optim.name == "adamw" and c.decay.name == "decoupled":
        h, limit = c.wd, 1.0
    else:
        return
    if peak * h >= limit:
        product = f"lr*{'2*' if c.decay.name == 'l2' and c.optim.name == 'sgd' else ''}wd"
        raise ConfigError(
            f"lr={peak:g}{' (peak)' if peak != c.lr else ''} with wd={c.wd:g} (decay={c.decay.name}, "
            f"optim={c.optim.name}): weight decay alone makes the weights diverge ({product} = "
            f"{peak * h:.3g}, must be < {limit:g}); lower lr or wd (usual wd: 1e-5 to 1e-2)"
        )


def check_device(spec: str) -> None:
    """The device exists on this machine (auto and cpu always do); torch is imported only to look."""
    if spec in ("auto", "cpu"):
        return
    import torch

    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={spec}: CUDA is not available on this machine (use device=cpu or device=auto)")
    if spec.startswith("cuda:") and int(spec[5:]) >= torch.cuda.device_count():
        raise ConfigError(
            f"device={spec}: only {torch.cuda.device_count()} CUDA device(s) visible (cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device=mps: MPS (Apple's GPU) is not available on this machine (use device=cpu or device=auto)"
        )

"""Model registry: regx's smallcnn plus any torchvision classification model by name."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


class ModelError(ValueError):
    pass


@register_model("smallcnn")
def smallcnn(
    *,
    num_classes: int,
    in_channels: int,
    channels,
    convs_per_block: int,
    fc,
    dropout: float,
    conv_dropout: float,
    dropout_features: bool,
    **_,
) -> nn.Module:
    """conv-BN-ReLU blocks, each ending in a 2x2 max-pool; global average pool; an MLP classifier.

    `dropout` places nn.Dropout(p) on the output of every hidden fully connected layer, i.e. before
    every fully connected layer fed by one (where AlexNet and VGG put it; with no hidden layer, before
    the last). Dropping the pooled conv features as well stopped this network from learning on 500
    shapes (28% vs 68% validation accuracy), so it is opt-in: `dropout_features=True`.
    `conv_dropout` places nn.Dropout2d after each conv block.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for width in channels:
        for _ in range(convs_per_block):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c_in = width
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
        if conv_dropout > 0:
            layers.append(nn.Dropout2d(conv_dropout))
    # Named classifier layers: parameter names (head.fc1.weight, head.out.weight) do not depend on
    # where dropout sits, so weights move between runs with different dropout settings.
    head: dict[str, nn.Module] = {"pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten()}
    widths = [*fc, num_classes]
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        if dropout > 0 and (i > 0 or len(widths) == 1 or dropout_features):
            head["drop_out" if last else f"drop{i + 1}"] = nn.Dropout(dropout)
        head["out" if last else f"fc{i + 1}"] = nn.Linear(c_in, width)
        if not last:
            head[f"relu{i + 1}"] = nn.ReLU(inplace=True)
        c_in = width
    return nn.Sequential(OrderedDict(features=nn.Sequential(*layers), head=nn.Sequential(OrderedDict(head))))


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision(name: str, *, num_classes: int, in_channels: int, image_size: int | None, small_input: bool,
                 dropout: float, **_) -> nn.Module:
    import torchvision.models as tvm

    names = torchvision_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"model.name={name!r} is neither regx's ({', '.join(MODELS)}) nor a torchvision classification model{hint}")
    extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    if name.startswith("vit_") and image_size:  # its position embeddings are sized for the images
        extra["image_size"] = image_size
    model = tvm.get_model(name, weights=None, num_classes=num_classes, **extra)
    if small_input:
        if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
            raise ModelError(f"model.small_input=true swaps a ResNet-style stem; {name} has none (set model.small_input=false)")
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    if dropout > 0:
        _dropout_before_last_linear(model, dropout)
    return _GrayToRGB(model) if in_channels == 1 else model


def _dropout_before_last_linear(model: nn.Module, p: float) -> None:
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise ModelError("dropout.p > 0 needs a fully connected layer, and this model has none")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    linear = getattr(parent, attr)
    setattr(parent, attr, nn.Sequential(nn.Dropout(p), linear))


class _GrayToRGB(nn.Module):
    """Feeds one-channel images to an RGB network by repeating the channel."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.expand(-1, 3, -1, -1))


def model_kwargs(cfg, *, num_classes: int, in_channels: int, image_size: int | None) -> dict:
    """The one adapter from a run's config (its model and dropout groups) to build_model's keywords."""
    m, d = cfg.model, cfg.dropout
    return dict(name=m.name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=list(m.channels),
                convs_per_block=m.convs_per_block, fc=list(m.fc), small_input=m.small_input, dropout=d.p,
                conv_dropout=d.conv_p, dropout_features=d.features)


def build_model(
    *,
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int | None,
    channels,
    convs_per_block: int,
    fc,
    small_input: bool,
    dropout: float,
    conv_dropout: float,
    dropout_features: bool,
) -> nn.Module:
    """A model by name for `num_classes` classes of `in_channels`-channel images of `image_size` px
    (vision transformers are built for it; CNNs do not need it); every other keyword is a
    `model`/`dropout` config key (config.py holds the defaults, `model_kwargs` maps them)."""
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=list(channels),
                  convs_per_block=convs_per_block, fc=list(fc), small_input=small_input,
                  dropout=dropout, conv_dropout=conv_dropout, dropout_features=dropout_features)
    if name in MODELS:
        return MODELS[name](**kwargs)
    if conv_dropout > 0:
        raise ModelError("dropout.conv_p applies to smallcnn only; set dropout.conv_p=0 for torchvision models")
    return _torchvision(name, **kwargs)


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable

"""Model registry: regx's smallcnn, any torchvision classification model, and any timm model by name."""

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


# torchvision's classes that take stochastic_depth_prob (drop path), by model-name prefix; its ResNets
# (resnet, resnext, wide_resnet) get it from regx (_resnet_drop_path).
TV_DROP_PATH = ("convnext", "efficientnet", "swin", "maxvit")
TV_RESNETS = ("resnet", "resnext", "wide_resnet")


def _torchvision(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int | None,
    small_input: bool,
    dropout: float | None,
    drop_path: float | None,
    **_,
) -> nn.Module:
    """torchvision's model by name; `dropout` is set_dropout's p (None: the architecture's own dropout,
    for weights to load into before the dropout group has its say)."""
    import torchvision.models as tvm

    names = torchvision_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"model.name={name!r} is neither regx's ({', '.join(MODELS)}) nor a torchvision classification model{hint}"
        )
    extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    if name.startswith("vit_") and image_size:  # its position embeddings are sized for the images
        extra["image_size"] = image_size
    if drop_path is not None and not name.startswith(TV_RESNETS):
        if not name.startswith(TV_DROP_PATH):
            raise ModelError(
                f"model.drop_path: torchvision's {name} has no drop path (its ResNets and "
                f"{', '.join(TV_DROP_PATH)} models do; timm's take it as drop_path_rate: model=timm)"
            )
        extra["stochastic_depth_prob"] = drop_path
    model = tvm.get_model(name, weights=None, num_classes=num_classes, **extra)
    if drop_path and name.startswith(TV_RESNETS):
        _resnet_drop_path(model, drop_path)
    if small_input:
        if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
            raise ModelError(
                f"model.small_input=true swaps a ResNet-style stem; {name} has none (set model.small_input=false)"
            )
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    if dropout is not None:
        set_dropout(model, dropout)
    return GrayToRGB(model) if in_channels == 1 else model


def timm_module():
    """timm, or a ModelError naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise ModelError("model.zoo=timm needs timm: pip install 'regx[timm]'") from None
    return timm


def check_timm_name(name: str) -> None:
    timm = timm_module()
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
        raise ModelError(f"model.name={name!r} is not a timm model{hint}")


def timm_pretrained_cfg(name: str) -> dict:
    """timm's default pretrained configuration of an architecture: mean, std, input_size, interpolation,
    hf_hub_id, classifier ... (what its weights were trained with)."""
    timm = timm_module()
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def _timm(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int | None,
    small_input: bool,
    dropout: float,
    drop_path: float | None,
    **_,
) -> nn.Module:
    """timm's create_model for the data's classes. Grey images go in as grey RGB, as for torchvision's
    models (so ImageNet weights load unchanged); `dropout` is timm's drop_rate (before the classifier),
    `drop_path` its drop_path_rate; a model with a fixed input size (ViT and kin) is built for the images."""
    timm = timm_module()
    check_timm_name(name)
    if small_input:
        raise ModelError(
            f"model.small_input=true swaps a torchvision ResNet stem; for timm's {name} set it false "
            "(timm has models made for small images, e.g. resnet18d at data.image_size=64)"
        )
    kwargs: dict = {"num_classes": num_classes, "drop_rate": dropout}
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    if image_size and timm_pretrained_cfg(name).get("fixed_input_size"):
        kwargs["img_size"] = image_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:  # an architecture that does not take one of these
        bad = "model.drop_path" if "drop_path" in str(exc) else "dropout.p" if "drop_rate" in str(exc) else "a keyword"
        raise ModelError(f"timm's {name} does not take {bad} ({str(exc).splitlines()[0]})") from None
    return GrayToRGB(model) if in_channels == 1 else model


def probe(model: nn.Module, image_size: int) -> None:
    """A forward pass on the meta device (shapes only, no compute): a model that cannot take
    `image_size` px images fails here, before a run starts, with its own message."""
    import copy

    meta = copy.deepcopy(model).to("meta").eval()
    channels = 1 if isinstance(meta, GrayToRGB) else 3
    try:
        with torch.no_grad():
            meta(torch.zeros(1, channels, image_size, image_size, device="meta"))
    except Exception as exc:
        raise ModelError(
            f"cannot take {image_size} px images: {str(exc).splitlines()[0][:200]} "
            "(set data.image_size larger, or pick another model)"
        ) from None


class _DropPath:
    """A forward hook on a residual block's last BatchNorm: its output is the residual branch, which
    the block adds to the shortcut next, so zeroing it per sample (scaled by 1/(1-p) for the rest)
    skips the block for that sample. A hook, not a wrapper, so parameter names stay torchvision's and
    pretrained weights load. It drops while the block trains, whatever the BatchNorm's own mode
    (finetune.bn=frozen keeps frozen BatchNorm layers in eval mode)."""

    def __init__(self, p: float, block: nn.Module):
        self.p, self.block = p, block

    def __call__(self, module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import stochastic_depth

        return stochastic_depth(out, self.p, "row", self.block.training)


def _resnet_drop_path(model: nn.Module, rate: float) -> None:
    """Stochastic depth for torchvision's ResNets, rising linearly with depth from 0 at the first
    block to `rate` at the last (as torchvision's ConvNeXt and timm's ResNets do)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    for i, block in enumerate(blocks):
        last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        last_bn.register_forward_hook(_DropPath(rate * i / max(1, len(blocks) - 1), block))


def set_dropout(model: nn.Module, p: float) -> None:
    """The dropout group's say over a torchvision network's dropout: p = 0 removes every Dropout module
    (each becomes an Identity; none has weights, so names and state dicts are unchanged); p > 0 sets the
    drop probability of the classifier's own Dropout layers (VGG's two, EfficientNet's and MobileNet's
    one), or puts one in front of the last linear layer where the classifier has none (ResNet,
    ConvNeXt)."""
    if p == 0:
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.modules.dropout._DropoutNd):
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
        return
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise ModelError("dropout.p > 0 needs a fully connected layer, and this model has none")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    own = [m for m in parent.modules() if isinstance(m, nn.Dropout)] if parent is not model else []
    for d in own:
        d.p = p
    if not own:
        setattr(parent, attr, nn.Sequential(nn.Dropout(p), getattr(parent, attr)))


class GrayToRGB(nn.Module):
    """Feeds one-channel images to an RGB network by repeating the channel."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.expand(-1, 3, -1, -1))


def model_kwargs(cfg, *, num_classes: int, in_channels: int, image_size: int | None) -> dict:
    """The one adapter from a run's config (its model and dropout groups) to build_model's keywords."""
    m, d = cfg.model, cfg.dropout
    return dict(
        name=m.name,
        zoo=m.zoo,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=list(m.channels),
        convs_per_block=m.convs_per_block,
        fc=list(m.fc),
        small_input=m.small_input,
        drop_path=m.drop_path,
        dropout=d.p,
        conv_dropout=d.conv_p,
        dropout_features=d.features,
    )


def build_model(
    *,
    name: str,
    zoo: str = "torchvision",
    num_classes: int,
    in_channels: int,
    image_size: int | None,
    channels,
    convs_per_block: int,
    fc,
    small_input: bool,
    dropout: float | None,
    conv_dropout: float,
    dropout_features: bool,
    drop_path: float | None = None,
) -> nn.Module:
    """A model by name for `num_classes` classes of `in_channels`-channel images of `image_size` px
    (vision transformers are built for it; CNNs do not need it): regx's own (smallcnn), else from
    `zoo` (torchvision or timm); every other keyword is a `model`/`dropout` config key (config.py
    holds the defaults, `model_kwargs` maps them)."""
    kwargs = dict(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=list(channels),
        convs_per_block=convs_per_block,
        fc=list(fc),
        small_input=small_input,
        drop_path=drop_path,
        dropout=dropout,
        conv_dropout=conv_dropout,
        dropout_features=dropout_features,
    )
    if name in MODELS:
        if drop_path:
            raise ModelError(
                f"model.drop_path: {name} is a plain stack with no residual branches, so there is no path "
                "to drop (use dropout, or a residual model: resnet18, or timm's)"
            )
        return MODELS[name](**kwargs)
    if conv_dropout > 0:
        raise ModelError(f"dropout.conv_p applies to smallcnn only; set dropout.conv_p=0 for {zoo} models")
    return _timm(name, **kwargs) if zoo == "timm" else _torchvision(name, **kwargs)


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable

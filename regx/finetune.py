"""Fine-tuning: pretrained weights, head replacement, freezing, gradual unfreezing, BatchNorm policy.

The `finetune` group:
  scratch       random initialization, everything trained (the default);
  linear_probe  pretrained weights, a new head, everything else frozen;
  full          pretrained weights, a new head, everything trained, the backbone at
                finetune.backbone_lr_mult times the head's learning rate;
  gradual       the head alone for finetune.unfreeze_epoch epochs, then the backbone (at the lower
                rate), in finetune.stages steps from the top, one every finetune.stage_epochs epochs.
`finetune.freeze` (name patterns) keeps more frozen in any mode; `finetune.bn=frozen` keeps frozen
BatchNorm layers in eval mode so their running statistics stay as loaded.

A head is replaced by building the network for the new class count and loading every pretrained
tensor except the old head's: anything else that does not fit is an error naming the tensor.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class FinetuneError(ValueError):
    """Weights that cannot be found, fetched or loaded: one line naming the file or tensor."""


HEAD_PATHS = ("fc", "classifier", "heads.head", "head")


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The network inside regx's grey-to-RGB adapter, and the prefix its parameter names carry."""
    from regx.models import GrayToRGB

    return (model.model, "model.") if isinstance(model, GrayToRGB) else (model, "")


def head_path(model: nn.Module) -> str:
    """Dotted path of the final classification layer: `fc` (resnet, regnet, googlenet),
    `classifier.N` (mobilenet, efficientnet, vgg, alexnet, convnext, maxvit; squeezenet's final
    conv), `classifier` (densenet), `heads.head` (vit), `head` (swin), `head.out` (smallcnn)."""
    net, _ = unwrap(model)
    if is_timm(net):  # timm says which module classifies
        classifier = net.get_classifier()
        return next(name for name, module in net.named_modules() if module is classifier)
    for path in (*HEAD_PATHS, "head.out"):
        try:
            module = net.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.Linear):
            return path
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for name, child in reversed(children):
                if isinstance(child, nn.Linear | nn.Conv2d):
                    return f"{path}.{name}"
                if isinstance(child, nn.Sequential) and any(isinstance(c, nn.Linear) for c in child):
                    return f"{path}.{name}"  # regx's Dropout+Linear wrapper
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FinetuneError(f"cannot find the classification layer of {type(net).__name__}")
    return linears[-1]


def is_timm(net: nn.Module) -> bool:
    return hasattr(net, "pretrained_cfg") and hasattr(net, "reset_classifier") and hasattr(net, "group_matcher")


def head_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the head, in the (possibly wrapped) model's own names."""
    _, outer = unwrap(model)
    return outer + head_path(model)


# ---------------------------------------------------------------------------------------------
# Where weights come from.


@dataclass
class Pretrained:
    state_dict: dict
    source: str  # what to tell the user
    mean: list[float] | None = None  # the preprocessing the weights were trained with
    std: list[float] | None = None
    image_size: int | None = None


def _reachable(url: str, timeout: float = 4.0) -> bool:
    """Whether url's host accepts a connection within `timeout` seconds (DNS included: no hang)."""
    import socket
    from urllib.parse import urlparse

    parts = urlparse(url)
    ok = []

    def probe():
        try:
            socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def imagenet_weights(model_name: str):
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(model_name).DEFAULT
    except (ValueError, KeyError, AttributeError) as exc:
        raise FinetuneError(
            f"finetune.weights=imagenet: torchvision has no pretrained weights for model.name={model_name}"
        ) from exc


def imagenet_file(weights) -> Path:
    """Where torchvision's loader caches these weights: $TORCH_HOME/hub/checkpoints/<file>."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _fix_densenet_keys(sd: dict) -> dict:
    # torchvision's densenet files predate its module names ("norm.1" for "norm1"); as its loader does
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out = {}
    for key, value in sd.items():
        m = pattern.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def check_imagenet(model_name: str, timm_model: bool) -> None:
    """finetune.weights=imagenet for `model_name`: FinetuneError (one line, what to download and where)
    when the weights are neither cached here nor reachable; checked before a run directory is made."""
    if timm_model:
        _timm_source(model_name)
        return
    weights = imagenet_weights(model_name)
    file = imagenet_file(weights)
    if not file.is_file() and not _reachable(weights.url):
        raise FinetuneError(
            f"finetune.weights=imagenet: {file.name} is not cached and {weights.url} cannot be "
            f"reached; download it and put it at {file}"
        )


def load_imagenet(model_name: str) -> Pretrained:
    weights = imagenet_weights(model_name)
    file = imagenet_file(weights)
    if not file.is_file():
        check_imagenet(model_name, timm_model=False)
        torch.hub.load_state_dict_from_url(weights.url, progress=True, weights_only=True)
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FinetuneError(
            f"{file} does not load ({str(exc).splitlines()[0][:160]}); delete it to download it again"
        ) from exc
    if model_name.startswith("densenet"):
        sd = _fix_densenet_keys(sd)
    t = weights.transforms()
    return Pretrained(sd, f"ImageNet weights {weights} ({file})", list(t.mean), list(t.std), int(t.crop_size[0]))


def _timm_cached(pc: dict) -> str | None:
    """The file timm would load an architecture's weights from, if it is already on this machine:
    the Hugging Face cache (HF_HOME), or torch's hub cache for weights with only a URL."""
    if pc.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(pc["hf_hub_id"], name)
            if isinstance(found, str):
                return found
    if pc.get("url"):
        from urllib.parse import urlparse

        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pc["url"]).path).name
        if file.is_file():
            return str(file)
    return None


def _timm_source(model_name: str) -> tuple[str | None, str]:
    """(the cached file of timm's weights for `model_name` or None, where they are downloaded from);
    FinetuneError when timm has none, or they are neither cached nor reachable."""
    from regx.models import timm_pretrained_cfg

    pc = timm_pretrained_cfg(model_name)
    hub, url = pc.get("hf_hub_id"), pc.get("url")
    if not hub and not url:
        raise FinetuneError(f"finetune.weights=imagenet: timm has no pretrained weights for model.name={model_name}")
    cached = _timm_cached(pc)
    where = f"https://huggingface.co/{hub}" if hub else url
    if cached is None and not _reachable(where):
        from huggingface_hub.constants import HF_HUB_CACHE

        raise FinetuneError(
            f"finetune.weights=imagenet: timm's weights for {model_name} are not cached and {where} "
            f"cannot be reached; download {'model.safetensors from ' + where if hub else where} and pass "
            f"finetune.weights=FILE, or fill the Hugging Face cache ({HF_HUB_CACHE}) on a machine online"
        )
    return cached, where


def load_timm_imagenet(model_name: str) -> Pretrained:
    """timm's pretrained weights for `model_name` through timm's own loader: from its cache when there,
    else downloaded (when the host answers); the preprocessing from its pretrained_cfg."""
    from regx.models import timm_module, timm_pretrained_cfg

    timm, pc = timm_module(), timm_pretrained_cfg(model_name)
    cached, where = _timm_source(model_name)
    try:
        overlay = {"pretrained_cfg_overlay": {"file": cached}} if cached else {}
        net = timm.create_model(model_name, pretrained=True, **overlay)
    except Exception as exc:
        raise FinetuneError(
            f"finetune.weights=imagenet: timm could not load {model_name}'s weights from "
            f"{cached or where} ({str(exc).splitlines()[0][:160]})"
        ) from None
    return Pretrained(
        net.state_dict(),
        f"ImageNet weights timm/{model_name} ({cached or where})",
        list(pc["mean"]),
        list(pc["std"]),
        int(pc["input_size"][-1]),
    )


def load_source(spec: str, model_name: str, model_cfg: dict | None = None) -> Pretrained:
    """finetune.weights: `imagenet`, a regx run directory (its best.pt), a regx checkpoint, or a
    state-dict file ({name: tensor}, or {"state_dict": ...}). For a timm model a state-dict file is
    taken to be trained as timm's pretrained_cfg says: its mean and std normalize the data."""
    from regx.checkpoint import Checkpoint, CorruptCheckpoint, read_any

    timm_model = (model_cfg or {}).get("zoo") == "timm" and model_name != "smallcnn"
    if spec == "imagenet":
        return load_timm_imagenet(model_name) if timm_model else load_imagenet(model_name)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
        if not path.is_file():
            raise FinetuneError(f"finetune.weights={spec}: {path} not found (not a finished regx run?)")
    if not path.is_file():
        raise FinetuneError(f"finetune.weights={spec}: no such file or directory")
    try:
        blob = read_any(path)  # verified against its manifest, when it has one (a regx checkpoint)
    except CorruptCheckpoint as exc:
        raise FinetuneError(f"finetune.weights={spec}: {exc}") from None
    if isinstance(blob, Checkpoint):
        src = blob.config["model"]
        if src["name"] != model_name or src.get("zoo", "torchvision") != (model_cfg or {}).get(
            "zoo", src.get("zoo", "torchvision")
        ):
            theirs, ours = (
                f"{src.get('zoo', 'torchvision')}'s {src['name']}",
                f"{(model_cfg or {}).get('zoo')}'s {model_name}",
            )
            raise FinetuneError(f"finetune.weights={spec}: the weights are for {theirs}, not {ours}")
        if model_cfg is not None:
            differ = [
                k
                for k in ("channels", "convs_per_block", "fc", "small_input")
                if _as_list(src.get(k)) != _as_list(model_cfg.get(k))
            ]
            if differ and model_name == "smallcnn":
                raise FinetuneError(
                    f"finetune.weights={spec}: model.{differ[0]}={src.get(differ[0])} in that run, "
                    f"{model_cfg.get(differ[0])} here; set model.{differ[0]} to match"
                )
        return Pretrained(
            blob.weights(),
            f"regx checkpoint {path} (epoch {blob.epoch})",
            blob.norm["mean"],
            blob.norm["std"],
            blob.config["data"]["image_size"],
        )
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise FinetuneError(f"finetune.weights={spec}: {path} holds no state dict (name -> tensor)")
    if timm_model:
        from regx.models import timm_pretrained_cfg

        pc = timm_pretrained_cfg(model_name)
        if pc.get("mean"):
            return Pretrained(
                blob,
                f"state dict {path} (normalized as timm's {model_name} weights: mean "
                f"{list(pc['mean'])}, std {list(pc['std'])})",
                list(pc["mean"]),
                list(pc["std"]),
            )
    return Pretrained(blob, f"state dict {path}")


def build_pretrained(pretrained: Pretrained, *, dropout: float, **model_kwargs) -> tuple[nn.Module, list[str]]:
    """The model for the data's classes with `pretrained` loaded into all but its head, and the
    dropped keys. For torchvision models the dropout group's layer goes in front of the new head
    after loading, so the pretrained names line up; smallcnn's layer names do not depend on it."""
    from regx.models import MODELS, build_model, set_dropout

    if model_kwargs.get("zoo") == "timm" and model_kwargs["name"] not in MODELS:
        return _build_timm_pretrained(pretrained, dropout=dropout, **model_kwargs)
    ours = model_kwargs["name"] in MODELS
    model = build_model(dropout=dropout if ours else None, **model_kwargs)  # torchvision's: its own dropout
    dropped = load_pretrained(model, pretrained.state_dict)
    net, _ = unwrap(model)
    if pretrained.source.startswith("ImageNet") and hasattr(net, "transform_input"):
        net.transform_input = True  # googlenet/inception: what torchvision sets with its weights
    if not ours:
        set_dropout(net, dropout)
    return model, dropped


def timm_weights_fit(sd: dict, model_kwargs: dict) -> tuple[dict, str, int]:
    """Whether a state dict is a whole timm `model_kwargs["name"]` (checked on the meta device: shapes
    only): the weights (a grey-input regx run's prefix removed), the classifier's path and the weights'
    class count, or a FinetuneError naming the first tensor that does not fit."""
    from regx.models import build_model

    name = model_kwargs["name"]
    with torch.device("meta"):
        sketch = build_model(**{**model_kwargs, "num_classes": 2})
    net, outer = unwrap(sketch)
    if outer and sd and all(k.startswith(outer) for k in sd):  # saved from a grey-input regx run
        sd = OrderedDict((k[len(outer) :], v) for k, v in sd.items())
    head = head_path(sketch)
    if f"{head}.weight" not in sd:
        raise FinetuneError(
            f"no {head}.weight (timm's {name} classifier) among the weights' tensors (first: {', '.join(list(sd)[:3])})"
        )
    classes = sd[f"{head}.weight"].shape[0]
    with torch.device("meta"):
        own = unwrap(build_model(**{**model_kwargs, "num_classes": classes}))[0].state_dict()
    for k, v in sd.items():
        if k not in own:
            raise FinetuneError(f"the weights do not fit timm's {name}: {k} {list(v.shape)} is not one of its tensors")
        if own[k].shape != v.shape:
            raise FinetuneError(
                f"the weights do not fit timm's {name}: {k} is {list(v.shape)} there, {list(own[k].shape)} here"
            )
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise FinetuneError(
            f"the weights do not fit timm's {name}: they lack {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}"
        )
    return sd, head, classes


def _build_timm_pretrained(pretrained: Pretrained, **model_kwargs) -> tuple[nn.Module, list[str]]:
    """A timm model the size of the weights' own head with every tensor loaded, then its head replaced
    for the data's classes by timm's reset_classifier."""
    from regx.models import build_model

    sd, head, classes = timm_weights_fit(pretrained.state_dict, model_kwargs)
    model = build_model(**{**model_kwargs, "num_classes": classes})
    unwrap(model)[0].load_state_dict(sd, strict=False)
    dropped = [f"{k} {list(v.shape)}" for k, v in sd.items() if k.startswith(head + ".")]
    unwrap(model)[0].reset_classifier(model_kwargs["num_classes"])
    return model, dropped


def _as_list(v):
    return list(v) if isinstance(v, list | tuple) else v


def load_pretrained(model: nn.Module, sd: dict) -> list[str]:
    """Load `sd` into `model` except its old head; return the dropped keys ("name shape").

    Every other tensor must fit by name and shape; auxiliary classifiers (googlenet, inception)
    the model does not have are dropped too."""
    net, outer = unwrap(model)
    if outer and sd and all(k.startswith(outer) for k in sd):  # saved from a grey-input regx run
        meta = getattr(sd, "_metadata", None)
        sd = OrderedDict((k[len(outer) :], v) for k, v in sd.items())
        if meta is not None:
            sd._metadata = OrderedDict((k[len(outer) :] if k.startswith(outer) else k, v) for k, v in meta.items())
    head = head_path(model)
    own = net.state_dict()
    head_keys = [k for k in sd if k.startswith(head + ".")]
    aux = [k for k in sd if k.split(".")[0] in ("aux1", "aux2", "AuxLogits") and k not in own]
    dropped = head_keys + aux
    rest = OrderedDict((k, v) for k, v in sd.items() if k not in dropped)
    if hasattr(sd, "_metadata"):  # per-module versions some modules read while loading (mnasnet)
        rest._metadata = sd._metadata
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in rest.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [
        k for k in own if k not in rest and not k.startswith(head + ".") and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in rest if k not in own]
    problems = (
        ([f"shape mismatch: {', '.join(wrong[:3])}"] if wrong else [])
        + ([f"missing: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"] if missing else [])
        + ([f"unexpected: {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}"] if unexpected else [])
    )
    if problems:
        raise FinetuneError("pretrained weights do not fit this model beyond its head: " + "; ".join(problems))
    net.load_state_dict(rest, strict=False)
    return [f"{k} {list(sd[k].shape)}" for k in dropped]


# ---------------------------------------------------------------------------------------------
# What trains when.


def _eval_only(self, mode: bool = True):
    return nn.Module.train(self, False)


def _pin_eval(module: nn.Module) -> None:
    module.train = types.MethodType(_eval_only, module)
    module.eval()


def _unpin(module: nn.Module) -> None:
    module.__dict__.pop("train", None)


class FreezePlan:
    """Which parameters train in each epoch, and the BatchNorm policy that goes with it."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: str,
        freeze: list[str],
        bn: str,
        unfreeze_epoch: int,
        stages: int,
        stage_epochs: int,
    ):
        self.model, self.mode, self.bn = model, mode, bn
        self.unfreeze_epoch, self.stage_epochs = unfreeze_epoch, stage_epochs
        self.params = dict(model.named_parameters())
        prefix = head_prefix(model)
        self.head = {n for n in self.params if n == prefix or n.startswith(prefix + ".")}
        self.always_frozen = set()
        for pattern in freeze:
            hit = {n for n in self.params if any(fnmatch.fnmatch(p, pattern) for p in _prefixes(n))}
            if not hit:
                tops = sorted({n.split(".")[0] for n in self.params})
                raise FinetuneError(
                    f"finetune.freeze pattern {pattern!r} matches no parameter (top-level modules: {', '.join(tops)})"
                )
            self.always_frozen |= hit
        self.units = self._units(max(1, stages))
        chunk = -(-len(self.units) // max(1, stages))
        top_first = list(reversed(self.units))
        self.stages = [top_first[i : i + chunk] for i in range(0, len(top_first), chunk)]
        self.norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _units(self, want: int) -> list[tuple[str, list[str]]]:
        """The backbone as (module name, parameter names) units in forward order; the biggest unit is
        split into its children until there are at least `want` (for stage-by-stage unfreezing)."""
        backbone = [n for n in self.params if n not in self.head]
        net, outer = unwrap(self.model)
        if is_timm(net):
            return self._timm_units(net, outer, backbone, want)

        def group(unit_names):
            out: dict[str, list[str]] = {}
            for n in backbone:
                key = next((u for u in unit_names if n == u or n.startswith(u + ".")), None)
                if key is not None:
                    out.setdefault(key, []).append(n)
            return out

        head = head_prefix(self.model)
        names: list[str] = []

        def add(prefix: str, depth: int) -> None:  # a module that holds the head gives its children instead
            inside = [n for n in backbone if not prefix or n.startswith(prefix + ".")]
            for u in dict.fromkeys(".".join(n.split(".")[:depth]) for n in inside):
                if head.startswith(u + "."):
                    add(u, depth + 1)
                else:
                    names.append(u)

        add("", 1)
        while True:
            units = group(names)
            if len(units) >= want:
                break
            biggest = max(units, key=lambda u: sum(self.params[p].numel() for p in units[u]))
            children = list(dict.fromkeys(".".join(p.split(".")[: biggest.count(".") + 2]) for p in units[biggest]))
            if len(children) <= 1 or children == [biggest]:
                break
            i = names.index(biggest)
            names[i : i + 1] = children
        return [(u, units[u]) for u in names if u in units]

    @staticmethod
    def _timm_units(net: nn.Module, outer: str, backbone: list[str], want: int) -> list[tuple[str, list[str]]]:
        """timm's own stages (its group_matcher: stem, each stage, the pre-head norm), in forward order;
        its finer blocks when `want` is more than the stages. Named by the parameters' common prefix."""
        from timm.models import group_parameters

        on = set(backbone)
        for coarse in (True, False):
            groups = group_parameters(net, net.group_matcher(coarse=coarse))
            units = [[outer + n for n in names if outer + n in on] for names in groups.values()]
            units = [u for u in units if u]
            if len(units) >= want:
                break

        def name(unit: list[str]) -> str:  # the shortest module paths that hold this unit and no other's
            mine = set(unit)
            others = [n for n, _ in net.named_parameters() if outer + n not in mine]
            by_top: dict[str, list[list[str]]] = {}
            for p in unit:
                rel = p[len(outer) :].split(".")
                by_top.setdefault(rel[0], []).append(rel)
            names = []
            for top, rels in by_top.items():
                common = os.path.commonprefix(rels)
                if len(common) == len(rels[0]):  # one parameter: its module
                    common = common[:-1]
                while len(common) > 1 and not any(o.startswith(".".join(common[:-1]) + ".") for o in others):
                    common = common[:-1]
                names.append(outer + (".".join(common) or top))
            return "+".join(names)

        return [(name(u), u) for u in units]

    def trainable_at(self, epoch: int) -> set[str]:
        everything = set(self.params)
        if self.mode in ("scratch", "full"):
            on = everything
        elif self.mode == "linear_probe":
            on = set(self.head)
        else:  # gradual
            on = set(self.head)
            if epoch > self.unfreeze_epoch:
                done = min(len(self.stages), (epoch - self.unfreeze_epoch - 1) // self.stage_epochs + 1)
                for stage in self.stages[:done]:
                    for _, names in stage:
                        on |= set(names)
        return on - self.always_frozen

    def apply(self, epoch: int) -> str:
        """Set requires_grad and the BatchNorm policy for `epoch`; describe what trains."""
        on = self.trainable_at(epoch)
        for n, p in self.params.items():
            p.requires_grad_(n in on)
        for _, m in self.norms:
            frozen = any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())
            if frozen and self.bn == "frozen":
                _pin_eval(m)
            else:
                _unpin(m)
        return self.describe(on)

    def describe(self, on: set[str]) -> str:
        if on == set(self.params):
            return "all"
        if not on:
            return "nothing"
        parts = [head_prefix(self.model)] if self.head & on else []
        trainable = [u for u, names in self.units if all(n in on for n in names)]
        frozen = [u for u, names in self.units if not any(n in on for n in names)]
        if not trainable:
            return "+".join(parts) or "some"
        if len(frozen) < len(trainable):
            return "all but " + ",".join(frozen)
        return "+".join(parts + list(reversed(trainable)))


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def lr_mult(model: nn.Module, backbone_mult: float):
    """name -> learning-rate multiplier: the head at 1, the rest at backbone_mult."""
    prefix = head_prefix(model)
    return lambda name: 1.0 if name == prefix or name.startswith(prefix + ".") else backbone_mult

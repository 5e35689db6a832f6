"""Bad input as one line: Hydra's and OmegaConf's failures explained, and a sweep checked up front.

`preflight(overrides)` composes and validates every value a command line names (each value of a
sweep at least once) before any run directory is made, so `regx train` with a typo exits 2 at once.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Iterator

from omegaconf import OmegaConf

from regx.config import (
    AUG_OPS,
    GROUPS,
    ConfigError,
    compose,
    conf_dir,
    flat_keys,
    group_options,
    unread_by_option,
    unread_settings,
    validate,
)

# Optional Hydra plugins (pip install 'regx[sweeps]'): an override naming one -> the module it needs.
PLUGINS = {
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=submitit": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
}


def _closest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


# what other tools call regx's keys (torch, timm's train.py, Lightning): the key a user means by them
KEY_ALIASES = {
    "weight_decay": "wd",
    "learning_rate": "lr",
    "max_epochs": "epochs",
    "num_epochs": "epochs",
    "smoothing": "label_smoothing",
    "drop_rate": "dropout.p",
    "drop_path_rate": "model.drop_path",
    "mixup_alpha": "aug.mixup.alpha",
}


def _closest_key(key: str, known: list[str]) -> str:
    """'; did you mean ...?' for an unknown key: a key of the same last name elsewhere first (optim.lr ->
    lr: the rate is top-level), then another tool's name for one of regx's, then the closest spelling."""
    leaf = key.rsplit(".", 1)[-1]
    same = sorted(
        (k for k in known if k.rsplit(".", 1)[-1] == leaf and k != key and not k.startswith("ablate.")),
        key=lambda k: (k.count("."), k),
    )
    alias = KEY_ALIASES.get(leaf)
    if same:
        return f"; did you mean '{same[0]}'?"
    if alias in known:
        return f"; did you mean '{alias}'?"
    return _closest(key, known)


def explain(exc: BaseException, overrides: list[str], config_dir: str | None = None) -> str:
    """One line for a composition error: the key, the value given, and what would be valid."""
    chain = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    m = re.search(r"In '([^/']+)/([^']+)': Could not override '(\w+)@\1\.\3'", text)
    if m:  # an option file of a group whose defaults override other groups: its package is its group's
        group, option, other = m.groups()
        return (
            f"{group}/{option}.yaml lacks `# @package _global_` as its first line: without it its keys and its "
            f"override of /{other} land under {group}.* instead of setting the run's (docs/guide.md shows one)"
        )
    m = re.search(r"Could not (?:find|load) '([^/']+)/([^']+)'", text)  # load: an option inside a list
    if m:
        group, option = m.groups()
        options = group_options(group, config_dir)
        if options:
            return f"unknown option {group}={option}{_closest(option, options)} (valid options: {', '.join(options)})"
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' (?:is )?not in", text)
    if m and re.search(r"not in struct|not in '|Could not append", text):
        key = m.group(1)
        full = re.search(r"full_key: (\S+)", text)
        key = full.group(1) if full else key
        chosen = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key.split(".")[0]), None)
        if key.split(".")[0] == "experiment" and chosen:  # an experiment file's keys, packaged under its group
            return (
                f"experiment/{chosen}.yaml lacks `# @package _global_` as its first line: without it its keys "
                "land under experiment.* instead of setting the run's (docs/guide.md shows one)"
            )
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            known = flat_keys(compose(rest))
        except Exception:
            known = flat_keys(compose())
        return f"unknown config key '{key}'{_closest_key(key, known)}"
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
    unquoted = next((o for o in overrides if not o.isascii() and "=" in o and "'" not in o and '"' not in o), None)
    if (m or "NoViableAlt" in text) and unquoted:  # Hydra's grammar takes other scripts only inside quotes
        key, _, value = unquoted.partition("=")
        return (
            f"cannot parse override '{unquoted}': Hydra reads letters beyond ASCII only inside quotes: "
            f"{key}='{value}' (and quote that for the shell: \"{key}='{value}'\")"
        )
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


def check_keys(
    overrides: list[str], config_dir: str | None = None, primary: str | None = None, name: str = "train"
) -> None:
    """`+key`, `++key` and `~key` name keys of the schema: a typo added with + is an error with
    did-you-mean, not a silent new key (`+notes.KEY=VALUE` is the place for free-form notes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(explain(exc, overrides)) from exc
    own_groups = _searched_groups(overrides, config_dir)
    special = [
        o
        for o in parsed
        if (o.is_add() or o.is_force_add() or o.is_delete())
        and not o.key_or_group.startswith(("hydra.", "hydra/", "notes.", "ablate.arms."))
        and "/" not in o.key_or_group
        and o.key_or_group not in GROUPS
        and o.key_or_group not in own_groups
    ]
    if not special:
        return
    rest = [o.input_line for o in parsed if o not in special and not o.is_sweep_override()]
    known = flat_keys(compose(rest, config_dir, primary, name))
    for o in special:
        key, value = o.key_or_group, o.input_line.split("=", 1)[-1]
        if o.is_delete() and key in known:
            raise ConfigError(
                f"~{key}: regx's config needs every key of its schema; set a value instead "
                f"(regx train --cfg job shows them)"
            )
        if o.is_add() and key in known:
            raise ConfigError(f"+{key}: {key} is already in the config; set it with {key}={value}")
        if key not in known:
            raise ConfigError(
                f"unknown config key '{key}'{_closest(key, known)} (free-form notes go under +notes.KEY=VALUE)"
            )


def _searched_groups(overrides: list[str], config_dir: str | None) -> set[str]:
    """Config groups of a user's own config folders (-cd, hydra.searchpath=[file://...]): `+GROUP=X`
    adds one of them (regx ablate's arms are such a group)."""
    folders = [config_dir] if config_dir else []
    for o in overrides:
        if o.startswith("hydra.searchpath="):
            folders += [p.strip().removeprefix("file://") for p in o.split("=", 1)[1].strip("[]").split(",")]
    return {d.name for f in folders if f and os.path.isdir(f) for d in os.scandir(f) if d.is_dir()}


def _installed(module: str) -> bool:
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


def preflight(
    overrides: list[str],
    config_dir: str | None = None,
    primary: str | None = None,
    name: str = "train",
    sources: bool = True,
) -> list[str]:
    """Compose and check every value the overrides name, as Hydra will compose them (`config_dir`,
    `primary`, `name`: regx train's -cd, -cp, -cn); raise ConfigError with one line. A setting that a
    sweep's chosen options leave unread is refused only where no job of the sweep reads it
    (`-m optim=sgd,adamw optim.momentum=0.8` is meant for the SGD jobs); returned are the warnings that
    name it for the others."""
    check_plugins(overrides)
    check_keys(overrides, config_dir, primary, name)
    sweeps_data = any(o.split("=", 1)[0] == "data" and "," in o for o in overrides)
    checked: set = set()
    variants = expand_sweep(overrides)
    sweep = len(variants) > 1
    unread: list[dict[str, str]] = []  # per variant: what it leaves unread
    for variant in variants:
        try:
            cfg = compose(variant, config_dir, primary, name)
        except ConfigError:
            raise
        except Exception as exc:  # Hydra and OmegaConf raise many kinds; all mean bad input here
            raise ConfigError(explain(exc, variant, config_dir)) from exc
        if cfg.data.path and cfg.data.name != "imagefolder" and not sweeps_data:  # a sweep may set it for some jobs
            raise ConfigError(
                f"data.path={cfg.data.path} is set but data={cfg.data.name} does not read a folder: "
                "add data=imagefolder"
            )
        try:
            check(cfg, unread=not sweep)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(explain(exc, variant)) from exc
        if sweep:
            unread.append({**dict(unread_settings(cfg)), **dict(_unread_named(variant, cfg))})
        else:
            _check_switches(variant, cfg)
        if cfg.data.train_size is not None:
            _check_train_size(cfg)
        if cfg.diagnose.corrupt:
            _check_corruption_colour(cfg)
        if cfg.model.zoo == "timm" and cfg.model.name != "smallcnn":
            _check_timm_input(cfg)
        if sources:  # regx check-data surveys the folder itself, every problem at once
            _check_sources(cfg, checked)
    warnings = {}
    for found in unread:
        for key, why in found.items():
            if all(key in other for other in unread):
                raise ConfigError(why)  # no job reads it
            setting, _, reason = why.partition(" is not read")  # "KEY=V", " by OPTION: ..." or ": WHY; add ..."
            reason = reason.removeprefix(" by ").removeprefix(": ").split("; add ")[0]
            reason = reason.removesuffix(" (remove it, or choose that option)")
            warnings.setdefault(key, f"some jobs of this sweep do not read {setting} ({reason}); they run without it")
    return list(warnings.values())


def _check_switches(overrides: list[str], cfg) -> None:
    """A setting named on the command line for something that is off would be a silent no-op: refused
    with what turns it on. `aug.rotate.degrees=30` while aug.rotate.p is 0 (the chosen aug option does
    not rotate), `early_stop.min_delta` without a patience, `data.label_noise_kind` without noise,
    `diagnose.corrupt_severities` without corruptions, `clip_mode` without clip_grad, `compile_mode`
    without compile, `sched.restart` on a new run, smallcnn's layers for another model and
    `model.small_input` for smallcnn. A switch named too is deliberate, and allowed (`regx path
    aug.rotate.p=0,0.5 aug.rotate.degrees=30` at 0); so is what an option file brings with it
    (aug=flip_rotate aug.rotate.p=0)."""
    for _, why in _unread_named(overrides, cfg):
        raise ConfigError(why)


def _unread_named(overrides: list[str], cfg) -> Iterator[tuple[str, str]]:
    """(key, why) for each setting that _check_switches refuses."""
    named = [o.lstrip("+").split("=", 1)[0] for o in overrides if not o.startswith("~")]
    for key in named:
        why = unread_by_option(cfg, key)  # named at its default (config's unread_settings has any other value)
        if why is not None:
            yield key, f"{key}={OmegaConf.select(cfg, key)!r} is not read by {why}"
            continue
        rule = _switch(key, cfg)
        if rule is None:
            continue
        switch, read, why = rule
        if not read and switch not in named:
            yield key, f"{key}={OmegaConf.select(cfg, key)!r} is not read: {why}"


def _switch(key: str, cfg) -> tuple[str | None, bool, str] | None:
    """(the switch that turns `key` on, None where only another model reads it; whether it is on; why
    not, with what turns it on) for a setting that something can switch off, else None."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "aug" and parts[1] in AUG_OPS and parts[2] != "p":
        op = parts[1]
        if cfg.aug[op].p > 0:
            return f"aug.{op}.p", True, ""
        on = [  # the option files are read only for the message
            f"aug={f.stem}"
            for f in sorted((conf_dir() / "aug").glob("*.yaml"))
            if float((_yaml(f).get(op) or {}).get("p", 0)) > 0
        ]
        return (
            f"aug.{op}.p",
            False,
            f"aug.{op}.p is 0, so no image gets {op}; add aug.{op}.p (e.g. 0.5)"
            + (f" or an option that applies it ({', '.join(on)})" if on else ""),
        )
    if key == "early_stop.min_delta":
        e = cfg.early_stop
        return "early_stop.patience", e.patience > 0, "early_stop.patience is 0, so no run stops early; add it (e.g. 5)"
    if key == "data.label_noise_kind":
        n = cfg.data.label_noise
        return "data.label_noise", n > 0, "data.label_noise is 0, so no label is changed; add it (e.g. 0.2)"
    if key == "diagnose.corrupt_severities":
        on = len(cfg.diagnose.corrupt) > 0
        return "diagnose.corrupt", on, "diagnose.corrupt is empty, so nothing is corrupted; add diagnose.corrupt=[all]"
    if key == "sched.restart":
        why = "a new run starts its schedule anyway; it is for a run trained further"
        return None, False, f"{why} (regx resume RUN epochs=N sched.restart=true)"
    if key == "clip_mode":
        return "clip_grad", cfg.clip_grad > 0, "clip_grad is 0, so no gradient is clipped; add it (e.g. 1)"
    if key == "compile_mode":
        return "compile", bool(cfg.compile), "compile is false, so nothing is compiled; add compile=true"
    if key in ("model.channels", "model.convs_per_block", "model.fc"):
        m = cfg.model
        return None, m.name == "smallcnn", f"it shapes model=smallcnn, and {m.name} has its own layers"
    if key == "model.small_input":
        m = cfg.model
        return None, m.name != "smallcnn", "it swaps a ResNet's stem, and smallcnn has none (it suits any size)"
    return None


def _yaml(path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path)) or {}


def _check_sources(cfg, checked: set) -> None:
    """What a run reads before it trains and a run directory would otherwise record as a failure: an
    image folder's structure (class folders, none empty) and ImageNet weights, cached or reachable.
    `checked`: what an earlier variant of the same sweep checked already."""
    from regx.data import DataError
    from regx.finetune import FinetuneError, check_imagenet

    d, f = cfg.data, cfg.finetune
    if d.name == "imagefolder" and ("folder", d.path) not in checked:
        from regx.data.folders import scan_folder

        checked.add(("folder", d.path))
        try:
            scan_folder(d.path)
        except DataError as exc:
            raise ConfigError(str(exc)) from None
    if f.name != "scratch" and f.weights == "imagenet" and ("weights", cfg.model.name) not in checked:
        checked.add(("weights", cfg.model.name))
        try:
            check_imagenet(cfg.model.name, timm_model=cfg.model.zoo == "timm" and cfg.model.name != "smallcnn")
        except FinetuneError as exc:
            raise ConfigError(str(exc)) from None
    if f.weights and f.weights != "imagenet" and ("file", f.weights, cfg.model.name) not in checked:
        checked.add(("file", f.weights, cfg.model.name))
        _check_weights_fit(cfg)


def _check_weights_fit(cfg) -> None:
    """finetune.weights=FILE or RUN_DIR: loaded into the model as the run will build it (on the CPU,
    before any data): a file that does not load, or a tensor that does not fit, is named here."""
    from omegaconf import OmegaConf

    from regx.data import image_channels
    from regx.finetune import FinetuneError, build_pretrained, load_source
    from regx.models import model_kwargs

    d = cfg.data
    try:
        pretrained = load_source(cfg.finetune.weights, cfg.model.name, OmegaConf.to_container(cfg.model, resolve=True))
        size = d.image_size or pretrained.image_size or NATIVE_SIZE.get(d.name) or 32
        classes = d.num_classes if d.name == "shapes" else 10  # the head is replaced whatever its size
        kwargs = model_kwargs(cfg, num_classes=classes, in_channels=image_channels(d) or 3, image_size=size)
        build_pretrained(pretrained, **kwargs)
    except FinetuneError as exc:
        text = str(exc)
        prefix = "" if text.startswith("finetune.") else f"finetune.weights={cfg.finetune.weights}: "
        raise ConfigError(prefix + text) from None


NATIVE_SIZE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}  # data.image_size=null


def _check_timm_input(cfg) -> None:
    """A timm model built as the run will build it takes the run's image size: checked with a
    forward pass on the meta device (shapes only), so a model too deep for small images stops here."""
    import torch

    from regx.models import ModelError, build_model, model_kwargs, probe, timm_pretrained_cfg

    size = cfg.data.image_size
    if size is None and cfg.finetune.weights == "imagenet":
        size = timm_pretrained_cfg(cfg.model.name).get("input_size", (3, None, None))[-1]
    size = size or NATIVE_SIZE.get(cfg.data.name)
    channels = (
        1
        if cfg.data.name in ("mnist", "fashion_mnist")
        else (cfg.data.channels or 3)
        if cfg.data.name == "shapes"
        else 3
    )
    kwargs = model_kwargs(cfg, num_classes=2, in_channels=channels, image_size=size)
    try:
        with torch.device("meta"):
            model = build_model(**kwargs)
        if size:
            probe(model, size)
    except ModelError as exc:
        raise ConfigError(f"model.name={cfg.model.name} (timm): {exc}") from None
    weights = cfg.finetune.weights
    if weights and weights != "imagenet":  # a file or run: its tensors must fit (imagenet's come from timm)
        from omegaconf import OmegaConf

        from regx.finetune import FinetuneError, load_source, timm_weights_fit

        try:
            timm_weights_fit(load_source(weights, cfg.model.name, OmegaConf.to_container(cfg.model)).state_dict, kwargs)
        except FinetuneError as exc:
            message = str(exc)
            raise ConfigError(
                message if message.startswith("finetune.weights=") else f"finetune.weights={weights}: {message}"
            ) from None


def _check_corruption_colour(cfg) -> None:
    """A corruption that changes colour only on colour images (where the data says so before loading)."""
    from regx.corrupt import CorruptionError, parse_corruptions
    from regx.data import image_channels

    channels = image_channels(cfg.data)
    if channels is not None:
        try:
            parse_corruptions(",".join(cfg.diagnose.corrupt), channels)
        except CorruptionError as exc:
            raise ConfigError(f"diagnose.corrupt: {exc}") from None


def _check_train_size(cfg) -> None:
    """data.train_size within the training images the data has (counted without loading them)."""
    from regx.data import DataError, train_count

    try:
        train_count(cfg.data)
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def check(cfg, unread: bool = True) -> None:
    """A composed config, whole: every value in its range (config.validate), then the model it names.
    `unread=False`: keys the chosen options do not read are the caller's to weigh (a sweep's preflight)."""
    validate(cfg, unread=unread)
    check_model(cfg.model)
    check_corruptions(cfg.diagnose)


def check_corruptions(d) -> None:
    """diagnose.corrupt names corruptions regx.corrupt defines (whether the images have the colour a
    corruption needs: preflight, where the data says before loading, else train.build)."""
    from regx.corrupt import CORRUPTIONS

    for name in d.corrupt:
        if name != "all" and name not in CORRUPTIONS:
            raise ConfigError(f"diagnose.corrupt: unknown corruption '{name}' (known: all, {', '.join(CORRUPTIONS)})")


def check_model(m) -> None:
    """A model regx builds: its own, a torchvision classification model, or (model.zoo=timm) a timm
    model, with drop path only where the model has residual branches to drop. torchvision and timm
    are imported only for a name that is not regx's."""
    from regx.models import MODELS, TV_DROP_PATH, TV_RESNETS, ModelError, check_timm_name, torchvision_names

    if m.name in MODELS:
        if m.drop_path:
            raise ConfigError(
                f"model.drop_path={m.drop_path}: {m.name} is a plain stack with no residual branches, so "
                "there is no path to drop (use dropout, or a residual model)"
            )
        return
    if m.zoo == "timm":
        try:
            check_timm_name(m.name)
        except ModelError as exc:
            raise ConfigError(str(exc)) from None
        if m.small_input:
            raise ConfigError(
                f"model.small_input=true swaps a torchvision ResNet stem; timm's {m.name} has its own: "
                "set model.small_input=false"
            )
        return
    names = torchvision_names()
    if m.name not in names:
        import difflib

        close = difflib.get_close_matches(m.name, [*MODELS, *names], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        if _timm_has(m.name):
            hint = f"; timm has it: model=timm model.name={m.name}"
        raise ConfigError(
            f"model.name={m.name!r} is neither regx's ({', '.join(MODELS)}) nor a torchvision "
            f"classification model{hint}"
        )
    if m.drop_path is not None and not m.name.startswith(TV_DROP_PATH + TV_RESNETS):
        raise ConfigError(
            f"model.drop_path={m.drop_path}: torchvision's {m.name} has no drop path (its ResNets and "
            f"{', '.join(TV_DROP_PATH)} models do; timm's take it: model=timm model.name=...)"
        )


def _timm_has(name: str) -> bool:
    if importlib.util.find_spec("timm") is None:
        return False
    import timm

    return timm.is_model(name)

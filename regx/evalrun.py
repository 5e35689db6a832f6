"""`regx eval RUN_DIR`: a run's best (or last) checkpoint on the test split, or on other data:
accuracy, per-class accuracy and the confusion matrix, into eval.json and confusion.png."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from regx import checkpoint, config
from regx.checkpoint import Checkpoint, CorruptCheckpoint
from regx.corrupt import parse_corruptions, parse_severities
from regx.errors import check, explain
from regx.files import slug, write_json


class EvalError(ValueError):
    """Bad input to `regx eval`: one line."""


def eval_config(saved: dict, overrides: list[str]):
    """The run's config with `data=OPTION` and `data.*`/`device`/`precision`/`eval_batch_size`/`tta` overrides
    applied."""
    cfg = OmegaConf.merge(OmegaConf.structured(config.TrainConfig), saved)
    allowed = ("data.", "device", "eval_batch_size", "precision", "channels_last", "tta")
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            raise EvalError(f"cannot parse override '{o}': expected key=value")
        if key == "data":
            options = config.group_options("data")
            if value not in options:
                raise EvalError(f"unknown option data={value} (valid options: {', '.join(options)})")
            cfg.data = OmegaConf.merge(
                OmegaConf.structured(config.DataConfig), OmegaConf.load(config.conf_dir() / "data" / f"{value}.yaml")
            )
        elif not key.startswith(allowed):
            raise EvalError(
                f"regx eval takes data=..., data.KEY=..., device, precision, eval_batch_size and tta; not '{key}'"
            )
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o for o in overrides if not o.startswith("data=")]))
    except Exception as exc:
        raise EvalError(explain(exc, overrides)) from exc
    check(cfg)
    return cfg


def _checkpoint(run_dir: Path, last: bool) -> tuple[Path, Checkpoint]:
    if not run_dir.is_dir():
        raise EvalError(f"no such run directory: {run_dir}")
    path = run_dir / "checkpoints" / ("last.pt" if last else "best.pt")
    if not path.is_file():
        raise EvalError(f"{path} not found: {run_dir} is not a regx run directory, or no epoch has finished yet")
    try:
        return path, checkpoint.read(path)
    except CorruptCheckpoint as exc:
        raise EvalError(str(exc)) from None


def build_from_checkpoint(ckpt: Checkpoint, cfg, device: torch.device):
    """The checkpoint's model, as it trained (transform_input of googlenet/inception's ImageNet weights)."""
    from regx.finetune import unwrap
    from regx.models import build_model, model_kwargs

    model = build_model(
        **model_kwargs(cfg, num_classes=len(ckpt.classes), in_channels=ckpt.in_channels, image_size=ckpt.image_size)
    )
    model.load_state_dict(ckpt.weights())
    net, _ = unwrap(model)
    if cfg.finetune.weights == "imagenet" and hasattr(net, "transform_input"):
        net.transform_input = True
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)


def per_class(cm: torch.Tensor, classes: list[str]) -> list[dict]:
    """Each class's images, correct ones, accuracy, and the class it is most often taken for."""
    rows = []
    for i, name in enumerate(classes):
        n, right = int(cm[i].sum()), int(cm[i, i])
        wrong = cm[i].clone()
        wrong[i] = -1
        j = int(wrong.argmax())
        rows.append(
            {
                "class": name,
                "n": n,
                "correct": right,
                "accuracy": right / n if n else None,
                "most_confused_with": classes[j] if int(cm[i, j]) > 0 else None,
                "confused_count": int(cm[i, j]) if int(cm[i, j]) > 0 else 0,
            }
        )
    return rows


def labelled_images(cfg, split: str | None, own: bool = False):
    """(images as a Split, the class name of each label index, the split scored, its channels) for
    eval: `split` train, val, test or all; by default test, else val (as the run was tested). `own`:
    the data is the run's own, so a flat folder's validation images are the ones the run held out (its
    data.seed and val_fraction carve them again), and `all` says it includes the training images."""
    from regx.data import Split, load_config
    from regx.data.folders import file_split, scan_labelled

    if cfg.data.name == "imagefolder":
        found = scan_labelled(cfg.data.path)
        if own and list(found) == ["all"] and split != "all":
            if split == "test":
                raise EvalError(
                    f"data.path={cfg.data.path} has no test/ folder: the images this run held out are its val "
                    "split (the default), and --split all scores every image, the training ones too"
                )
            return _own_split(cfg, split or "val")
        if split == "all" or list(found) == ["all"] and split is None:
            name, items = "all", [i for v in found.values() for i in v]
        else:
            name = split or next((s for s in ("test", "val") if found.get(s)), None)
            if name is None or name not in found:
                raise EvalError(
                    f"data.path={cfg.data.path} has no {split or 'test/ or val/'} folder "
                    f"(it has {', '.join(found)}): --split all scores every image"
                )
            items = found[name]
        names = sorted({c for _, c in items})
        labels = torch.tensor([names.index(c) for _, c in items], dtype=torch.long)
        return file_split([f for f, _ in items], labels, cfg.data.image_size, cfg.data.decode), names, name, 3
    data = load_config(cfg.data)
    parts = {"train": data.train, "val": data.val, "test": data.test}
    if split == "all":
        present = [p for p in parts.values() if p is not None and len(p)]
        if data.streaming:
            y = torch.cat([p.y for p in present])
            joined = file_split([f for p in present for f in p.paths], y, data.image_size, present[0].files.how)
        else:
            joined = Split(y=torch.cat([p.y for p in present]), x=torch.cat([p.x for p in present]))
        return joined, data.classes, "all", data.channels
    name = split or ("test" if data.test is not None and len(data.test) else "val")
    if parts[name] is None or not len(parts[name]):
        raise EvalError(f"data={cfg.data.name} has no {name} split")
    return parts[name], data.classes, name, data.channels


def _own_split(cfg, split: str):
    """A flat folder's split as the run made it: the same files held out for validation."""
    from regx.data import load_config

    data = load_config(cfg.data)
    part = {"train": data.train, "val": data.val}[split]
    if part is None or not len(part):
        raise EvalError(f"data.path={cfg.data.path}: the run has no {split} images")
    return part, data.classes, split, data.channels


def match_classes(names: list[str], classes: list[str], unknown: bool) -> tuple[torch.Tensor, list[str], list[str]]:
    """Data labels to the model's class indices by name (-1: a class the model does not know); the
    data's unknown classes and the model's classes the data lacks."""
    strangers = [n for n in names if n not in classes]
    if strangers and not unknown:
        raise EvalError(
            f"the data has class{'es' * (len(strangers) > 1)} {', '.join(strangers)} that the model does "
            f"not know (it knows {', '.join(classes)}); --unknown scores them apart from the accuracy"
        )
    remap = torch.tensor([classes.index(n) if n in classes else -1 for n in names], dtype=torch.long)
    return remap, strangers, [c for c in classes if c not in names]


def eval_run(
    run_dir: Path,
    overrides: list[str],
    *,
    last: bool = False,
    out: Path | None = None,
    split: str | None = None,
    unknown: bool = False,
    corrupt: str | None = None,
    severity: str = "1..5",
) -> dict:
    """Evaluate, print the tables, write eval.json and confusion.png (with `corrupt`, also the accuracy
    under each corruption and severity, and corruption.png); return the result dict."""
    from regx.console import console
    from regx.data import iterate
    from regx.device import pick_device, pick_precision
    from regx.engine import Pipeline, autocast, evaluate

    run_dir = Path(run_dir)
    path, ckpt = _checkpoint(run_dir, last)
    cfg = eval_config(ckpt.config, overrides)
    device = pick_device(cfg.device)
    own = not any(o.partition("=")[0].startswith("data") for o in overrides)  # the run's own data
    images, names, split_name, channels = labelled_images(cfg, split, own)
    if own and split_name == "all":  # say so wherever the figure goes: it is not a held-out score
        split_name = "all (training images included)"
    classes = list(ckpt.classes)
    remap, strangers, absent = match_classes(names, classes, unknown)
    norm = ckpt.norm
    if ckpt.in_channels != channels:
        raise EvalError(f"the model takes {ckpt.in_channels}-channel images but data={cfg.data.name} has {channels}")
    corruptions, severities = (
        (parse_corruptions(corrupt, channels), parse_severities(severity)) if corrupt else ([], [])
    )
    skipped = [0]

    def batches(part):  # labels by name; images of classes the model does not know are counted apart
        for xb, yb in iterate(part, cfg.eval_batch_size, device=device, workers=cfg.data.workers):
            y = remap.to(yb.device)[yb]
            skipped[0] += int((y < 0).sum())
            yield xb[y >= 0], y[y >= 0]

    pipeline = Pipeline(
        mean=torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1),
        std=torch.tensor(norm["std"], device=device).view(1, -1, 1, 1),
        channels_last=cfg.channels_last,
        tta=cfg.tta == "flip",
    )
    model, amp = build_from_checkpoint(ckpt, cfg, device), autocast(device, pick_precision(cfg.precision, device))
    ev = evaluate(model, batches(images), pipeline=pipeline, amp=amp, num_classes=len(classes), keep_logits=True)
    total, unknown_n = int(ev.matrix.sum()), skipped[0]  # before other passes count theirs
    scaled = _temperature(cfg, split_name, classes, model, pipeline, amp, ev, batches, own)
    result = {
        "run_dir": str(run_dir),
        "checkpoint": str(path),
        "epoch": ckpt.epoch,
        "data": cfg.data.name,
        "overrides": overrides,
        "split": split_name,
        "tta": cfg.tta,
        "n": total,
        "accuracy": int(ev.matrix.diag().sum()) / max(total, 1),
        "loss": ev.loss,
        "classes": classes,
        "per_class": per_class(ev.matrix, classes),
        "confusion": ev.matrix.tolist(),
        "unknown": {"classes": strangers, "n": unknown_n},
        "absent_classes": absent,
        "calibration": _calibration(ev, scaled),
    }
    if corruptions:
        result["corruption"] = _robustness(ckpt, model, pipeline, amp, lambda: batches(images), corruptions, severities)
    suffix = (
        ("_last" if last else "")
        + (f"_{split}" if split else "")
        + ("_" + slug(",".join(overrides), 60) if overrides else "")
    )
    written = _write_outputs(result, Path(out) if out is not None else run_dir, suffix, f"{run_dir.name}: {path.name}")
    _print(result, console())
    print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}")
    return result


def _calibration(ev, scaled: dict) -> dict:
    """eval.json's calibration block: the evaluated split's ECE, MCE, Brier, NLL and reliability bins, and
    (`scaled`) the same after temperature scaling."""
    return {
        "ece": ev.ece,
        "mce": ev.mce,
        "brier": ev.brier,
        "nll": ev.loss,
        "bins": ev.bin_count,
        "bin_confidence": ev.bin_confidence,
        "bin_accuracy": ev.bin_accuracy,
        **scaled,
    }


def _write_outputs(result: dict, out: Path, suffix: str, who: str) -> list[Path]:
    """eval{suffix}.json, confusion, reliability and (with corruptions) corruption PNGs in `out`; `who`: the
    run and checkpoint, for the figures' titles."""
    from regx.plots import confusion_plot, corruption_plot, reliability_plot

    on = f"{result['data']} {result['split']}"
    written = [out / f"eval{suffix}.json", out / f"confusion{suffix}.png", out / f"reliability{suffix}.png"]
    write_json(written[0], result)
    reliability_plot(written[2], result["calibration"], f"{who} on {on}")
    confusion_plot(
        written[1],
        torch.tensor(result["confusion"]),
        result["classes"],
        f"{who} (epoch {result['epoch']}) on {on}, accuracy {100 * result['accuracy']:.2f}%",
    )
    if result.get("corruption"):
        written.append(out / f"corruption{suffix}.png")
        corruption_plot(written[-1], result["corruption"], result["accuracy"], f"{who} on {on}, corrupted")
    return written


def _robustness(ckpt, model, pipeline, amp, batches, corruptions, severities) -> dict:
    """The split's accuracy under each corruption and severity (engine.robustness), with a line per one.
    `batches()`: a fresh pass over the split's labelled batches."""
    from regx.console import console
    from regx.corrupt import SMALL_UP_TO
    from regx.engine import robustness

    con = console()
    size = ckpt.image_size
    con.print(
        f"scoring {len(corruptions)} corruption(s) x {len(severities)} severities as "
        f"{'CIFAR-10-C' if size <= SMALL_UP_TO else 'ImageNet-C'} defines them ({size}-pixel images)"
    )
    out = robustness(
        model,
        batches,
        pipeline=pipeline,
        amp=amp,
        corruptions=corruptions,
        severities=severities,
        progress=lambda name, s, acc: con.print(f"  {name} severity {s}: {100 * acc:.2f}%"),
    )
    return {
        "definitions": "CIFAR-10-C" if size <= SMALL_UP_TO else "ImageNet-C",
        "image_size": size,
        "severities": list(severities),
        **out,
    }


def _print(result: dict, con) -> None:
    from regx.console import print_table

    con.print(
        f"{result['data']} {result['split']} split, {result['n']} images: accuracy "
        f"{100 * result['accuracy']:.2f}%, loss {result['loss']:.4f} ({Path(result['checkpoint']).name}, "
        f"epoch {result['epoch']}{', each image and its mirror' if result.get('tta') == 'flip' else ''})"
    )
    c = result["calibration"]
    line = (
        f"calibration: ECE {100 * c['ece']:.2f}% (15 bins), MCE {100 * c['mce']:.2f}%, Brier {c['brier']:.4f}, "
        f"NLL {c['nll']:.4f}"
    )
    if c.get("temperature") is not None:
        line += (
            f"; temperature {c['temperature']:.3f} (fitted on {c['fitted_on']}): ECE {100 * c['scaled_ece']:.2f}%, "
            f"NLL {c['scaled_nll']:.4f}"
        )
    con.print(line)
    rows = [
        [
            c["class"],
            str(c["n"]),
            "-" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%",
            f"{c['most_confused_with']} ({c['confused_count']})" if c["most_confused_with"] else "-",
        ]
        for c in result["per_class"]
    ]
    print_table(
        "per-class accuracy", ["class", "images", "accuracy", "most confused with"], rows, right={"images", "accuracy"}
    )
    if result["unknown"]["n"]:
        print(
            f"{result['unknown']['n']} images of classes the model does not know "
            f"({', '.join(result['unknown']['classes'])}): not in the accuracy"
        )
    if result["absent_classes"]:
        print(f"classes the model knows that the data does not have: {', '.join(result['absent_classes'])}")
    if "corruption" in result:
        _print_corruption(result["corruption"], result["accuracy"])
    if len(result["classes"]) <= 12:
        header = ["true \\ predicted", *map(str, range(len(result["classes"])))]
        rows = [
            [f"{i} {name}", *map(str, row)] for i, (name, row) in enumerate(zip(result["classes"], result["confusion"]))
        ]
        print_table("confusion matrix (rows: true class, columns: predicted)", header, rows, right=set(header[1:]))


def _temperature(cfg, split_name: str, classes, model, pipeline, amp, ev, batches, own: bool) -> dict:
    """Temperature scaling: T fitted on the validation split's logits (minimum NLL), the evaluated split's
    calibration after dividing its logits by T. {} where there is no validation split to fit on.
    `batches(part)`: a split's labelled batches on the device."""
    import torch.nn.functional as F

    from regx.engine import calibration, evaluate, fit_temperature

    if split_name == "val":
        fit, where = ev, "this split"
    else:
        try:
            val, names, _, _ = labelled_images(cfg, "val", own)
        except EvalError:
            return {}
        if list(names) != list(classes) or not len(val):
            return {}
        fit = evaluate(model, batches(val), pipeline=pipeline, amp=amp, keep_logits=True)
        where = f"the val split, {len(fit.labels)} images"
    t = fit_temperature(fit.logits, fit.labels)
    scaled = calibration(ev.logits / t, ev.labels)
    return {
        "temperature": t,
        "fitted_on": where,
        "scaled_ece": scaled["ece"],
        "scaled_mce": scaled["mce"],
        "scaled_brier": scaled["brier"],
        "scaled_nll": float(F.cross_entropy(ev.logits / t, ev.labels)),
    }


def _print_corruption(c: dict, clean: float) -> None:
    from regx.console import print_table

    sev = c["severities"]
    rows = [
        [name, *(f"{100 * accs[s]:.2f}%" for s in sev), f"{100 * sum(accs.values()) / len(accs):.2f}%"]
        for name, accs in c["accuracy"].items()
    ]
    header = ["corruption", *(f"severity {s}" for s in sev), "mean"]
    print_table(
        f"accuracy on corrupted images ({c['definitions']}'s definitions; clean {100 * clean:.2f}%)",
        header,
        rows,
        right=set(header[1:]),
    )
    print(f"mean corrupted accuracy {100 * c['mean']:.2f}% ({100 * (clean - c['mean']):.2f} points below clean)")

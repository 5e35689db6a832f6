"""`regx eval RUN_DIR`: a run's best (or last) checkpoint on the test split, or on other data:
accuracy, per-class accuracy and the confusion matrix, into eval.json and confusion.png."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from regx import config
from regx.runs import CorruptCheckpoint, load_verified, slug, write_json


class EvalError(ValueError):
    """Bad input to `regx eval`: one line."""


def eval_config(saved: dict, overrides: list[str]):
    """The run's config with `data=OPTION` and `data.*`/`device`/`eval_batch_size` overrides applied."""
    cfg = OmegaConf.merge(OmegaConf.structured(config.TrainConfig), saved)
    allowed = ("data.", "device", "eval_batch_size", "precision", "channels_last")
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            raise EvalError(f"cannot parse override '{o}': expected key=value")
        if key == "data":
            options = config.group_options("data")
            if value not in options:
                raise EvalError(f"unknown option data={value} (valid options: {', '.join(options)})")
            cfg.data = OmegaConf.merge(OmegaConf.structured(config.DataConfig),
                                       OmegaConf.load(config.conf_dir() / "data" / f"{value}.yaml"))
        elif not key.startswith(allowed):
            raise EvalError(f"regx eval takes data=..., data.KEY=..., device, precision and eval_batch_size; not '{key}'")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o for o in overrides if not o.startswith("data=")]))
    except Exception as exc:
        from regx.errors import explain

        raise EvalError(explain(exc, overrides)) from exc
    config.validate(cfg)
    return cfg


def _checkpoint(run_dir: Path, last: bool) -> tuple[Path, dict]:
    if not run_dir.is_dir():
        raise EvalError(f"no such run directory: {run_dir}")
    path = run_dir / "checkpoints" / ("last.pt" if last else "best.pt")
    if not path.is_file():
        raise EvalError(f"{path} not found: {run_dir} is not a regx run directory, or no epoch has finished yet")
    try:
        return path, load_verified(path)
    except CorruptCheckpoint as exc:
        raise EvalError(str(exc)) from None


def build_from_checkpoint(ckpt: dict, cfg, num_classes: int, in_channels: int, device: torch.device):
    """The checkpoint's model, as it trained (transform_input of googlenet/inception's ImageNet weights)."""
    from regx.finetune import unwrap
    from regx.models import build_model, model_kwargs

    model = build_model(**model_kwargs(cfg, num_classes=num_classes, in_channels=in_channels))
    model.load_state_dict(ckpt["model"])
    net, _ = unwrap(model)
    if ckpt["config"].get("finetune", {}).get("weights") == "imagenet" and hasattr(net, "transform_input"):
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
        rows.append({"class": name, "n": n, "correct": right, "accuracy": right / n if n else None,
                     "most_confused_with": classes[j] if int(cm[i, j]) > 0 else None,
                     "confused_count": int(cm[i, j]) if int(cm[i, j]) > 0 else 0})
    return rows


def eval_run(run_dir: Path, overrides: list[str], *, last: bool = False, out: Path | None = None) -> dict:
    """Evaluate, print the tables, write eval.json and confusion.png; return the result dict."""
    from regx.console import console
    from regx.data import iterate, load_config, to_device
    from regx.engine import Pipeline, autocast, evaluate
    from regx.plots import confusion_plot
    from regx.train import pick_device, pick_precision

    run_dir = Path(run_dir)
    path, ckpt = _checkpoint(run_dir, last)
    cfg = eval_config(ckpt["config"], overrides)
    device = pick_device(cfg.device)
    data = load_config(cfg.data)
    classes = list(ckpt["classes"])
    if data.num_classes != len(classes):
        raise EvalError(f"the model predicts {len(classes)} classes but data={cfg.data.name} has {data.num_classes}")
    norm = ckpt.get("norm") or {"mean": data.mean, "std": data.std}
    in_channels = ckpt.get("in_channels", len(norm["mean"]))
    if in_channels != data.channels:
        raise EvalError(f"the model takes {in_channels}-channel images but data={cfg.data.name} has {data.channels}")
    data = data if data.streaming else to_device(data, device)
    split_name = "test" if data.test is not None and len(data.test) else "val"
    split = data.test if split_name == "test" else data.val
    pipeline = Pipeline(mean=torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1),
                        std=torch.tensor(norm["std"], device=device).view(1, -1, 1, 1), channels_last=cfg.channels_last)
    loss, _, cm = evaluate(build_from_checkpoint(ckpt, cfg, len(classes), in_channels, device),
                           iterate(split, cfg.eval_batch_size, device=device, workers=cfg.data.workers),
                           pipeline=pipeline, amp=autocast(device, pick_precision(cfg.precision, device)),
                           num_classes=len(classes))
    total = int(cm.sum())
    result = {"run_dir": str(run_dir), "checkpoint": str(path), "epoch": ckpt["state"]["epoch"],
              "data": cfg.data.name, "overrides": overrides, "split": split_name, "n": total,
              "accuracy": int(cm.diag().sum()) / max(total, 1), "loss": loss, "classes": classes,
              "per_class": per_class(cm, classes), "confusion": cm.tolist()}
    suffix = ("_last" if last else "") + ("_" + slug(",".join(overrides), 60) if overrides else "")
    out = Path(out) if out is not None else run_dir
    json_path, png_path = out / f"eval{suffix}.json", out / f"confusion{suffix}.png"
    write_json(json_path, result)
    confusion_plot(png_path, cm, classes, f"{run_dir.name}: {path.name} (epoch {result['epoch']}) on "
                                         f"{cfg.data.name} {split_name}, accuracy {100 * result['accuracy']:.2f}%")
    _print(result, console())
    print(f"wrote {json_path} and {png_path}")
    return result


def _print(result: dict, con) -> None:
    from regx.console import print_table

    con.print(f"{result['data']} {result['split']} split, {result['n']} images: accuracy "
              f"{100 * result['accuracy']:.2f}%, loss {result['loss']:.4f} ({Path(result['checkpoint']).name}, "
              f"epoch {result['epoch']})")
    rows = [[c["class"], str(c["n"]), "-" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%",
             f"{c['most_confused_with']} ({c['confused_count']})" if c["most_confused_with"] else "-"]
            for c in result["per_class"]]
    print_table("per-class accuracy", ["class", "images", "accuracy", "most confused with"], rows,
                right={"images", "accuracy"})
    if len(result["classes"]) <= 12:
        header = ["true \\ predicted", *map(str, range(len(result["classes"])))]
        rows = [[f"{i} {name}", *map(str, row)] for i, (name, row) in enumerate(zip(result["classes"], result["confusion"]))]
        print_table("confusion matrix (rows: true class, columns: predicted)", header, rows, right=set(header[1:]))

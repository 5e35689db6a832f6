"""`regx eval RUN_DIR`: a run's best (or last) checkpoint on the test split, or on other data:
accuracy, per-class accuracy and the confusion matrix, into eval.json and confusion.png."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from regx import config
from regx.runs import CorruptCheckpoint, load_verified, write_json


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
        raise EvalError(config.explain(exc, overrides)) from exc
    config.validate(cfg)
    return cfg


def eval_run(run_dir: Path, overrides: list[str], *, last: bool = False, out: Path | None = None) -> dict:
    """Evaluate, print the tables, write eval.json and confusion.png; return the result dict."""
    from regx.console import console
    from regx.data import iterate, load_data, to_device
    from regx.engine import Pipeline, autocast, confusion
    from regx.finetune import unwrap
    from regx.models import build_model
    from regx.train import pick_device, pick_precision

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalError(f"no such run directory: {run_dir}")
    path = run_dir / "checkpoints" / ("last.pt" if last else "best.pt")
    if not path.is_file():
        raise EvalError(f"{path} not found: {run_dir} is not a regx run directory, or no epoch has finished yet")
    try:
        ckpt = load_verified(path)
    except CorruptCheckpoint as exc:
        raise EvalError(str(exc)) from None
    cfg = eval_config(ckpt["config"], overrides)
    device = pick_device(cfg.device)
    amp = autocast(device, pick_precision(cfg.precision, device))
    data = load_data(**OmegaConf.to_container(cfg.data, resolve=True))
    classes = list(ckpt["classes"])
    if data.num_classes != len(classes):
        raise EvalError(f"the model predicts {len(classes)} classes but data={cfg.data.name} has {data.num_classes}")
    norm = ckpt.get("norm") or {"mean": data.mean, "std": data.std}
    in_channels = ckpt.get("in_channels", len(norm["mean"]))
    if in_channels != data.channels:
        raise EvalError(f"the model takes {in_channels}-channel images but data={cfg.data.name} has {data.channels}")
    split_name = "test" if data.test is not None and len(data.test) else "val"
    split = data.test if split_name == "test" else data.val
    if not data.streaming:
        data = to_device(data, device)
        split = data.test if split_name == "test" else data.val
    m = ckpt["config"]["model"]
    model = build_model(name=m["name"], num_classes=len(classes), in_channels=in_channels, channels=m["channels"],
                        convs_per_block=m["convs_per_block"], fc=m["fc"], small_input=m["small_input"],
                        dropout=ckpt["config"]["dropout"]["p"], conv_dropout=ckpt["config"]["dropout"]["conv_p"],
                        dropout_features=ckpt["config"]["dropout"].get("features", False))
    model.load_state_dict(ckpt["model"])
    net, _ = unwrap(model)
    if ckpt["config"].get("finetune", {}).get("weights") == "imagenet" and hasattr(net, "transform_input"):
        net.transform_input = True  # as in training (googlenet, inception)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    pipeline = Pipeline(mean=torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1),
                        std=torch.tensor(norm["std"], device=device).view(1, -1, 1, 1), channels_last=cfg.channels_last)
    loss, cm = confusion(model, iterate(split, cfg.eval_batch_size, device=device, workers=cfg.data.workers),
                         pipeline=pipeline, amp=amp, num_classes=len(classes))
    per_class = []
    for i, name in enumerate(classes):
        n, right = int(cm[i].sum()), int(cm[i, i])
        wrong = cm[i].clone()
        wrong[i] = -1
        j = int(wrong.argmax())
        per_class.append({"class": name, "n": n, "correct": right, "accuracy": right / n if n else None,
                          "most_confused_with": classes[j] if int(cm[i, j]) > 0 else None,
                          "confused_count": int(cm[i, j]) if int(cm[i, j]) > 0 else 0})
    total = int(cm.sum())
    result = {"run_dir": str(run_dir), "checkpoint": str(path), "epoch": ckpt["state"]["epoch"],
              "data": cfg.data.name, "overrides": overrides, "split": split_name, "n": total,
              "accuracy": int(cm.diag().sum()) / max(total, 1), "loss": loss, "classes": classes,
              "per_class": per_class, "confusion": cm.tolist()}

    suffix = "" if not overrides else "_" + config._slug(",".join(overrides), 60)
    out = Path(out) if out is not None else run_dir
    json_path, png_path = out / f"eval{suffix}.json", out / f"confusion{suffix}.png"
    write_json(json_path, result)
    confusion_plot(png_path, cm, classes, f"{run_dir.name}: {path.name} (epoch {result['epoch']}) on "
                                         f"{cfg.data.name} {split_name}, accuracy {100 * result['accuracy']:.2f}%")
    _print(result, console())
    print(f"wrote {json_path} and {png_path}")
    return result


def _print(result: dict, con) -> None:
    from rich.table import Table

    con.print(f"{result['data']} {result['split']} split, {result['n']} images: accuracy "
              f"{100 * result['accuracy']:.2f}%, loss {result['loss']:.4f} ({Path(result['checkpoint']).name}, "
              f"epoch {result['epoch']})")
    table = Table(title="per-class accuracy")
    for h in ("class", "images", "accuracy", "most confused with"):
        table.add_column(h, justify="right" if h in ("images", "accuracy") else "left")
    for c in result["per_class"]:
        acc = "-" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%"
        confused = f"{c['most_confused_with']} ({c['confused_count']})" if c["most_confused_with"] else "-"
        table.add_row(c["class"], str(c["n"]), acc, confused)
    con.print(table)
    if len(result["classes"]) <= 12:
        cm = Table(title="confusion matrix (rows: true class, columns: predicted)")
        cm.add_column("")
        for i in range(len(result["classes"])):
            cm.add_column(str(i), justify="right")
        for i, (name, row) in enumerate(zip(result["classes"], result["confusion"])):
            cm.add_row(f"{i} {name}", *[f"[bold]{v}[/bold]" if i == j else str(v) for j, v in enumerate(row)])
        con.print(cm)


def confusion_plot(path: Path, cm: torch.Tensor, classes: list[str], title: str) -> Path:
    """The confusion matrix, coloured by the row-normalized rate, counts written in when it fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regx.report import save_figure

    k = len(classes)
    rates = (cm.float() / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
    side = min(max(5.0, 0.45 * k + 2), 30)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    ticks = range(k)
    labels = classes if k <= 40 else [str(i) for i in ticks]
    ax.set_xticks(ticks, labels, rotation=45 if k > 5 else 0, ha="right" if k > 5 else "center", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)

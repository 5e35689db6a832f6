"""regx's default recipe against timm's train.py defaults, on the same real images, at equal epochs.

What a user would otherwise run: timm's train.py (from its repository; it is not in timm's wheel) with
its defaults, given only what the data needs (--img-size, --num-classes, --epochs, --device cpu,
--workers, --seed, the split names). regx runs with its defaults, given the same data, epochs and
seed: `model=timm model.name=resnet18` (timm's own network, so only the recipe differs) and the
default smallcnn. The images: a stratified subset of Debian's Fashion-MNIST training files, written
as a PNG folder (train/<class>/), and the official 10,000 test images (test/<class>/, also regx's
val/), which both tools evaluate after every epoch. Reported per run: the last epoch's test accuracy,
the time each epoch ended (from the start of the process, start-up included) and the wall time.

    python -m benchmarks.vs_timm --train-py PATH/train.py --train-size 10000 --epochs 10 --seeds 0 1

With --matched both tools get the same recipe instead (MATCHED: timm's resnet18, batch 128, SGD 0.05
with Nesterov momentum 0.9, torch SGD's coupled weight decay 5e-4 off 1-d parameters, a cosine schedule
stepped every update, no warmup, fp32, ImageNet's mean and std, evaluation without a crop), with no
augmentation or with RandomResizedCrop and flips (--aug), the same label smoothing (--smoothing), and
regx arms of your own beside them (--arm NAME=OVERRIDES, to find which of timm's choices explains a gap):

    python -m benchmarks.vs_timm --train-py PATH/train.py --matched --epochs 3 --seeds 0 1 2 \
        --arm ls=label_smoothing=0.1

Writes vs_timm.json and vs_timm.md under --out (default outputs/vs_timm).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_folder(root: Path, train_size: int, seed: int = 0) -> Path:
    """train/<class>/*.png (a stratified subset) and test/<class>/*.png (all 10,000), with val a link to
    test; reused when already written for the same size."""
    import torch
    from omegaconf import OmegaConf
    from PIL import Image

    from regx.config import DataConfig
    from regx.data import load_data
    from regx.data.core import loading_keys

    folder = root / f"fashion_mnist_{train_size}"
    if (folder / "done").is_file():
        return folder
    defaults = loading_keys(OmegaConf.to_container(OmegaConf.structured(DataConfig(name="fashion_mnist"))))
    data = load_data(
        **{
            **defaults,
            "root": str(root / "cache"),
            "download": False,
            "train_size": train_size,
            "val_fraction": 0.02,
            "seed": seed,
        }
    )
    classes = [c.replace("/", "-") for c in data.classes]
    for split, images, labels in (("train", data.train.x, data.train.y), ("test", data.test.x, data.test.y)):
        for i, (x, y) in enumerate(zip(images.cpu(), labels.cpu().tolist())):
            path = folder / split / classes[y] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[0].to(torch.uint8).numpy(), mode="L").save(path)
    if not (folder / "val").is_symlink():  # a write stopped before "done" is redone over what it left
        (folder / "val").symlink_to("test", target_is_directory=True)
    (folder / "done").write_text("")
    return folder


def watch(cmd: list[str], log: Path, rows: Path, env: dict | None = None) -> tuple[int, float, list[float]]:
    """Run `cmd`, noting when each new data row appears in the CSV `rows`: (exit code, wall seconds,
    seconds from the start to the end of each epoch)."""
    start, seen, ends = time.perf_counter(), 0, []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(0.5)
            n = _rows(rows)
            ends += [time.perf_counter() - start] * (n - seen)
            seen = n
    n = _rows(rows)
    ends += [time.perf_counter() - start] * (n - seen)
    return proc.returncode, time.perf_counter() - start, ends


def _rows(path: Path) -> int:
    try:
        with open(path) as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # timm's resnet18 pretrained_cfg


def matched(aug: str, smoothing: float) -> tuple[list[str], list[str]]:
    """(timm train.py's flags, regx's overrides) for one recipe on both sides."""
    timm = [
        "--batch-size",
        "128",
        "--opt",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--weight-decay",
        "5e-4",
        "--sched",
        "cosine",
        "--sched-on-updates",
        "--warmup-epochs",
        "0",
        "--crop-pct",
        "1.0",
        "--smoothing",
        str(smoothing),
    ]
    regx = [
        "model=timm",
        "model.name=resnet18",
        "batch_size=128",
        "optim=sgd",
        "lr=0.05",
        "optim.momentum=0.9",
        "optim.nesterov=true",
        "decay=l2",
        "wd=2.5e-4",  # decay=l2 adds 2*wd*p: torch SGD(weight_decay=5e-4)
        "sched=cosine",
        "precision=32",
        f"label_smoothing={smoothing}",
        f"data.mean=[{','.join(map(str, IMAGENET_MEAN))}]",
        f"data.std=[{','.join(map(str, IMAGENET_STD))}]",
    ]
    if aug == "none":
        timm.append("--no-aug")
        regx.append("aug=none")
    else:  # RandomResizedCrop (timm's defaults: scale 0.08-1, ratio 3/4-4/3) and left-right flips, nothing else
        timm += [
            "--scale",
            "0.08",
            "1.0",
            "--ratio",
            "0.75",
            "1.3333333",
            "--hflip",
            "0.5",
            "--color-jitter",
            "0",
            "--train-interpolation",
            "bilinear",
        ]
        regx.append("aug=[rrc,flip]")
    return timm, regx


def run_timm(
    train_py: Path,
    folder: Path,
    out: Path,
    epochs: int,
    seed: int,
    workers: int,
    flags: list[str] = (),
    label: str = "resnet18",
) -> dict:
    name = f"timm_{'_'.join(label.split())}_{seed}"
    cmd = [
        sys.executable,
        str(train_py),
        str(folder),
        "--train-split",
        "train",
        "--val-split",
        "test",
        "--model",
        "resnet18",
        "--num-classes",
        "10",
        "--img-size",
        "28",
        "--epochs",
        str(epochs),
        "--device",
        "cpu",
        "--workers",
        str(workers),
        "--seed",
        str(seed),
        "--output",
        str(out),
        "--experiment",
        name,
        "--log-interval",
        "1000",
        *flags,
    ]
    code, wall, ends = watch(cmd, out / f"{name}.log", out / name / "summary.csv")
    rows = list(csv.DictReader(open(out / name / "summary.csv"))) if code == 0 else []
    return {
        "tool": "timm train.py",
        "model": label,
        "seed": seed,
        "exit": code,
        "wall_s": round(wall, 1),
        "epoch_end_s": [round(t, 1) for t in ends],
        "test_acc": [float(r["eval_top1"]) / 100 for r in rows],
    }


def run_regx(folder: Path, out: Path, model: list[str], label: str, epochs: int, seed: int) -> dict:
    name = "regx_" + "_".join(re.sub(r"[()']", "", label).split()) + f"_{seed}"
    regx = Path(sys.executable).with_name("regx")
    cmd = [
        str(regx),
        "train",
        "data=imagefolder",
        f"data.path={folder}",
        "data.image_size=28",
        f"data.root={out / 'cache'}",
        *model,
        f"epochs={epochs}",
        f"seed={seed}",
        f"hydra.run.dir={out / name}",
    ]
    code, wall, ends = watch(cmd, out / f"{name}.log", out / name / "metrics.csv")
    rows = list(csv.DictReader(open(out / name / "metrics.csv"))) if code == 0 else []
    return {
        "tool": "regx",
        "model": label,
        "seed": seed,
        "exit": code,
        "wall_s": round(wall, 1),
        "epoch_end_s": [round(t, 1) for t in ends],
        "test_acc": [float(r["val_acc"]) for r in rows],
    }


def to_markdown(runs: list[dict], train_size: int, epochs: int, seeds: list[int], cores: int | None) -> str:
    """The table: per tool and model, each seed's last-epoch test accuracy, their mean, the wall time,
    and the time each seed took to first reach the accuracy every tool reached on average (whole
    points, from the start of the process)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["tool"], r["model"]), []).append(r)
    means = {
        k: statistics.fmean(r["test_acc"][-1] for r in rs) for k, rs in groups.items() if all(r["test_acc"] for r in rs)
    }
    target = int(100 * min(means.values())) / 100 if means else None
    lines = [
        f"{train_size:,} Fashion-MNIST training images, the 10,000 test images evaluated after each of "
        f"{epochs} epochs, seeds {', '.join(map(str, seeds))}, {cores} CPU cores.",
        "",
        "| tool, model | last-epoch test acc (each seed) | mean | wall time (each seed) | time to "
        f"{100 * target:.0f}% test acc (each seed) |"
        if target
        else "| tool, model | test acc | mean | wall time | - |",
        "|---|---|---|---|---|",
    ]
    for (tool, model), rs in groups.items():
        accs = [r["test_acc"][-1] for r in rs if r["test_acc"]]
        mean = f"{100 * statistics.fmean(accs):.2f}" if accs else "-"
        walls = ", ".join(f"{r['wall_s']:.0f} s" for r in rs)
        shown = ", ".join(f"{100 * a:.2f}" for a in accs) or "failed"
        reach = ", ".join(
            next(
                (f"{t:.0f} s" for a, t in zip(r["test_acc"], r["epoch_end_s"]) if target and a >= target), "not reached"
            )
            for r in rs
        )
        lines.append(f"| {tool}, {model} | {shown} | {mean} | {walls} | {reach} |")
    return "\n".join(lines) + "\n"


def save_record(bench_json: Path, record: dict, matched: str | None) -> None:
    """Into bench.json: the defaults' comparison as `vs_timm`, a matched one under `vs_timm_matched`, by recipe."""
    bench = json.loads(bench_json.read_text()) if bench_json.is_file() else {}
    if matched is None:
        bench["vs_timm"] = record
    else:
        bench.setdefault("vs_timm_matched", {})[matched] = record
    bench_json.write_text(json.dumps(bench, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-py", type=Path, required=True, help="timm's train.py (from its repository)")
    ap.add_argument("--train-size", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="timm's data loader workers")
    ap.add_argument("--out", type=Path, default=Path("outputs/vs_timm"))
    ap.add_argument("--record", type=Path, help="also record the result in this bench.json (BENCHMARKS.md shows it)")
    ap.add_argument("--matched", action="store_true", help="the same recipe on both sides (see the module's doc)")
    ap.add_argument("--aug", choices=["none", "rrc_flip"], default="none", help="--matched: the augmentation")
    ap.add_argument("--smoothing", type=float, default=0.0, help="--matched: label smoothing on both sides")
    ap.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="--matched: a regx arm with these overrides added (space-separated), e.g. ls=label_smoothing=0.1",
    )
    args = ap.parse_args(argv)
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        print(f"vs_timm: needs Debian's dataset-fashion-mnist ({FASHION})", file=sys.stderr)
        return 2
    if not args.train_py.is_file():
        print(f"vs_timm: no timm train.py at {args.train_py}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    folder = write_folder(args.out, args.train_size)
    runs = []
    timm_flags, regx_matched = matched(args.aug, args.smoothing) if args.matched else ([], [])
    tag = f"matched {args.aug} ls{args.smoothing:g}" if args.matched else ""
    for seed in args.seeds:
        before = len(runs)
        runs.append(
            run_timm(
                args.train_py, folder, args.out, args.epochs, seed, args.workers, timm_flags, f"resnet18 {tag}".strip()
            )
        )
        if args.matched:
            runs.append(run_regx(folder, args.out, regx_matched, f"resnet18 {tag}", args.epochs, seed))
            for arm in args.arm:
                name, _, extra = arm.partition("=")
                runs.append(
                    run_regx(
                        folder, args.out, [*regx_matched, *extra.split()], f"resnet18 {tag} +{name}", args.epochs, seed
                    )
                )
        else:
            runs.append(
                run_regx(
                    folder, args.out, ["model=timm", "model.name=resnet18"], "resnet18 (timm's)", args.epochs, seed
                )
            )
            runs.append(run_regx(folder, args.out, [], "smallcnn", args.epochs, seed))
        for r in runs[before:]:
            print(
                f"{r['tool']} {r['model']} seed {r['seed']}: exit {r['exit']}, test acc "
                f"{100 * r['test_acc'][-1] if r['test_acc'] else float('nan'):.2f}%, {r['wall_s']:.0f} s",
                flush=True,
            )
    table = to_markdown(runs, args.train_size, args.epochs, args.seeds, os.cpu_count())
    record = {
        "command": "python -m benchmarks.vs_timm " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "train_size": args.train_size,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "cores": os.cpu_count(),
        "runs": runs,
    }
    (args.out / "vs_timm.json").write_text(json.dumps(record, indent=1))
    (args.out / "vs_timm.md").write_text(table)
    if args.record:  # into bench.json, which `make bench` keeps, for BENCHMARKS.md
        save_record(args.record, record, f"{args.aug} ls{args.smoothing:g}" if args.matched else None)
    print((args.out / "vs_timm.md").read_text())
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

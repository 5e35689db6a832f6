"""Benchmarks (not tests): `python -m benchmarks.bench [--device cuda] [--quick]` (`make bench`, `make bench-gpu`).

Holds regx to the speed of a hand-written PyTorch loop, in one process, alternating the contenders so
machine drift cancels; medians over repeats after warm-up, with the spread (min-max):
  1. regx's engine vs a minimal hand-written loop (same model, data in memory, batch, dtype, layout,
     optimizer): smallcnn and resnet18 at 32 px, fp32 and bf16, aug=none and aug=all (the hand loop
     never augments);
  2. regx's batched per-sample augmentation vs torchvision v2 per-image transforms in a DataLoader with
     2 workers (the same five operations): augmentation alone, and end-to-end training;
  3. whole epochs (evaluation, checkpoints, curves included) vs steady-state training throughput;
  4. start-up: `regx --help`, and `regx train debug=smoke` until it is ready to train;
  plus the measured effect of each default (bf16, channels_last), and (on a GPU, or with --tta)
  the time to 99% validation accuracy of the default experiment.
Writes bench.json (bench-cuda.json with --device cuda) and regenerates BENCHMARKS.md from both.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.reference import MEAN, STD, reference_epoch

BATCH = 128
SIZE = 32
CLASSES = 10


def _median_spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def alternate(contenders: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Run each contender's chunk in turn `repeats` times after `warmup` rounds; images/s stats."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    rates = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, fn in contenders.items():
            t = time.perf_counter()
            images = fn()
            rates[k].append(images / (time.perf_counter() - t))
    return {k: {**_median_spread(v), "rates": v} for k, v in rates.items()}


def paired_ratio(a: dict, b: dict) -> float:
    """Median of the per-round ratios a_i / b_i: rounds run back to back, so drift cancels."""
    return statistics.median(x / y for x, y in zip(a["rates"], b["rates"]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, device: torch.device, channels_last: bool, compile_mode: str | None = None):
    from omegaconf import OmegaConf

    from regx import config
    from regx.models import build_model, model_kwargs

    torch.manual_seed(0)
    cfg = OmegaConf.structured(
        {
            "model": config.ModelConfig(name=name, small_input=name != "smallcnn"),
            "dropout": config.DropoutConfig(name="none"),
        }
    )
    model = build_model(**model_kwargs(cfg, num_classes=CLASSES, in_channels=3, image_size=SIZE))
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model if compile_mode is None else torch.compile(model, mode=compile_mode)


def _data(n: int, device: torch.device):
    from regx.data import Split

    g = torch.Generator().manual_seed(0)
    return Split(
        y=torch.randint(0, CLASSES, (n,), generator=g).to(device),
        x=torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g).to(device),
    )


def hand_loop(model_name: str, device, precision: str, steps: int, batch: int, channels_last: bool = True):
    """The loop a user would write: data in memory, shuffled slices, normalize, autocast, SGD."""
    model = _model(model_name, device, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    data = _data(steps * batch, device)

    def chunk() -> int:
        perm = torch.randperm(len(data.y), device=device)
        slices = ((data.x[perm[i : i + batch]], data.y[perm[i : i + batch]]) for i in range(0, len(perm), batch))
        return reference_epoch(model, opt, slices, device=device, precision=precision, channels_last=channels_last)

    return chunk


def regx_loop(
    model_name: str,
    device,
    precision: str,
    steps: int,
    batch: int,
    aug: str = "none",
    channels_last: bool = True,
    compile_mode: str | None = None,
    ema: bool = False,
    clip: float = 0.0,
    overrides: tuple[str, ...] = (),
    compile_aug: bool = False,
):
    """regx's own path: iterate() -> Pipeline (augmentation) -> train_one_epoch with its metrics
    (`compile_mode`: the model under torch.compile in that mode, as `compile=true` does; `ema`:
    average=ema's update after every step; `clip`: clip_grad's norm clipping; `overrides`: more of
    the aug group's keys, as aug.augmix.jsd=12; `compile_aug`: the augmentation compiled, as
    compile_aug=true does)."""
    from regx import config
    from regx.augment import Augment
    from regx.average import Ema
    from regx.data import iterate
    from regx.engine import (
        LoopSteps,
        LossCheck,
        Pipeline,
        StepParts,
        Tally,
        autocast,
        gradient_clipper,
        train_one_epoch,
    )
    from regx.regularize import build_optimizer

    cfg = config.compose([f"aug={aug}", *overrides])
    model = _model(model_name, device, channels_last, compile_mode)
    opt, _ = build_optimizer(
        model,
        name="sgd",
        lr=0.01,
        wd=0.0,
        decay="l2",
        exclude=["bias", "norm"],  # as hand_loop
        momentum=0.9,
        nesterov=True,
        betas=[0.9, 0.999],
        eps=1e-8,
    )
    data = _data(steps * batch, device)
    gen = torch.Generator(device=device).manual_seed(1)
    pipe = Pipeline(
        torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
        torch.tensor(STD, device=device).view(1, 3, 1, 1),
        channels_last,
        Augment(cfg.aug, gen, compiled=compile_aug) if Augment.active(cfg.aug) else None,
    )
    parts = StepParts(
        optimizer=opt,
        pipeline=pipe,
        lr_at=lambda s: 0.01,
        amp=autocast(device, precision),
        jsd=cfg.aug.augmix.jsd if Augment.views(cfg.aug) == 3 else 0.0,
        clip=gradient_clipper("norm", clip, list(model.parameters())) if clip else None,
    )
    loop = LoopSteps(
        LossCheck(device, 1 if device.type == "cpu" else 25),  # what a run checks, as often
        average=Ema(model, decay=0.999, warmup=True, warmup_power=2 / 3, every=1).update if ema else None,
    )
    state = {"step": 0}

    def chunk() -> int:
        order = torch.randperm(len(data.y), device=device)
        r = train_one_epoch(
            model,
            parts,
            iterate(data, batch, order=order, device=device),
            first_step=state["step"],
            tally=Tally.zero(device),
            loop=loop,
        )
        state["step"] += r.steps
        return r.images

    return chunk


# ---------------------------------------------------------------------------------------------
# 2. augmentation: regx's batched per-sample ops vs torchvision v2 per image in DataLoader workers


def _tv_transform():
    from torchvision.transforms import v2

    # aug=all's five operations at its settings, each with p=0.5 as there
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.RandomApply([v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.85, 1.15))], p=0.5),
            v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.03)], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class _TVDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.t = x, y, _tv_transform()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.t(self.x[i]), self.y[i]


def _tv_loader(n: int, batch: int, workers: int):
    data = _data(n, torch.device("cpu"))
    return torch.utils.data.DataLoader(
        _TVDataset(data.x, data.y), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )  # workers start each epoch, as by default


def aug_alone(device, steps: int, batch: int):
    from regx import config
    from regx.augment import Augment

    aug = Augment(config.compose(["aug=all"]).aug, torch.Generator(device=device).manual_seed(0))
    data = _data(steps * batch, device)

    def regx_chunk() -> int:
        for i in range(0, len(data.y), batch):
            aug(data.x[i : i + batch].float().div_(255))
        _sync(device)
        return len(data.y)

    loader = _tv_loader(steps * batch, batch, workers=2)

    def tv_chunk() -> int:
        n = 0
        for xb, _ in loader:
            xb.to(device)
            n += len(xb)
        _sync(device)
        return n

    return {"regx batched, on the device": regx_chunk, "torchvision v2, DataLoader 2 workers": tv_chunk}


def tv_end_to_end(model_name: str, device, precision: str, steps: int, batch: int):
    """The same hand-written loop fed by the torchvision DataLoader (augmentation in its workers)."""
    model = _model(model_name, device, True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loader = _tv_loader(steps * batch, batch, workers=2)
    return lambda: reference_epoch(model, opt, loader, device=device, precision=precision, scaled=True)


# ---------------------------------------------------------------------------------------------
# 5. Using a trained model: regx predict vs a hand-written inference loop; ONNX Runtime vs eager


def _trained_run(root: Path, model: str, size: int) -> Path:
    from regx import config
    from regx.train import train

    run = root / f"run-{model}"
    train(
        config.compose(
            [
                "debug=smoke",
                "epochs=1",
                "device=cpu",
                f"data.image_size={size}",
                *(["model=tv", f"model.name={model}"] if model != "smallcnn" else []),
            ]
        ),
        run,
    )
    return run


def _hand_inference(model, files: list[str], size: int, mean, std, batch: int, workers: int) -> int:
    """What a user would write: PIL decode in DataLoader workers, batches, normalize, softmax, argmax."""
    from regx.predict import Preprocess

    prep = Preprocess(size, 3, list(mean), list(std))

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return prep.uint8(files[i])

    n = 0
    with torch.inference_mode():
        for xb in torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=workers):
            model(prep(xb)).softmax(1).argmax(1)
            n += len(xb)
    return n


def predict_speed(repeats: int, n: int = 2000, size: int = 32) -> dict:
    """`regx predict` over n image files (decoding in 2 workers, batches of 256) against the hand loop
    over the same files; decoding alone and the model alone, in images/s."""
    with tempfile.TemporaryDirectory(prefix="regx-bench-predict-") as tmp:  # its run and files go with it
        return _predict_speed(Path(tmp), repeats, n, size)


def _predict_speed(tmp: Path, repeats: int, n: int, size: int) -> dict:
    import io as _io

    from PIL import Image

    import regx
    from regx.predict import predict_files

    run = _trained_run(tmp, "smallcnn", size)
    clf = regx.load(run, device="cpu")
    g = torch.Generator().manual_seed(0)
    files = []
    for i in range(n):
        files.append(str(tmp / f"{i}.png"))
        Image.fromarray(torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()).save(files[-1])
    decoded = torch.stack([clf.preprocess.uint8(f) for f in files[:512]])

    def regx_chunk() -> int:
        return predict_files(clf, files, _io.StringIO(), fmt="csv", top_k=1, batch_size=256, workers=2).count

    def hand_chunk() -> int:
        return _hand_inference(clf.model, files, size, clf.preprocess.mean, clf.preprocess.std, 256, 2)

    def decode_chunk() -> int:
        for f in files[:500]:
            clf.preprocess.uint8(f)
        return 500

    def model_chunk() -> int:
        for i in range(0, len(decoded), 256):
            clf.probabilities(decoded[i : i + 256])
        return len(decoded)

    r = alternate({"regx predict": regx_chunk, "hand loop": hand_chunk}, repeats)
    parts = alternate({"decode": decode_chunk, "model": model_chunk}, repeats)
    return {
        "images": n,
        "size": size,
        "regx": r["regx predict"],
        "hand": r["hand loop"],
        "ratio": paired_ratio(r["regx predict"], r["hand loop"]),
        "decode_1_process": parts["decode"],
        "model": parts["model"],
    }


def onnx_vs_eager(repeats: int, size: int = 32, batch: int = 256) -> list[dict]:
    """An exported ONNX model in ONNX Runtime (CPU) against the same model in eager PyTorch."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return []
    with tempfile.TemporaryDirectory(prefix="regx-bench-onnx-") as tmp:  # its runs and files go with it
        return _onnx_vs_eager(Path(tmp), repeats, size, batch)


def _onnx_vs_eager(tmp: Path, repeats: int, size: int, batch: int) -> list[dict]:
    import onnxruntime

    import regx
    from regx.predict import Exported, export

    rows = []
    for name in ("smallcnn", "resnet18"):
        run = _trained_run(tmp, name, size)
        path = export(run, "onnx", tmp / f"{name}.onnx").path
        clf = regx.load(run, device="cpu")
        eager = Exported(clf.model.float(), clf.preprocess.mean, clf.preprocess.std).eval()
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)

        def ort_chunk(session=session, x=x) -> int:
            session.run(None, {"images": x.numpy()})
            return batch

        def eager_chunk(eager=eager, x=x) -> int:
            with torch.inference_mode():
                eager(x)
            return batch

        r = alternate({"onnxruntime": ort_chunk, "eager": eager_chunk}, repeats)
        rows.append(
            {
                "model": name,
                "batch": batch,
                "size": size,
                "onnxruntime": r["onnxruntime"],
                "eager": r["eager"],
                "ratio": paired_ratio(r["onnxruntime"], r["eager"]),
            }
        )
    return rows


def compile_effect(device, precision: str, steps: int, batch: int, repeats: int, modes: tuple[str, ...]) -> list[dict]:
    """`compile=true` against eager, smallcnn through regx's loop: the seconds the first chunk spends
    compiling with an empty inductor cache (a user's first run), then the steady-state ratio. On CUDA,
    mode reduce-overhead adds CUDA graphs."""
    import torch._dynamo

    eager = regx_loop("smallcnn", device, precision, steps, batch)
    rows = []
    for mode in modes:
        torch._dynamo.reset()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="regx-bench-inductor-")  # cold
        compiled = regx_loop("smallcnn", device, precision, steps, batch, compile_mode=mode)
        t = time.perf_counter()
        compiled()
        first = time.perf_counter() - t
        r = alternate({"compiled": compiled, "eager": eager}, repeats)
        rows.append(
            {
                "what": f"compile={mode} vs eager, smallcnn {precision}",
                "ratio": paired_ratio(r["compiled"], r["eager"]),
                "a": r["compiled"],
                "b": r["eager"],
                "compile_s": first - steps * batch / r["compiled"]["median"],
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# 3 and 4: whole runs, in subprocesses, as a user starts them


def compile_aug_effect(device_name: str) -> dict:
    """compile_aug against eager for each aug option alone (benchmarks/aug_profile.py): ms per batch of
    256 images of 32 px, and what a batch launches."""
    from benchmarks.aug_profile import OPTIONS, compile_effect

    return {"rows": [compile_effect(option, torch.device(device_name)) for option in OPTIONS]}


def decode_effect(device_name: str, jpegs: str | None = None) -> dict:
    """An image folder's decoders against each other (benchmarks/decode.py): streamed batches fitted to
    224 px from JPEGs of 256 px and of 1,024 px (where Pillow decodes at a reduced scale); on a GPU also
    one resnet18 epoch per decoder, and a given folder (`jpegs`) read instead of written."""
    from benchmarks.decode import run as decode_run

    gpu = device_name.startswith("cuda")
    workers = min(8, os.cpu_count() or 2)
    runs = [decode_run(device_name, 2048 if gpu else 1024, workers, epoch=gpu, jpegs=jpegs)]
    if not jpegs:
        runs.append(decode_run(device_name, 1024 if gpu else 512, workers, epoch=False, side=1024))
    return {"runs": runs}


def checkpoint_stall(device_name: str, repeats: int = 5) -> dict:
    """How long training stops for one checkpoint (weights and SGD momentum): written in the
    foreground, and with checkpoint.background the copy taken before training goes on, beside the
    background write's own time (median of `repeats`)."""
    import torchvision

    from regx import checkpoint

    device, rows = torch.device(device_name), []
    for name in ("resnet18", "resnet50"):
        model = getattr(torchvision.models, name)(num_classes=10).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(2, 3, 32, 32, device=device)).sum().backward()
        opt.step()
        ckpt = checkpoint.Checkpoint(
            model=model.state_dict(),
            config={},
            state={"epoch": 1, "step": 1},
            classes=[],
            norm={"mean": [0.5], "std": [0.5]},
            in_channels=3,
            image_size=32,
            optimizer=opt.state_dict(),
        )
        times: dict[str, list[float]] = {"foreground": [], "background": [], "background_write": []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                for background in (False, True):
                    writer = checkpoint.Writer(background)
                    _sync(device)
                    t = time.perf_counter()
                    writer.save(ckpt, Path(tmp), best=True)
                    times["background" if background else "foreground"].append(time.perf_counter() - t)
                    writer.wait()
                    if background:
                        times["background_write"].append(time.perf_counter() - t)
            size = (Path(tmp) / "last.pt").stat().st_size
        rows.append({"model": name, "mb": size / 1e6, **{k: _median_spread(v) for k, v in times.items()}})
    return {"rows": rows}


def _regx(args: list[str], cwd: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regx", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1800,
    )


def whole_epochs(device: str, quick: bool, epochs: int = 4, extra: tuple[str, ...] = ()) -> dict:
    """Whole epochs (training, evaluation, the clean-train evaluation, checkpoints, metrics, curves)
    against the steady-state training throughput of the same epochs, from one run: metrics.csv's
    wall_s is stamped at each epoch's end, so epochs 2..N took wall_s[N] - wall_s[1]."""
    from regx.files import read_json, read_metrics

    n = 4000 if quick else 10800
    args = ["data=shapes", f"data.n_train={round(n / 0.9)}", "aug=all", f"device={device}", f"epochs={epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        res = _regx(["train", *args, *extra, "hydra.run.dir=r"], tmp)
        if res.returncode != 0:
            raise RuntimeError(res.stderr)
        rows = read_metrics(Path(tmp) / "r" / "metrics.csv")
        n_train = read_json(Path(tmp) / "r" / "summary.json")["n_train"]
    images = (epochs - 1) * n_train  # epochs 2..N: their training steps alone, and the whole of them
    steady = images / sum(n_train / float(r["img_per_s"]) for r in rows[1:])
    whole = images / (float(rows[-1]["wall_s"]) - float(rows[0]["wall_s"]))
    return {
        "n_train": n_train,
        "epochs": epochs,
        "steady_img_per_s": steady,
        "whole_epoch_img_per_s": whole,
        "ratio": whole / steady,
        "epoch_wall_s": [float(r["wall_s"]) for r in rows],
    }


def time_to_accuracy(device: str, target: float = 0.99, extra: tuple[str, ...] = ()) -> dict:
    """`regx train` on the embedded shapes data (the default experiment): training seconds until the
    validation accuracy first reaches `target`, and the run's whole wall time."""
    from regx.files import read_json, read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        res = _regx(["train", f"device={device}", *extra, "hydra.run.dir=tta"], tmp)
        if res.returncode != 0:
            raise RuntimeError(res.stderr)
        rows = read_metrics(Path(tmp) / "tta" / "metrics.csv")
        summary = read_json(Path(tmp) / "tta" / "summary.json")
    elapsed, reached = 0.0, None
    for r in rows:
        elapsed += float(r["epoch_s"])
        if float(r["val_acc"]) >= target:  # seconds: its epochs (training and evaluation); wall_s: since the run began
            reached = {"epoch": int(r["epoch"]), "seconds": elapsed, "wall_s": float(r["wall_s"])}
            break
    return {
        "target": target,
        "reached": reached,
        "best_val_acc": summary["best_val_acc"],
        "test_acc": summary["test_acc"],
        "wall_s": summary["wall_s"],
        "epochs": len(rows),
    }


def fmnist_to_accuracy(
    device: str,
    root: str | None = None,
    experiment: str = "fashion_mnist_fast",
    seeds: int = 3,
    target: float = 0.93,
    extra: tuple[str, ...] = (),
    log=print,
    partial=None,
) -> dict:
    """Fashion-MNIST to `target` test accuracy (#32's goal: under 12 s on an H100): `regx train
    experiment=...` on the real files (`root`, else data.root's default and Debian's copy), timed from
    the command to its exit, start-up and the summary included, once per seed; `partial(result)` after
    each seed but the last."""
    from regx.files import read_json, read_metrics

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            args = ["train", f"experiment={experiment}", f"device={device}", f"seed={seed}", f"hydra.run.dir=r{seed}"]
            args += [f"data.root={Path(root).resolve()}", "data.download=false"] if root else []
            args += extra
            log(f"  11. seed {seed} ({seed + 1} of {seeds}): regx {' '.join(args)}")
            t = time.perf_counter()
            res = _regx(args, tmp)
            command_s = time.perf_counter() - t
            if res.returncode != 0:
                raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "regx train failed")
            summary = read_json(Path(tmp) / f"r{seed}" / "summary.json")
            rows = read_metrics(Path(tmp) / f"r{seed}" / "metrics.csv")
            runs.append(
                {
                    "seed": seed,
                    "command_s": command_s,  # from the command to its exit
                    "run_wall_s": summary["wall_s"],  # the run's own clock: from its start to the summary
                    "train_s": sum(float(r["epoch_s"]) for r in rows),  # its epochs: training and evaluation
                    "epochs": len(rows),
                    "test_acc": summary["test_acc"],
                    "best_val_acc": summary["best_val_acc"],
                }
            )
            log(f"  11. seed {seed}: test {100 * summary['test_acc']:.2f}% in {command_s:.1f} s")
            if partial is not None and seed < seeds - 1:
                partial({"experiment": experiment, "target": target, "runs": runs})
    return {"experiment": experiment, "target": target, "runs": runs}


def startup(repeats: int) -> dict:
    """`regx --help`, and `regx train debug=smoke` from launch to its 'ready' line (data and model
    built, the line just before the first step)."""
    helps = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "regx", "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - t)
    firsts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(2, repeats // 2)):
            t = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "regx", "train", "debug=smoke", f"hydra.run.dir=s{i}"],
                cwd=tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            for line in proc.stdout:
                if " params) on " in line:
                    firsts.append(time.perf_counter() - t)
                    break
            proc.stdout.read()
            proc.wait()
    imports = {}
    for what in ("torch", "torch, torchvision"):
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {what}"], check=True)
            ts.append(time.perf_counter() - t)
        imports[what] = statistics.median(ts)
    return {
        "help_s": _median_spread(helps),
        "to_first_step_s": _median_spread(firsts),
        "import_torch_s": imports["torch"],
        "import_torch_torchvision_s": imports["torch, torchvision"],
    }


# ---------------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def tracker_cost(repeats: int = 20) -> dict:
    """Seconds one epoch's logging takes in each installed tracker, on its embedded store (TensorBoard
    files, MLflow's SQLite, W&B offline): what `logger=...` adds to every epoch."""
    import importlib.util
    import logging

    from regx import config
    from regx.trackers import make_trackers

    row = {
        "epoch": 1,
        "train_loss": 0.5,
        "train_acc": 0.8,
        "val_loss": 0.6,
        "val_acc": 0.78,
        "gap": 0.02,
        "lr": 0.05,
        "epoch_s": 10.0,
        "wall_s": 10.0,
        "img_per_s": 1000.0,
        "clean_train_loss": 0.5,
        "clean_train_acc": 0.8,
        "trainable": "all",
        "trainable_params": 1000,
    }
    out, before = {}, os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the embedded stores go under outputs/ here
        try:
            for name in ("tensorboard", "mlflow", "wandb"):
                if importlib.util.find_spec(name) is None:
                    continue
                cfg = config.compose(["debug=smoke", f"logger={name}", "logger.mode=offline"])
                run_dir = Path(tmp) / name
                run_dir.mkdir()
                (tracker,) = make_trackers(cfg, run_dir, 1, logging.getLogger("regx.bench"))
                times = []
                for epoch in range(1, repeats + 1):
                    t0 = time.perf_counter()
                    tracker.epoch({**row, "epoch": epoch})
                    times.append(time.perf_counter() - t0)
                tracker.finish({"status": "completed", "epochs_done": repeats, "test_acc": 0.7})
                out[name] = {**_median_spread(times), "status": tracker.status}
        finally:
            os.chdir(before)
    return out


def measurement_cost(device_name: str = "cpu", repeats: int = 7) -> dict:
    """What the measurements beyond accuracy add (#31), on Fashion-MNIST's shapes (28 px grey, 54,000
    training and 6,000 validation images) with the default smallcnn: the calibration sums of one
    validation pass (ECE, MCE, Brier: engine._calibration_sums over its logits) and label noise's
    bookkeeping (none per step: the labels are swapped once at loading; per epoch, the flipped images'
    evaluation, up to diagnose.clean_size = 2,000), each against an epoch (training throughput measured
    here, plus the validation pass)."""
    from regx import config
    from regx.data import Split, iterate
    from regx.data.core import noisy_labels
    from regx.engine import Pipeline, _calibration_sums, autocast, evaluate
    from regx.models import build_model, model_kwargs

    device = torch.device(device_name)
    cfg = config.compose(["device=" + device_name])
    g = torch.Generator().manual_seed(0)
    n_train, n_val, n_noisy, batch = 54_000, 6_000, 2_000, cfg.batch_size
    x = torch.randint(0, 256, (n_val, 1, 28, 28), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 10, (n_val,), generator=g).to(device)
    model = build_model(**model_kwargs(cfg, num_classes=10, in_channels=1, image_size=28)).to(
        device, memory_format=torch.channels_last
    )
    pipeline = Pipeline(
        mean=torch.full((1, 1, 1, 1), 0.5, device=device),
        std=torch.full((1, 1, 1, 1), 0.25, device=device),
        channels_last=True,
    )
    amp = autocast(device, "32")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def steps(k: int = 10) -> float:  # training images per second
        model.train()
        t0 = time.perf_counter()
        for i in range(k):
            s = (i * batch) % (n_val - batch)
            loss = torch.nn.functional.cross_entropy(model(pipeline.eval(x[s : s + batch])), y[s : s + batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        return k * batch / (time.perf_counter() - t0)

    def val_pass(n: int) -> float:
        t0 = time.perf_counter()
        evaluate(
            model, iterate(Split(y=y[:n], x=x[:n]), cfg.eval_batch_size, device=device), pipeline=pipeline, amp=amp
        )
        return time.perf_counter() - t0

    with torch.inference_mode():
        model.eval()
        logits = [
            model(pipeline.eval(x[s : s + cfg.eval_batch_size])).float() for s in range(0, n_val, cfg.eval_batch_size)
        ]

    def calibration() -> float:
        t0 = time.perf_counter()
        for i, lg in enumerate(logits):
            _calibration_sums(lg, y[i * cfg.eval_batch_size : i * cfg.eval_batch_size + len(lg)])
        _sync(device)
        return time.perf_counter() - t0

    def relabel() -> float:
        t0 = time.perf_counter()
        noisy_labels(Split(y=torch.randint(0, 10, (60_000,), generator=g)), 0.2, "symmetric", 10, torch.Generator())
        return time.perf_counter() - t0

    steps(3), val_pass(n_val), calibration()  # warm-up
    rounds = [(steps(), val_pass(n_val), calibration(), val_pass(n_noisy), relabel()) for _ in range(repeats)]
    speed, val_s, cal_s, noisy_s, relabel_s = (statistics.median(r[i] for r in rounds) for i in range(5))
    epoch_s = n_train / speed + val_s
    return {
        "setup": f"smallcnn (default widths), 28 px grey, {n_train:,} training and {n_val:,} validation images, "
        f"batch {batch}, {device_name}",
        "epoch_s": epoch_s,
        "val_pass_s": val_s,
        "calibration_s": cal_s,
        "calibration_pct_of_epoch": 100 * cal_s / epoch_s,
        "noisy_eval_s": noisy_s,
        "noisy_eval_pct_of_epoch": 100 * noisy_s / epoch_s,
        "relabel_once_s": relabel_s,
    }


@dataclass
class _Plan:
    """What every part of the whole benchmark shares: where it runs, how often it repeats, and how it
    reports and saves what it measured."""

    device: torch.device
    quick: bool
    log: Callable[[str], None]
    saved: Callable[[], None]

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def repeats(self) -> int:
        return 3 if self.quick else 9

    @property
    def precisions(self) -> list[str]:
        from regx.device import pick_precision

        return ["32", "bf16"] if pick_precision("auto", self.device) == "bf16" else ["32"]

    @property
    def best(self) -> str:
        return self.precisions[-1]

    def size(self, model_name: str) -> tuple[int, int]:
        """(steps, batch) of one timed chunk: a GPU's batches are 256; a CPU's few and small."""
        if model_name == "smallcnn":
            return (40, 256) if self.gpu else (8, BATCH)
        return (20, 256) if self.gpu else (2, 64)


def run(
    device_name: str = "cpu", quick: bool = False, skip_runs: bool = False, tta: bool = False, log=print, save=None
) -> dict:
    """The whole benchmark, part by part. `save(result)` is called after each part with what is measured so
    far (marked "partial" until the end), so a benchmark stopped at a borrowed GPU's time limit keeps its
    finished parts. `skip_runs`: no whole `regx train` runs (sections 3, 4, 6, 7 and time to accuracy)."""
    device = torch.device(device_name)
    result = {
        "machine": machine(device),
        "command": "python -m benchmarks.bench " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "engine": [],
        "defaults": [],
        "partial": True,
    }
    plan = _Plan(device, quick, log, lambda: save(result) if save is not None else None)
    parts = [_engine]
    parts += [] if skip_runs else [_whole_epoch, _startup]  # #32's goal figures first
    parts += [_channels_last, _bf16, _step_costs, _compile, _augmentation]
    parts += [] if plan.gpu else [_inference]
    parts += [] if skip_runs else ([_time_to_accuracy] if plan.gpu or tta else []) + [_trackers, _measurements]
    for part in parts:
        part(plan, result)
        plan.saved()
    del result["partial"]
    plan.saved()
    return result


def _engine(plan: _Plan, result: dict) -> None:
    """Section 1: regx's training loop against the hand-written one, each model, precision and aug."""
    p = plan.precisions
    cases = [("smallcnn", x, a, False) for x in p for a in ("none", "all")]
    cases += [("resnet18", x, "none", False) for x in p] + [("resnet18", plan.best, "all", False)]
    if plan.gpu:  # compile_aug: the augmentation's kernels fused (on the CPU it compiles for seconds and gains little)
        cases += [(m, plan.best, "all", True) for m in ("smallcnn", "resnet18")]
    for model_name, precision, aug, compile_aug in cases:
        steps, batch = plan.size(model_name) if plan.gpu or model_name != "smallcnn" else (5, BATCH)
        r = alternate(
            {
                "regx": regx_loop(model_name, plan.device, precision, steps, batch, aug, compile_aug=compile_aug),
                "hand": hand_loop(model_name, plan.device, precision, steps, batch),
            },
            plan.repeats,
        )
        row = {
            "model": model_name,
            "precision": precision,
            "aug": aug + (" compile_aug" if compile_aug else ""),
            "batch": batch,
            "regx": r["regx"],
            "hand": r["hand"],
            "ratio": paired_ratio(r["regx"], r["hand"]),
        }
        result["engine"].append(row)
        plan.log(
            f"  1. {model_name:9s} {precision:>4s} aug={row['aug']:<4s}  regx {r['regx']['median']:8.0f} img/s   "
            f"hand {r['hand']['median']:8.0f} img/s   ratio {row['ratio']:.3f}"
        )
        plan.saved()


def _whole_epoch(plan: _Plan, result: dict) -> None:
    result["whole_epoch"] = w = whole_epochs(str(plan.device), plan.quick)
    plan.log(
        f"  3. whole epochs {w['whole_epoch_img_per_s']:,.0f} img/s vs steady {w['steady_img_per_s']:,.0f}: "
        f"ratio {w['ratio']:.3f}"
    )


def _startup(plan: _Plan, result: dict) -> None:
    result["startup"] = s = startup(3 if plan.quick else 5)
    plan.log(
        f"  4. regx --help {s['help_s']['median']:.2f}s; train debug=smoke ready to train after "
        f"{s['to_first_step_s']['median']:.2f}s (import torch {s['import_torch_s']:.2f}s, "
        f"torch+torchvision {s['import_torch_torchvision_s']:.2f}s)"
    )


def _default(plan: _Plan, result: dict, what: str, r: dict, a: str, b: str) -> None:
    """A default's measurement: contender a against b, from one alternation `r`."""
    ratio = paired_ratio(r[a], r[b])
    result["defaults"].append({"what": what, "ratio": ratio, "a": r[a], "b": r[b]})
    plan.log(f"  defaults: {what}: x{ratio:.3f}")


def _channels_last(plan: _Plan, result: dict) -> None:
    for model_name in ("smallcnn", "resnet18"):
        steps, batch = plan.size(model_name)
        r = alternate(
            {
                "channels_last": hand_loop(model_name, plan.device, plan.best, steps, batch, True),
                "contiguous": hand_loop(model_name, plan.device, plan.best, steps, batch, False),
            },
            plan.repeats,
        )
        _default(
            plan, result, f"channels_last vs contiguous, {model_name} {plan.best}", r, "channels_last", "contiguous"
        )


def _bf16(plan: _Plan, result: dict) -> None:
    if len(plan.precisions) < 2:
        return
    for model_name in ("smallcnn", "resnet18"):  # the hand loop's rates of section 1
        rows = {r["precision"]: r for r in result["engine"] if r["model"] == model_name and r["aug"] == "none"}
        ratio = rows["bf16"]["hand"]["median"] / rows["32"]["hand"]["median"]
        result["defaults"].append({"what": f"bf16 autocast vs fp32, {model_name}", "ratio": ratio})
        plan.log(f"  defaults: bf16 autocast vs fp32, {model_name}: x{ratio:.3f}")
    for model_name in ("smallcnn", "resnet18") if plan.gpu else ():
        # At batch 256 a GPU is bound by kernel launches and autocast's casts show; at 1024 it computes.
        r = alternate(
            {
                "bf16": hand_loop(model_name, plan.device, "bf16", 20, 1024),
                "32": hand_loop(model_name, plan.device, "32", 20, 1024),
            },
            plan.repeats,
        )
        _default(plan, result, f"bf16 autocast vs fp32, {model_name} batch 1024", r, "bf16", "32")


def _step_costs(plan: _Plan, result: dict) -> None:
    """What average=ema, clip_grad and the augmentation policies add to a step."""
    for model_name in ("smallcnn", "resnet18"):
        steps, batch = plan.size(model_name)
        loop = functools.partial(regx_loop, model_name, plan.device, plan.best, steps, batch)
        r = alternate(
            {
                "plain": loop("none"),
                "ema": loop("none", ema=True),
                "clip": loop("none", clip=1.0),
                "trivial": loop("trivialaugment"),
                "rand": loop("randaugment"),
                "auto": loop("autoaugment"),
                "augmix": loop("augmix"),
                "augmix_jsd": loop("augmix", overrides=("aug.augmix.jsd=12",)),
            },
            plan.repeats,
        )
        for what, key in (
            ("average=ema", "ema"),
            ("clip_grad=1 (norm)", "clip"),
            ("aug=trivialaugment", "trivial"),
            ("aug=randaugment", "rand"),
            ("aug=autoaugment", "auto"),
            ("aug=augmix", "augmix"),
            ("aug=augmix aug.augmix.jsd=12 (3 views)", "augmix_jsd"),
        ):
            _default(plan, result, f"{what} vs off, {model_name} {plan.best}", r, key, "plain")
        plan.saved()


def _compile(plan: _Plan, result: dict) -> None:
    steps, batch = plan.size("smallcnn")
    modes = ("default", "reduce-overhead") if plan.gpu else ("default",)
    for row in compile_effect(plan.device, plan.best, steps, batch, plan.repeats, modes):
        result["defaults"].append(row)
        plan.log(f"  defaults: {row['what']}: x{row['ratio']:.3f} after {row['compile_s']:.1f}s of compiling")
        plan.saved()


def _augmentation(plan: _Plan, result: dict) -> None:
    """Section 2: regx's batched augmentation against torchvision's per image, alone and end to end."""
    steps, batch = (40, 256) if plan.gpu else (10, BATCH)
    r = alternate(aug_alone(plan.device, steps, batch), plan.repeats)
    regx, tv = list(r)
    result["aug_alone"] = {"regx": r[regx], "torchvision": r[tv], "ratio": paired_ratio(r[regx], r[tv])}
    plan.log(
        f"  2. augmentation alone: regx {r[regx]['median']:,.0f} img/s, "
        f"torchvision {r[tv]['median']:,.0f} img/s, x{result['aug_alone']['ratio']:.1f}"
    )
    steps = 40 if plan.gpu else 8
    r = alternate(
        {
            "regx": regx_loop("smallcnn", plan.device, plan.best, steps, BATCH, "all"),
            "torchvision": tv_end_to_end("smallcnn", plan.device, plan.best, steps, BATCH),
        },
        plan.repeats,
    )
    result["aug_end_to_end"] = {**r, "ratio": paired_ratio(r["regx"], r["torchvision"])}
    plan.log(
        f"  2. end to end (smallcnn {plan.best}): regx {r['regx']['median']:,.0f} img/s, torchvision "
        f"{r['torchvision']['median']:,.0f} img/s, x{result['aug_end_to_end']['ratio']:.2f}"
    )


def _inference(plan: _Plan, result: dict) -> None:
    """Section 5 (CPU): regx predict against a hand-written inference loop, and ONNX Runtime."""
    result["predict"] = p = predict_speed(plan.repeats)
    plan.log(
        f"  5. regx predict {p['regx']['median']:,.0f} img/s vs hand loop {p['hand']['median']:,.0f}: ratio "
        f"{p['ratio']:.3f}; decoding {p['decode_1_process']['median']:,.0f} img/s in one process, model "
        f"{p['model']['median']:,.0f} img/s"
    )
    result["onnx"] = onnx_vs_eager(plan.repeats)
    for o in result["onnx"]:
        plan.log(f"  5. onnxruntime/eager {o['model']}: x{o['ratio']:.2f}")


def _time_to_accuracy(plan: _Plan, result: dict) -> None:
    result["time_to_accuracy"] = t = time_to_accuracy(str(plan.device))
    plan.log(
        f"  time to {100 * t['target']:.0f}% val: "
        + (f"{t['reached']['seconds']:.1f}s (epoch {t['reached']['epoch']})" if t["reached"] else "not reached")
        + f"; run {t['wall_s']:.1f}s, test {100 * t['test_acc']:.2f}%"
    )


def _trackers(plan: _Plan, result: dict) -> None:
    """Section 6: a tracker's logging per epoch, against an epoch of section 3's run."""
    w = result["whole_epoch"]["epoch_wall_s"]
    epoch_s = statistics.median(b - a for a, b in zip(w, w[1:]))
    result["trackers"] = {"epoch_s": epoch_s, "per_epoch": tracker_cost()}
    for name, t in result["trackers"]["per_epoch"].items():
        plan.log(
            f"  6. logger={name}: {1000 * t['median']:.1f} ms per epoch, {100 * t['median'] / epoch_s:.2f}% of an "
            f"epoch ({epoch_s:.1f} s)"
        )


def _measurements(plan: _Plan, result: dict) -> None:
    result["measurements"] = c = {
        **measurement_cost(str(plan.device), 3 if plan.quick else 7),
        "command": result["command"],
        "date": result["date"],
    }
    plan.log(
        f"  7. calibration {c['calibration_pct_of_epoch']:.2f}% of an epoch; label noise's evaluation "
        f"{c['noisy_eval_pct_of_epoch']:.2f}%"
    )


def _fmt(s: dict) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def section(r: dict) -> str:
    m = r["machine"]
    where = f"{m.get('gpu', m['cpu'])}" + ("" if "gpu" in m else f", {m['cores']} cores, {m['threads']} threads")
    lines = [
        f"Measured {r['date']} on {where}; torch {m['torch']}, Python {m['python']}. Command: "
        f"`{r['command'].strip()}`. Images/s: median (min-max) of the repeats; "
        "ratios: median of the per-round ratios (contenders alternate round by round)."
        + (
            " **Stopped before its end** (a borrowed machine's time limit): the parts below are those it finished."
            if r.get("partial")
            else ""
        ),
        "",
        "**1. regx's engine vs a hand-written loop** (same model, data in memory, batch, dtype, channels_last "
        "and SGD; the hand loop never augments; targets: ratio >= 0.95 with aug=none, >= 0.90 with aug=all)",
        "",
        "| model | precision | regx aug | batch | regx img/s | hand loop img/s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["engine"]:
        lines.append(
            f"| {e['model']} | {e['precision']} | {e['aug']} | {e['batch']} | {_fmt(e['regx'])} | "
            f"{_fmt(e['hand'])} | {e['ratio']:.3f} |"
        )
    for key, part in (
        ("aug_end_to_end", _augmentation_lines),
        ("whole_epoch", _whole_epoch_lines),
        ("startup", _startup_lines),
        ("predict", _inference_lines),
        ("trackers", _trackers_lines),
        ("measurements", _measurements_lines),
        ("compile_aug", _compile_aug_lines),
        ("decode", _decode_lines),
        ("checkpoint", _checkpoint_lines),
        ("fmnist", _fmnist_lines),
        ("recipes", _recipes_lines),
        ("vs_timm", _vs_timm_lines),
        ("vs_timm_matched", _vs_timm_matched_lines),
        ("time_to_accuracy", _time_to_accuracy_lines),
        ("defaults", _defaults_lines),
    ):
        if r.get(key):  # a part not measured (yet) is left out
            lines += part(r)
    return "\n".join(lines)


def _augmentation_lines(r: dict) -> list[str]:
    a, b = r["aug_alone"], r["aug_end_to_end"]
    return [
        "",
        "**2. Augmentation** (aug=all's five operations: flips, rotation, rescale, translation, colour; "
        "torchvision v2 per image in a DataLoader with 2 workers; targets: alone >= 5x, end to end never slower)",
        "",
        "| | regx img/s | torchvision img/s | ratio |",
        "|---|---|---|---|",
        f"| augmentation alone | {_fmt(a['regx'])} | {_fmt(a['torchvision'])} | {a['ratio']:.1f}x |",
        f"| end to end, smallcnn training | {_fmt(b['regx'])} | {_fmt(b['torchvision'])} | {b['ratio']:.2f}x |",
    ]


def _whole_epoch_lines(r: dict) -> list[str]:
    w = r["whole_epoch"]
    return [
        "",
        f"**3. Whole epochs vs steady state** (smallcnn, aug=all, {w['n_train']:,} training images; "
        f"epochs 2-{w['epochs']} of one run timed end to end, so they include evaluation, "
        "the clean-train evaluation, checkpoints, metrics and curves.png; target >= 0.85): "
        f"{w['whole_epoch_img_per_s']:,.0f} vs {w['steady_img_per_s']:,.0f} img/s, ratio **{w['ratio']:.3f}**.",
    ]


def _startup_lines(r: dict) -> list[str]:
    s = r["startup"]
    return [
        "",
        f"**4. Start-up:** `regx --help` {s['help_s']['median']:.2f} s (target < 0.3 s); "
        f"`regx train debug=smoke` is ready to train (data and model built) {s['to_first_step_s']['median']:.2f} s "
        f"after launch. Importing torch alone takes {s['import_torch_s']:.2f} s; torchvision would add "
        f"{s['import_torch_torchvision_s'] - s['import_torch_s']:.2f} s, so regx imports it only for "
        "torchvision models and datasets.",
    ]


def _inference_lines(r: dict) -> list[str]:
    p = r["predict"]
    lines = [
        "",
        f"**5. Using a trained model** ({p['images']:,} PNG files of {p['size']} px, smallcnn, batches of "
        "256, decoding in 2 DataLoader workers; target >= 0.9): `regx predict` "
        f"{_fmt(p['regx'])} img/s vs a hand-written inference loop over the same files {_fmt(p['hand'])}, "
        f"ratio **{p['ratio']:.3f}**. Apart: decoding {_fmt(p['decode_1_process'])} img/s in one process, "
        f"the model {_fmt(p['model'])} img/s.",
    ]
    for o in r.get("onnx", []):
        lines.append(
            f"ONNX Runtime vs eager PyTorch, {o['model']} at {o['size']} px, batch {o['batch']}: "
            f"{_fmt(o['onnxruntime'])} vs {_fmt(o['eager'])} img/s, x{o['ratio']:.2f}."
        )
    return lines


def _trackers_lines(r: dict) -> list[str]:
    t = r["trackers"]
    return [
        "",
        f"**6. Experiment trackers** (one epoch's logging: metrics.csv's row to the tracker's embedded "
        f"store; target under 1% of an epoch of section 3's run, {t['epoch_s']:.1f} s): "
        + "; ".join(
            f"`logger={name}` {1000 * c['median']:.1f} ms ({1000 * c['min']:.1f}-{1000 * c['max']:.1f}), "
            f"{100 * c['median'] / t['epoch_s']:.2f}%"
            for name, c in t["per_epoch"].items()
        )
        + ".",
    ]


def _measurements_lines(r: dict) -> list[str]:
    c = r["measurements"]
    return [
        "",
        f"**7. What the measurements beyond accuracy cost** (`{c.get('command', '')}`, {c.get('date', '')}; "
        f"{c['setup']}; an epoch {c['epoch_s']:.1f} s, its validation pass {c['val_pass_s']:.2f} s; target under "
        f"1% of an epoch): calibration (ECE, MCE, Brier) {1000 * c['calibration_s']:.1f} ms per validation pass, "
        f"{c['calibration_pct_of_epoch']:.2f}% of an epoch; label noise nothing per step (the labels are swapped "
        f"once, {1000 * c['relabel_once_s']:.1f} ms for 60,000), and per epoch the evaluation of up to 2,000 "
        f"flipped images, {c['noisy_eval_s']:.2f} s, {c['noisy_eval_pct_of_epoch']:.2f}% of an epoch "
        "(that is the memorization curve: it costs what evaluating those images costs)."
        + (f" {c['note']}" if c.get("note") else ""),
    ]


def _compile_aug_lines(r: dict) -> list[str]:
    lines = []
    c = r["compile_aug"]
    counted = (
        "kernels the profiler saw run"
        if "cuda" in c["command"]
        else ("the CPU: operators of the sync-free path eager, draws plus inductor's fused kernels compiled")
    )
    lines += [
        "",
        f"**8. compile_aug: the augmentation compiled** (`{c['command']}`, {c['date']}; one batch of 256 images "
        f"of 32 px, each option alone; launches per batch counted on {counted}):",
        "",
        "| aug | eager ms/batch | compiled ms/batch | speed-up | eager launches | compiled launches |",
        "|---|---|---|---|---|---|",
        *(
            f"| {x['option']} | {x['eager_ms']:.2f} | {x['compiled_ms']:.2f} | "
            f"x{x['eager_ms'] / x['compiled_ms']:.2f} | {x['eager_launches']} | {x['compiled_launches']} |"
            for x in c["rows"]
        ),
    ]
    return lines


def _decode_lines(r: dict) -> list[str]:
    c = r["decode"]
    lines = [
        "",
        f"**9. An image folder's decoders** (`{c['command']}`, {c['date']}; a streamed folder's batches fitted "
        "to 224 px on the device, images per second; `data.decode`: pil and cpu decode in the DataLoader "
        "workers, device reads bytes there and decodes each batch on the device):",
        "",
        "| JPEGs | decoder | workers | pil | cpu | device | resnet18 epoch s (pil / cpu / device) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in c["runs"]:
        rate = {row["decode"]: row for row in run["rows"]}
        epochs = " / ".join(
            f"{rate[h]['resnet18_epoch']['epoch_s']:.1f}"
            for h in ("pil", "cpu", "device")
            if "resnet18_epoch" in rate[h]
        )
        lines.append(
            f"| {run['rows'][0]['images']:,} at {run['side']} px ({run['source']}) | {run['decoder']} | "
            f"{run['workers']} | "
            + " | ".join(f"{rate[h]['img_per_s']:,.0f}" for h in ("pil", "cpu", "device"))
            + f" | {epochs or '-'} |"
        )
    return lines


def _checkpoint_lines(r: dict) -> list[str]:
    c = r["checkpoint"]
    return [
        "",
        f"**10. How long a checkpoint stops training** (`{c['command']}`, {c['date']}; weights and SGD momentum, "
        "median ms; `checkpoint.background` copies the checkpoint, then a thread writes it while training goes "
        "on):",
        "",
        "| model | file MB | foreground | background: training stops | background: the write |",
        "|---|---|---|---|---|",
        *(
            f"| {x['model']} | {x['mb']:.0f} | {1000 * x['foreground']['median']:.0f} | "
            f"{1000 * x['background']['median']:.0f} | {1000 * x['background_write']['median']:.0f} |"
            for x in c["rows"]
        ),
    ]


def _fmnist_lines(r: dict) -> list[str]:
    f = r["fmnist"]
    runs = f["runs"]
    hit = sum(x["test_acc"] >= f["target"] for x in runs)
    return [
        "",
        f"**11. Fashion-MNIST to {100 * f['target']:.0f}% test accuracy** (`{f['command']}`, {f['date']}; "
        f"`regx train experiment={f['experiment']} seed=S` on the real files, timed from the command to its "
        "exit: start-up, training, evaluation and the summary; goal on an H100: under 12 s): "
        + "; ".join(
            f"seed {x['seed']}: test {100 * x['test_acc']:.2f}% in {x['command_s']:.1f} s ({x['epochs']} epochs "
            f"{x['train_s']:.1f} s, the run {x['run_wall_s']:.1f} s)"
            for x in runs
        )
        + f". {hit} of {len(runs)} seeds reach {100 * f['target']:.0f}%"
        + (" (stopped before its other seeds: a time limit)" if f.get("partial") else "")
        + "; median "
        f"{statistics.median(x['command_s'] for x in runs):.1f} s from the command to the summary.",
    ]


def _recipes_lines(r: dict) -> list[str]:
    lines = []
    for recipe in r.get("recipes", []):
        lines += [
            "",
            f"**Recipe on real data: {recipe['what']}** (`{recipe['command']}`, {recipe['machine']}): "
            + "; ".join(
                f"seed {run['seed']}: test {run['test_acc']:.2f}%, best val {run['best_val_acc']:.2f}% in "
                f"{run['wall_s']:.0f} s of wall time including start-up"
                for run in recipe["runs"]
            )
            + ".",
        ]
    return lines


def _vs_timm_lines(r: dict) -> list[str]:
    return _timm_table(
        "regx's defaults against timm's train.py defaults",
        "timm's resnet18 under both, regx's smallcnn too; timm's train.py with its defaults, given only the data's "
        "size, classes, epochs and seed",
        r["vs_timm"],
    )


def _vs_timm_matched_lines(r: dict) -> list[str]:
    return [
        line
        for recipe, v in r["vs_timm_matched"].items()
        for line in _timm_table(
            f"regx against timm's train.py at matched settings, {recipe}",
            "the same recipe on both sides: timm's resnet18, batch 128, SGD 0.05 Nesterov, coupled weight decay "
            "5e-4 off 1-d parameters, cosine per update, no warmup, fp32, ImageNet's mean and std, no eval crop",
            v,
        )
    ]


def _timm_table(title: str, what: str, v: dict) -> list[str]:
    from benchmarks.vs_timm import to_markdown

    table = to_markdown(v["runs"], v["train_size"], v["epochs"], v["seeds"], v["cores"]).rstrip()
    return ["", f"**{title}** (`{v['command']}`, {v['date']}; {what}):", "", table] + (
        ["", v["note"]] if v.get("note") else []
    )


def _time_to_accuracy_lines(r: dict) -> list[str]:
    lines = []
    t = r["time_to_accuracy"]
    reached = (
        f"after {t['reached']['seconds']:.1f} s of training and evaluation (epoch {t['reached']['epoch']}; "
        f"{t['reached']['wall_s']:.1f} s after the run began)"
        if t["reached"]
        else f"not reached in {t['epochs']} epochs"
    )
    lines += [
        "",
        f"**Time to accuracy** (`regx train`, the default experiment on the embedded shapes data): "
        f"{100 * t['target']:.0f}% validation accuracy {reached}; the whole run took {t['wall_s']:.1f} s "
        f"for {t['epochs']} epochs, best validation {100 * t['best_val_acc']:.2f}%, "
        f"test {100 * t['test_acc']:.2f}%.",
    ]
    return lines


def _defaults_lines(r: dict) -> list[str]:
    return [
        "",
        "**Defaults, measured:** "
        + "; ".join(
            f"{d['what']}: x{d['ratio']:.2f}"
            + (f" after {d['compile_s']:.0f} s of compiling (an empty inductor cache)" if "compile_s" in d else "")
            for d in r["defaults"]
        )
        + ".",
    ]


HEADER = """# Benchmarks

Generated by `make bench` (CPU) and `make bench-gpu` (`python -m benchmarks.bench --device cuda`) from
`bench.json` and `bench-cuda.json`; see `benchmarks/bench.py` for what each number measures. The defaults
that follow from them:

- `precision=auto` picks bf16 autocast on CUDA with bf16 and on CPUs with AVX-512 bf16 or AMX, fp32
  elsewhere (fp16 with a GradScaler only when asked for: `precision=16`).
- `channels_last=true`: the measured effect is below.
- `compile=false`: `torch.compile` costs seconds of compiling in every run before it pays, and its gain
  on a small CNN is modest (both measured below); `compile=true` turns it on, `compile_mode=reduce-overhead`
  adds CUDA graphs on a GPU.
- `compile_aug`: null, which compiles the per-image augmentation only on CUDA with `compile=true`. On the
  CPU (section 8) compiling fuses aug=all's 199 operators into 16 kernels but is slower for every option
  that warps (inductor's grid_sample against ATen's); on a GPU, where a batch is bound by launches, the
  GPU section's figures decide.
- `data.decode=pil`: on the CPU (section 9) Pillow in the workers is as fast as TorchCodec's or
  torchvision's decoder for small JPEGs and faster for large ones, which it decodes at a reduced scale;
  `data.decode=device` is for CUDA, where the GPU section's figures decide its default.
- Threads: PyTorch's one intra-op pool uses every core; DataLoader workers (image folders that stream)
  run one thread each, so they do not oversubscribe the cores.
- Data stays on the training device as uint8; augmentation runs there on whole batches; metrics are
  summed there and read back once per epoch (and at progress-bar refreshes on a terminal).
"""


def write_markdown(root: Path) -> Path:
    parts = [HEADER]
    cpu, gpu = root / "bench.json", root / "bench-cuda.json"
    parts.append(
        "## CPU\n\n" + (section(json.loads(cpu.read_text())) if cpu.is_file() else "Not measured yet: `make bench`.")
    )
    parts.append(
        "## GPU\n\n"
        + (
            section(json.loads(gpu.read_text()))
            if gpu.is_file()
            else "Pending: no GPU was at hand yet. `make bench-gpu` on a CUDA machine runs the same "
            "comparisons there and fills this section; the GPU code paths (device-resident data "
            "and augmentation, bf16 autocast, channels_last) run in the CPU tests meanwhile."
        )
    )
    parts.append(launches())
    out = root / "BENCHMARKS.md"
    out.write_text("\n\n".join(parts) + "\n")
    return out


def launches() -> str:
    """The operators one augmented batch dispatches on an accelerator's path, counted (not timed: the
    count is the code's, the same on any machine) when this file is written."""
    from benchmarks.aug_profile import OPTIONS, ops_per_batch

    counts = "".join(f"| {ops_per_batch(o)} " for o in OPTIONS)
    return (
        "## Kernel launches per augmented batch\n\n"
        "On a GPU a small batch is bound by kernel launches (section 1 of the GPU results). The ATen operators "
        "one batch of each `aug=` option dispatches on an accelerator's sync-free path (its per-image parameters "
        "drawn, then applied; each operator is one launch or more), counted on the CPU with a TorchDispatchMode "
        "(`benchmarks/aug_profile.py`; `tests/test_augment.py` keeps them as ceilings):\n\n"
        "| aug | " + " | ".join(OPTIONS) + " |\n|---|" + "---|" * len(OPTIONS) + "\n| operators " + counts + "|"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller whole-epoch run")
    parser.add_argument("--tta", action="store_true", help="also time-to-accuracy on the embedded data (always on GPU)")
    parser.add_argument("--out", default=".", help="where bench.json and BENCHMARKS.md go (default: here)")
    parser.add_argument(
        "--measurements", action="store_true", help="only what calibration and label noise cost (section 7)"
    )
    parser.add_argument(
        "--compile-aug", action="store_true", help="only compile_aug against eager, each aug option (section 8)"
    )
    parser.add_argument(
        "--decode", action="store_true", help="only an image folder's decoders, each data.decode (section 9)"
    )
    parser.add_argument(
        "--jpegs", help="with --decode: a folder of class folders of JPEGs to read (default: write them)"
    )
    parser.add_argument(
        "--checkpoint", action="store_true", help="only how long a checkpoint stops training (section 10)"
    )
    parser.add_argument(
        "--fmnist",
        nargs="?",
        const="",
        metavar="DIR",
        help="only Fashion-MNIST to 93%% test accuracy, 3 seeds (section 11); DIR: its IDX files (default: "
        "data.root's and Debian's)",
    )
    args = parser.parse_args(argv)
    if args.fmnist and not Path(args.fmnist).is_dir():
        print(
            f"regx: error: --fmnist {args.fmnist}: no such folder (it holds Fashion-MNIST's IDX files)", file=sys.stderr
        )
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("regx: error: --device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    print(f"regx bench on {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    root = Path(args.out)
    name = "bench-cuda.json" if args.device.startswith("cuda") else "bench.json"
    kept = json.loads((root / name).read_text()) if (root / name).is_file() else {}
    # each part alone; `partial(so_far)` saves what a part that takes minutes has measured so far
    parts = {
        "measurements": lambda partial: measurement_cost(args.device),
        "compile_aug": lambda partial: compile_aug_effect(args.device),
        "decode": lambda partial: decode_effect(args.device, args.jpegs),
        "checkpoint": lambda partial: checkpoint_stall(args.device),
        "fmnist": lambda partial: fmnist_to_accuracy(args.device, args.fmnist or None, partial=partial),
    }
    key = next((k for k in parts if getattr(args, k) not in (None, False)), None)
    if key is not None and not kept:
        flag = "--" + key.replace("_", "-")
        print(f"regx: error: {flag} adds to {root / name}, which a whole run writes first", file=sys.stderr)
        return 2
    # measurements taken apart from the benchmark (whole runs, sections 7 to 11, each dated): a whole run keeps them
    apart = ("recipes", "vs_timm", "vs_timm_matched", "measurements", "compile_aug", "decode", "checkpoint", "fmnist")

    def save(result: dict) -> None:  # after each part: a run stopped at a time limit keeps what it finished
        (root / name).write_text(json.dumps(result, indent=2) + "\n")

    if key is not None:
        result = kept
        stamp = {"command": "python -m benchmarks.bench " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d")}
        result[key] = {**parts[key](lambda part: save({**kept, key: {**part, **stamp, "partial": True}})), **stamp}
        print(json.dumps(result[key], indent=2))
    else:
        result = run(
            args.device,
            args.quick,
            tta=args.tta,
            save=lambda r: save({**r, **{k: kept[k] for k in apart if k in kept}}),
        )
        result.update({k: kept[k] for k in apart if k in kept})
    save(result)
    print(f"wrote {root / name} and {write_markdown(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

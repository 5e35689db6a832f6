"""Image folders at scale (#32 item 4): `python -m benchmarks.decode [--device cuda] [--jpegs DIR]`.

Writes real images as JPEG files (Fashion-MNIST's, from Debian's IDX files, upscaled to 256 px;
where they are absent the embedded shapes, said so) in class folders, then times a streamed
folder's batches fitted to 224 px under each `data.decode` (pil and cpu: decoded in the DataLoader
workers; device: the workers read bytes, the batch is decoded on the device), and with --epoch one
epoch of `regx train model=resnet18` on them per decoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

SIDE = 256  # the files' side; batches are fitted to FIT (a resize and a centre crop, as photos need)
FIT = 224


def write_jpegs(folder: Path, n: int, side: int = SIDE, quality: int = 90) -> str:
    """`n` training images as JPEG files at `side` px in class folders under `folder`; returns where
    they came from (Fashion-MNIST's files, or the embedded shapes where those are absent)."""
    import numpy as np
    from PIL import Image

    from regx.data.core import DataError, load_data, loading_keys
    from regx.data.synthetic import make_shapes

    try:
        from omegaconf import OmegaConf

        from regx.config import DataConfig

        keys = OmegaConf.to_container(OmegaConf.structured(DataConfig(name="fashion_mnist", download=False)))
        data = load_data(**loading_keys({**keys, "root": str(folder / "_root")}))
        x, y, source = data.train.x[:n], data.train.y[:n], "Fashion-MNIST (Debian's IDX files)"
    except DataError:
        x, y = make_shapes(n, 32, 10, 3, seed=0)
        source = "the embedded shapes (Fashion-MNIST's files are absent)"
    for i, (img, label) in enumerate(zip(x, y.tolist())):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        arr = img.permute(1, 2, 0).squeeze(-1).numpy().astype(np.uint8)
        im = Image.fromarray(arr).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        im.save(folder / str(label) / f"{i:06d}.jpg", quality=quality)
    return source


def decode_rate(folder: Path, how: str, device: torch.device, workers: int, batch: int = 256, repeats: int = 3) -> dict:
    """Images per second through regx's streamed batches (decode, fit to FIT px, on `device`), the
    median of `repeats` passes over the folder."""
    from regx.data.core import iterate
    from regx.data.folders import file_split, scan_folder

    items = scan_folder(str(folder))[0]["train"]
    split = file_split([p for p, _ in items], torch.tensor([lab for _, lab in items]), FIT, how)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = sum(len(y) for _, y in iterate(split, batch, device=device, workers=workers))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(n / (time.perf_counter() - t))
    return {"img_per_s": sorted(rates)[len(rates) // 2], "all": rates, "images": len(items)}


def epoch_time(folder: Path, how: str, device: str, workers: int, batch: int) -> dict:
    """One epoch of `regx train model=resnet18` on the folder, streamed, under data.decode=`how`:
    the epoch's seconds (training and evaluation) and its training images per second."""
    from benchmarks.bench import _regx
    from regx.files import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "train",
            "data=imagefolder",
            f"data.path={folder}",
            f"data.image_size={FIT}",
            "data.stream=true",
            f"data.decode={how}",
            f"data.workers={workers}",
            "model=resnet18",
            f"batch_size={batch}",
            "epochs=1",
            f"device={device}",
            "hydra.run.dir=r",
        ]
        res = _regx(args, tmp)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        row = read_metrics(Path(tmp) / "r" / "metrics.csv")[0]
    return {"epoch_s": float(row["epoch_s"]), "img_per_s": float(row["img_per_s"])}


def run(
    device_name: str, n: int, workers: int, epoch: bool, jpegs: str | None = None, side: int = SIDE, log=print
) -> dict:
    from regx.data.folders import jpeg_decoder

    device = torch.device(device_name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(jpegs).resolve() if jpegs else Path(tmp) / "jpegs"
        source = "given" if jpegs else write_jpegs(folder, n, side)
        decoder = jpeg_decoder().library
        result = {
            "source": source,
            "side": side,
            "fit": FIT,
            "workers": workers,
            "device": device_name,
            "decoder": decoder,
            "rows": [],
        }
        log(f"decode: {n} JPEGs at {side} px from {source}, fitted to {FIT} px, {workers} workers, on {device_name}")
        for how in ("pil", "cpu", "device"):
            row = {"decode": how, **decode_rate(folder, how, device, workers)}
            if epoch:
                row["resnet18_epoch"] = epoch_time(
                    folder, how, device_name, workers, 256 if device.type == "cuda" else 32
                )
            result["rows"].append(row)
            log(
                f"  data.decode={how:6s} {row['img_per_s']:9,.0f} img/s"
                + (f"   resnet18 epoch {row['resnet18_epoch']['epoch_s']:.1f} s" if epoch else "")
            )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epoch", action="store_true", help="also one epoch of resnet18 at 224 px per decoder")
    parser.add_argument("--side", type=int, default=SIDE, help=f"the JPEGs' side in pixels (default {SIDE})")
    parser.add_argument("--jpegs", help="a folder of class folders of JPEGs to read instead of writing them")
    args = parser.parse_args(argv)
    result = run(args.device, args.images, args.workers, args.epoch, args.jpegs, args.side, log=print)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

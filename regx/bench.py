"""Benchmarks (not tests): `python -m regx.bench [aug]`.

aug: the cost of batched per-sample augmentation in a smallcnn training step on this machine,
alternating the contenders so drift cancels, medians over repeats after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def aug_overhead(options=("none", "flip_rotate", "all", "[all,mixup]"), batch: int = 128, size: int = 32,
                 repeats: int = 7, steps: int = 10, precision: str = "auto") -> dict[str, float]:
    """Median seconds per training step for each aug option (smallcnn, in-memory batch, CPU)."""
    from regx import config
    from regx.augment import Augment
    from regx.engine import Pipeline, autocast
    from regx.models import build_model
    from regx.train import pick_precision

    device = torch.device("cpu")
    precision = pick_precision(precision, device)
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 10, (batch,))

    def make_step(option):
        aug = config.compose([f"aug={option}"]).aug
        model = build_model(name="smallcnn", num_classes=10, in_channels=3).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        pipe = Pipeline(torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25), True,
                        Augment(aug, torch.Generator().manual_seed(0)) if Augment.active(aug) else None)

        def step():
            x, _ = pipe.train(x8)
            with autocast(device, precision):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    fns = {o: make_step(o) for o in options}
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {o: [] for o in options}
    for _ in range(repeats):
        for o, fn in fns.items():
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            times[o].append((time.perf_counter() - t) / steps)
    return {o: statistics.median(t) for o, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regx.bench")
    parser.add_argument("what", nargs="?", default="aug", choices=["aug"])
    parser.parse_args(argv)
    result = aug_overhead()
    base = result["none"]
    print(f"smallcnn training step, batch 128, 32px, CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    for option, seconds in result.items():
        print(f"  aug={option:<14} {1000 * seconds:7.1f} ms/step  x{seconds / base:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where augmentation's time goes: `python -m benchmarks.aug_profile [--device cuda]`.

Times each `aug=` option alone on a 256 x 3 x 32 x 32 batch and counts the operators its batch
dispatches on an accelerator's (sync-free) path, then profiles aug=all (kernel launches and the ops
behind them). On a GPU a small batch is bound by launches, not by the GPU's work: each operator is one
launch or more.
"""

from __future__ import annotations

import argparse
import time

import torch


def count_ops(fn) -> int:
    """The ATen operators `fn()` dispatches (views and in-place ones included), as torch sees them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as counted:
        fn()
    return counted.n


def ops_per_batch(option: str, n: int = 64, size: int = 32) -> int:
    """The operators one batch of `aug=option` dispatches on an accelerator's path (its per-image
    parameters drawn, then applied sync-free), counted on the CPU."""
    from regx import config
    from regx.augment import Augment, apply, stages_of

    cfg = config.compose([f"aug={option}"]).aug
    aug = Augment(cfg, torch.Generator().manual_seed(0))
    x, noise = torch.rand(n, 3, size, size), torch.rand(n, 3, size, size)
    return count_ops(lambda: apply(x, aug.sample(n, (size, size), "cpu"), noise, stages=stages_of(cfg), sync_free=True))


def main(argv=None) -> int:
    from torch.profiler import ProfilerActivity, profile

    from regx import config
    from regx.augment import Augment

    parser = argparse.ArgumentParser(prog="python -m benchmarks.aug_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    x = torch.rand(args.batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)

    def make(option: str) -> Augment:
        return Augment(config.compose([f"aug={option}"]).aug, torch.Generator(device=dev).manual_seed(0))

    for option in ("flip", "crop_flip", "flip_rotate", "scale_crop", "color", "erasing", "all"):
        aug, n = make(option), 50
        for _ in range(5):
            aug(x)
        sync()
        t = time.perf_counter()
        for _ in range(n):
            aug(x)
        sync()
        dt = (time.perf_counter() - t) / n
        ops = ops_per_batch(option)
        print(
            f"aug={option:12s} {dt * 1e3:7.3f} ms/batch  {args.batch / dt:10,.0f} img/s  {ops:4d} operators", flush=True
        )
    aug = make("all")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(20):
            aug(x)
        sync()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

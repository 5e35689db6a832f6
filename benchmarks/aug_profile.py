"""Where augmentation's time goes: `python -m benchmarks.aug_profile [--device cuda]`.

Times each `aug=` option alone on a 256 x 3 x 32 x 32 batch, eager and with compile_aug, and counts
what a batch launches (on the CPU: the operators of an accelerator's sync-free path, and the draws plus
fused kernels compiled), then profiles aug=all (kernel launches and the ops behind them). On a GPU a
small batch is bound by launches, not by the GPU's work: each operator is one launch or more.
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


def _make(option: str, dev: torch.device, compiled: bool = False):
    from regx import config
    from regx.augment import Augment

    cfg = config.compose([f"aug={option}"]).aug
    return Augment(cfg, torch.Generator(device=dev).manual_seed(0), compiled=compiled)


def fused_per_batch(option: str, n: int = 64, size: int = 32) -> tuple[int, int]:
    """With `compile_aug`: (the operators one batch of `aug=option` still dispatches eagerly, its draws;
    the kernels torch.compile fused the rest into), counted on the CPU (inductor's C++ kernels; on a GPU
    `compile_effect` counts the Triton kernels a batch launches). Compiles: seconds."""
    from torch._inductor import config, metrics

    torch._dynamo.reset()  # what this process compiled before: its graphs too would come from a cache
    aug = _make(option, torch.device("cpu"), compiled=True)
    metrics.reset()
    with config.patch(force_disable_caches=True):  # a graph from a cache generates (and counts) no kernel
        aug.images(torch.rand(n, 3, size, size))
    eager = count_ops(lambda: aug.draw(n, "cpu")) + aug.erasing  # and erasing's noise
    return eager, metrics.generated_kernel_count


def compile_effect(option: str, dev: torch.device, batch: int = 256, n: int = 50) -> dict:
    """One `aug=option` batch of 32 px images, eager and with compile_aug: ms per batch each, and what
    each launches: on a GPU the kernels the profiler sees run, on the CPU the operators the eager
    (sync-free) path dispatches and the draws plus fused kernels of the compiled one."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def per_batch(aug) -> float:
        for _ in range(5):  # the compiled one compiles in the first
            aug(x)
        sync()
        t = time.perf_counter()
        for _ in range(n):
            aug(x)
        sync()
        return (time.perf_counter() - t) / n

    def kernels(aug) -> int:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            aug(x)
            sync()
        return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())

    eager, compiled = _make(option, dev), _make(option, dev, compiled=True)
    out = {"option": option, "eager_ms": 1e3 * per_batch(eager), "compiled_ms": 1e3 * per_batch(compiled)}
    if dev.type == "cuda":
        out.update(eager_launches=kernels(eager), compiled_launches=kernels(compiled))
    else:
        draws, fused = fused_per_batch(option)
        out.update(eager_launches=ops_per_batch(option), compiled_launches=draws + fused)
    return out


OPTIONS = ("flip", "crop_flip", "flip_rotate", "scale_crop", "color", "erasing", "all")


def main(argv=None) -> int:
    from torch.profiler import ProfilerActivity, profile

    parser = argparse.ArgumentParser(prog="python -m benchmarks.aug_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    for option in OPTIONS:
        r = compile_effect(option, dev, args.batch)
        print(
            f"aug={option:12s} eager {r['eager_ms']:7.3f} ms/batch, {r['eager_launches']:4d} launches  |  "
            f"compile_aug {r['compiled_ms']:7.3f} ms/batch, {r['compiled_launches']:4d} launches  "
            f"x{r['eager_ms'] / r['compiled_ms']:.2f}",
            flush=True,
        )
    aug = _make("all", dev)
    x = torch.rand(args.batch, 3, 32, 32, device=dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(20):
            aug(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The CUDA paths, on a machine with an NVIDIA GPU (skipped elsewhere; `bash cli/gpu_check.sh` runs
them with the GPU benchmark). On a CPU the same code runs in the other tests: the sync-free
augmentation path forced on, bf16 autocast, channels_last, compile."""

import json

import pytest
import torch

from regx import config
from regx.augment import Augment, AugParams, apply
from tests.conftest import run_regx, write_smooth_jpegs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMOKE = ["debug=smoke", "device=cuda", "epochs=3"]


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_a_cuda_run_trains_in_bf16_and_writes_its_run_directory(tmp_path):
    res = run_regx(["train", *SMOKE, "pictures=true", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert res.returncode == 0, res.stderr
    s = summary(tmp_path / "r")
    assert s["status"] == "completed" and s["device"].startswith("cuda")
    assert s["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "32")
    for name in ("metrics.csv", "curves.png", "aug_preview.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / "r" / name).is_file(), name


@pytest.mark.parametrize("option", ["flip", "all", "[all,erasing]"])
def test_the_sync_free_path_on_cuda_matches_the_cpu_index_path(option):
    aug = Augment(config.compose([f"aug={option}"]).aug, torch.Generator(device="cuda").manual_seed(0))
    x = torch.rand(256, 3, 32, 32, device="cuda")
    noise = torch.rand(x.shape, device="cuda")
    p = aug.sample(256, (32, 32), "cuda")
    on_cpu = AugParams(**{k: None if v is None else v.cpu() for k, v in vars(p).items()})
    a = apply(x.cpu(), on_cpu, noise.cpu(), sync_free=False)
    b = apply(x, p, noise)  # the default on CUDA: sync-free
    assert (a - b.cpu()).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["trivialaugment", "autoaugment", "augmix"])
def test_policies_run_sync_free_on_cuda_as_on_cpu(kind):
    """The policies' operations on CUDA (every operation on the batch, then a select) give the CPU
    path's uint8 images; a level's difference is allowed where float rounding on the two devices
    lands on either side of .5 (bilinear, blends)."""
    from regx.policies import AugMix, Policy, apply_ops

    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.rand(512, 3, 32, 32, device="cuda", generator=g) * 255).round()
    if kind == "augmix":
        ops, mags, _, _ = AugMix(p=1.0, severity=10, width=1, depth=1, alpha=1.0, all_ops=True, generator=g).draw(
            512, 32, 32, "cuda"
        )
        op, mag = ops[0, 0], mags[0, 0]
    else:
        ops, mags = Policy(kind, p=1.0, bins=31 if kind == "trivialaugment" else 10, generator=g).draw(
            512, 32, 32, "cuda"
        )
        op, mag = ops[0], mags[0]
    bilinear = kind == "augmix"
    a = apply_ops(x.cpu(), op.cpu(), mag.cpu(), bilinear=bilinear)
    b = apply_ops(x, op, mag, bilinear=bilinear)  # the default on CUDA: sync-free
    diff = (a - b.cpu()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_nan_is_caught_on_cuda_and_named_by_its_step(tmp_path):
    res = run_regx(["train", *SMOKE, f"hydra.run.dir={tmp_path / 'n'}"], tmp_path, fault="nan@9")
    assert res.returncode == 1
    assert "loss became nan at step 9 (epoch 2, lr " in res.stderr  # read back late on a GPU, still exact


def test_sigterm_checkpoints_and_resume_finishes_on_cuda(tmp_path):
    stopped = run_regx(["train", *SMOKE, f"hydra.run.dir={tmp_path / 's'}"], tmp_path, fault="term@9")
    assert stopped.returncode == 143, stopped.stderr
    resumed = run_regx(["resume", str(tmp_path / "s")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(tmp_path / "s")["status"] == "completed" and summary(tmp_path / "s")["epochs_done"] == 3


def test_compile_with_cuda_graphs_trains(tmp_path):
    res = run_regx(
        ["train", *SMOKE, "compile=true", "compile_mode=reduce-overhead", f"hydra.run.dir={tmp_path / 'c'}"],
        tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    assert summary(tmp_path / "c")["status"] == "completed"


@pytest.mark.parametrize("compile_aug", ["false", "true"])
def test_a_training_step_never_waits_for_the_host(tmp_path, compile_aug):
    """Every step after the first (augmentation on the device, forward, loss with the L2 term, backward,
    the update, the epoch's sums) runs under torch.cuda.set_sync_debug_mode("error"): a read back to the
    host inside a step is an error, not a silent stall (#32 item 2). The loss check reads once per epoch.
    Batches of 40 divide the 360 training images: the compiled augmentation compiles once, in step 0."""
    from regx.engine import Hook
    from regx.train import train

    class NoSyncInAStep(Hook):
        def before_step(self, step: int) -> None:
            if step > 0:  # the first step may initialise lazily
                torch.cuda.set_sync_debug_mode("error")

        def after_step(self, info) -> None:
            torch.cuda.set_sync_debug_mode("default")

    cfg = config.compose(
        [
            *SMOKE,
            "aug=all",
            "wd=5e-4",
            "decay=l2",
            "progress_every=100000",
            "batch_size=40",
            f"compile_aug={compile_aug}",
        ]
    )
    try:
        s = train(cfg, tmp_path / "r", hooks=(NoSyncInAStep(),))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert s["status"] == "completed"


@pytest.mark.parametrize("option", ["all", "[all,erasing]"])
def test_the_compiled_augmentation_on_cuda_makes_what_eager_makes_in_far_fewer_kernels(option):
    """compile_aug (#32 item 1): the same draws give the eager path's images, and a batch launches a
    handful of kernels instead of one or more per operator."""
    from torch.profiler import ProfilerActivity, profile

    cfg = config.compose([f"aug={option}"]).aug
    x = torch.rand(256, 3, 32, 32, device="cuda")
    eager = Augment(cfg, torch.Generator(device="cuda").manual_seed(0))
    compiled = Augment(cfg, torch.Generator(device="cuda").manual_seed(0), compiled=True)
    for _ in range(2):
        assert (compiled(x)[0] - eager(x)[0]).abs().max() < 1e-4

    def kernels(aug) -> int:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            aug(x)
            torch.cuda.synchronize()
        return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())

    assert kernels(compiled) * 4 <= kernels(eager)


def test_a_background_checkpoint_of_cuda_tensors_holds_them_as_saved(tmp_path):
    """checkpoint.background (on by default on CUDA): the tensors are copied to pinned host memory without
    waiting for the device and the writer waits on an event; a step queued after the save cannot reach
    the file. Under sync debug mode "error": saving never waits for the device."""
    from regx import checkpoint
    from tests.conftest import toy_checkpoint

    w = torch.ones(1 << 20, device="cuda")
    writer = checkpoint.Writer(background=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        writer.save(toy_checkpoint(1, w=w), tmp_path, best=True)
        w.mul_(7.0)  # the next step, queued behind the copy
    finally:
        torch.cuda.set_sync_debug_mode("default")
    writer.wait()
    saved = checkpoint.read(tmp_path / "last.pt").model["w"]
    assert saved.device.type == "cpu" and torch.equal(saved, torch.ones(1 << 20))


def test_device_decoding_on_cuda_makes_the_pixels_pillow_makes(tmp_path):
    """data.decode=device (#32 item 4): the workers read bytes, nvJPEG decodes each batch on the GPU and the
    resize runs there; the images are Pillow's to a few levels (another IDCT, antialiased resize), and the
    files it cannot take (EXIF-rotated, PNG) are Pillow's own, exactly."""
    from regx import data as D
    from regx.data import folders

    paths = write_smooth_jpegs(tmp_path / "imgs")
    labels = torch.arange(len(paths))
    pil = torch.stack([x for x, _, _ in folders.FileDataset(paths, labels, 24)])
    split = folders.file_split(paths, labels, 24, "device")
    (x, y), *_ = list(D.iterate(split, len(paths), device="cuda", workers=2))
    assert x.is_cuda and x.shape == pil.shape and x.dtype == torch.uint8 and torch.equal(y.cpu(), labels)
    diff = (x.cpu().int() - pil.int()).abs()
    print(f"device decode against Pillow: mean {diff.float().mean():.3f}, max {int(diff.max())} levels")
    assert diff.float().mean() < 1.0 and diff.max() <= 12  # the CPU's decoders: 0.17 and 3
    assert torch.equal(x[-2:].cpu(), pil[-2:])

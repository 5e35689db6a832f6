"""Corrupted images (regx.corrupt): each corruption against the reference code's own operations on the same
images (Hendrycks' make_cifar_c.py and imagenet_c: numpy, scipy.ndimage's gaussian filter that skimage calls,
colorsys's HSV that skimage's rgb2hsv/hsv2rgb compute, PIL's JPEG), then `regx eval --corrupt` and a run's
diagnose.corrupt scoring the same images."""

import colorsys
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from regx.corrupt import (
    CORRUPTIONS,
    CorruptionError,
    corrupt,
    corrupted,
    parameter,
    parse_corruptions,
    parse_severities,
)
from tests.conftest import smoke_cfg


def _images(n=3, channels=3, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 4, size // 4, generator=g) * 255
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear").to(torch.uint8)


def _hwc(x: torch.Tensor) -> np.ndarray:  # one image as the reference takes it: H, W, C floats in [0, 1]
    return x.permute(1, 2, 0).numpy().astype(np.float64) / 255


def _chw(out: np.ndarray) -> torch.Tensor:  # np.clip(x, 0, 1), back to C, H, W
    return torch.from_numpy(np.clip(out, 0, 1)).permute(2, 0, 1)


def _hsv_map(img: np.ndarray, fn) -> np.ndarray:  # per pixel through HSV, as skimage.color does it
    out = np.empty_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            h, s, v = colorsys.rgb_to_hsv(*img[i, j])
            out[i, j] = colorsys.hsv_to_rgb(*fn(h, s, v))
    return out


REFERENCE = {  # corruption -> fn(one H,W,C image in [0, 1], the parameter) -> the corrupted image, unclipped
    "gaussian_blur": lambda img, sigma: gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0),
    "contrast": lambda img, c: (img - img.mean(axis=(0, 1), keepdims=True)) * c + img.mean(axis=(0, 1), keepdims=True),
    "brightness": lambda img, c: _hsv_map(img, lambda h, s, v: (h, s, min(max(v + c, 0), 1))),
    "saturate": lambda img, c: _hsv_map(img, lambda h, s, v: (h, min(max(s * c[0] + c[1], 0), 1), v)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("size", [32, 96])
def test_each_corruption_is_the_reference_codes_at_every_severity(name, size):
    x = _images(n=2 if size == 32 else 1, size=size)
    for severity in range(1, 6):
        value = parameter(name, severity, size)  # CIFAR-10-C's table up to 64 pixels, ImageNet-C's above
        table = CORRUPTIONS[name].small if size == 32 else CORRUPTIONS[name].large
        assert value == pytest.approx(
            table[severity - 1] * (size / 224 if name == "gaussian_blur" and size > 64 else 1)
        )
        ref = torch.stack([_chw(REFERENCE[name](_hwc(img), value)) for img in x])
        torch.testing.assert_close(corrupted(x, name, severity), ref, rtol=0, atol=1e-12)
        # stored as integers the way the reference stores them (np.uint8 truncates): an output that lands on a
        # level exactly (brightness +0.2 is +51 levels; saturation x1.5 halves) falls either side by the last
        # bit of either computation, so a few pixels are a level apart
        diff = (corrupt(x, name, severity).int() - (ref * 255).to(torch.uint8).int()).abs()
        assert diff.max() <= 1


def test_the_tables_are_the_papers():
    assert CORRUPTIONS["gaussian_noise"].small == (0.04, 0.06, 0.08, 0.09, 0.10)  # make_cifar_c.py
    assert CORRUPTIONS["gaussian_noise"].large == (0.08, 0.12, 0.18, 0.26, 0.38)  # imagenet_c
    assert CORRUPTIONS["jpeg"].small == (80, 65, 58, 50, 40) and CORRUPTIONS["jpeg"].large == (25, 18, 15, 10, 7)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_pils_at_the_tables_quality(channels):
    x = _images(n=2, channels=channels)
    for severity in (1, 5):
        quality = parameter("jpeg", severity, 32)
        ref = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()).save(buf, "JPEG", quality=quality)
            buf.seek(0)
            ref.append(torch.from_numpy(np.array(Image.open(buf))).reshape(32, 32, channels).permute(2, 0, 1))
        assert torch.equal(corrupt(x, "jpeg", severity), torch.stack(ref))


def test_gaussian_noise_has_the_tables_sigma_and_is_seeded():
    x = torch.full((64, 1, 32, 32), 128, dtype=torch.uint8)  # mid-grey: no clipping
    out = corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(1))
    residual = (out.double() + 0.5 - 128) / 255  # +0.5: the truncation to integers takes half a level on average
    assert residual.std().item() == pytest.approx(0.08, rel=0.03) and abs(residual.mean().item()) < 0.002
    assert torch.equal(out, corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(1)))


def test_brightness_on_grey_images_is_the_rgb_definition_on_a_grey_pixel():
    grey = _images(channels=1)
    rgb = grey.expand(-1, 3, -1, -1).contiguous()
    for severity in (1, 5):
        assert torch.equal(corrupt(grey, "brightness", severity), corrupt(rgb, "brightness", severity)[:, :1])


def test_the_blur_scales_with_the_image():
    assert parameter("gaussian_blur", 5, 28) == pytest.approx(1.0 * 28 / 32)
    assert parameter("gaussian_blur", 5, 448) == pytest.approx(6 * 2)
    assert parameter("contrast", 5, 28) == 0.15 and parameter("contrast", 5, 100) == 0.05


def test_bad_corruptions_and_severities_are_one_line():
    assert parse_corruptions("all", 1) == ["gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg"]
    assert parse_corruptions("all", 3)[-1] == "saturate"
    assert parse_severities("1..5") == [1, 2, 3, 4, 5] and parse_severities("5,1") == [1, 5]
    for text, channels in (("fog", 3), ("saturate", 1), ("", 3)):
        with pytest.raises(CorruptionError):
            parse_corruptions(text, channels)
    for text in ("0..5", "6", "x", "1..", ""):
        with pytest.raises(CorruptionError):
            parse_severities(text)


def test_a_run_and_regx_eval_score_the_same_corrupted_images(tmp_path, cli):
    from regx.train import train

    s = train(
        smoke_cfg("epochs=1", "diagnose.corrupt=[gaussian_noise,contrast]", "diagnose.corrupt_severities=[2,5]"),
        tmp_path / "r",
    )
    table = s["corruption"]["accuracy"]
    assert set(table) == {"gaussian_noise", "contrast"} and all(set(row) == {2, 5} for row in table.values())
    assert s["test_corrupt_acc"] == pytest.approx(sum(a for row in table.values() for a in row.values()) / 4)
    res = cli("eval", str(tmp_path / "r"), "--corrupt", "gaussian_noise,contrast", "--severity", "2,5")
    assert res.returncode == 0, res.stderr
    assert "mean corrupted accuracy" in res.stdout and (tmp_path / "r/corruption.png").stat().st_size > 0
    evaluated = json.loads((tmp_path / "r/eval.json").read_text())["corruption"]
    assert evaluated["mean"] == pytest.approx(s["test_corrupt_acc"])
    assert evaluated["definitions"] == "CIFAR-10-C" and evaluated["severities"] == [2, 5]


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    from regx.train import train

    run = tmp_path_factory.mktemp("grey") / "r"
    train(smoke_cfg("epochs=1", "data.channels=1"), run)
    return run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--corrupt", "fog"], "unknown corruption 'fog'"),
        (["--corrupt", "saturate"], "changes colour"),  # data.channels=1: grey shapes
        (["--corrupt", "all", "--severity", "7"], "severities are 1 to 5"),
        (["--severity", "3"], "--severity 3: severities are --corrupt's; add --corrupt all"),  # main: exit 0, unread
    ],
)
def test_bad_corruption_input_to_eval_is_one_line_and_writes_nothing(grey_run, cli, args, message):
    before = sorted(p.name for p in grey_run.iterdir())
    res = cli("eval", str(grey_run), *args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in grey_run.iterdir()) == before


@pytest.mark.parametrize(
    "value", ["diagnose.corrupt=[fog]", "diagnose.corrupt_severities=[0]", "diagnose.corrupt=[saturate]"]
)
def test_bad_corruption_keys_stop_a_run_in_one_line(tmp_path, cli, value):
    res = cli("train", "debug=smoke", "data.channels=1", value)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert value.split("=")[0].split(".")[1] in res.stderr or "colour" in res.stderr


def test_a_study_compares_the_corrupted_accuracy(tmp_path, cli):
    res = cli("ablate", "debug=smoke", "--corrupt", "fog", "--seeds", "1")
    assert res.returncode == 2 and "unknown corruption 'fog'" in res.stderr
    assert not (tmp_path / "outputs").exists()

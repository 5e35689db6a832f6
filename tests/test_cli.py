"""The command line: instant help, Hydra's help and config printing, clear errors."""

import subprocess
import sys


def test_help_imports_nothing_heavy():
    code = ("import sys; from regx.cli import main; rc = main(['--help']); "
            "heavy = [m for m in ('torch', 'torchvision', 'hydra', 'omegaconf') if m in sys.modules]; "
            "assert rc == 0 and not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and "resume" in res.stdout


def test_train_help_lists_every_group_and_option(regx):
    from regx import config

    res = regx("train", "--help")
    assert res.returncode == 0, res.stderr
    for group in config.GROUPS:
        line = next(line for line in res.stdout.splitlines() if line.startswith(f"{group}:"))
        assert set(config.group_options(group)) <= {o.strip() for o in line.split(":", 1)[1].split(",")}


def test_cfg_job_prints_the_composed_config(regx, tmp_path):
    res = regx("train", "--cfg", "job", "aug=flip_rotate", "wd=1e-4")
    assert res.returncode == 0, res.stderr
    assert "wd: 0.0001" in res.stdout and "name: flip_rotate" in res.stdout and "hydra:" not in res.stdout
    assert not (tmp_path / "outputs").exists()  # printing a config makes no run directory


def test_unknown_command(regx):
    res = regx("trian")
    assert res.returncode == 2 and "did you mean 'train'" in res.stderr


def test_a_missing_image_folder_is_bad_input_and_makes_no_run_directory(regx, tmp_path):
    res = regx("train", "data=imagefolder", f"data.path={tmp_path / 'photos'}", "data.image_size=32")
    assert res.returncode == 2 and res.stderr == f"regx: error: data.path={tmp_path / 'photos'}: no such directory\n"
    assert not (tmp_path / "outputs").exists()


def test_show_aug_and_lr_plot_write_pngs(regx, tmp_path):
    from PIL import Image

    res = regx("show-aug", "aug=all", "data.n_train=200", "data.image_size=16", "--out", "grid.png")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "grid.png"
    with Image.open(tmp_path / "grid.png") as im:
        assert im.width > 8 * 16 and im.height > 5 * 16  # originals + 4 augmented rows of 8
    res = regx("lr-plot", "sched=step", "data.n_train=200")
    assert res.returncode == 0, res.stderr
    path = tmp_path / res.stdout.strip()
    assert path.suffix == ".png" and path.stat().st_size > 5000
    bad = regx("show-aug", "aug.rotate.degrees=-5")
    assert bad.returncode == 2 and "aug.rotate.degrees" in bad.stderr


def test_plot_redraws_the_curves(regx, tmp_path):
    from PIL import Image

    assert regx("train", "debug=smoke", "hydra.run.dir=run").returncode == 0
    (tmp_path / "run" / "curves.png").unlink()
    res = regx("plot", "run")
    assert res.returncode == 0, res.stderr
    with Image.open(tmp_path / "run" / "curves.png") as im:
        assert im.width >= 800 and im.height >= 300
    missing = regx("plot", "nowhere")
    assert missing.returncode == 2 and "nowhere/metrics.csv not found" in missing.stderr

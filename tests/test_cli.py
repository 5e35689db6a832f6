"""The command line: instant help, --help on every subcommand, Hydra's help and config printing, clear errors."""

import subprocess
import sys

import pytest

from regx import config
from regx.cli import COMMANDS


def test_help_imports_nothing_heavy():
    code = ("import sys; from regx.cli import main; rc = main(['--help']); "
            "heavy = [m for m in ('torch', 'torchvision', 'hydra', 'omegaconf') if m in sys.modules]; "
            "assert rc == 0 and not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and "resume" in res.stdout


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"train"}))
def test_every_subcommand_has_help(cli, command):
    res = cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: regx {command}") and "--help" in res.stdout and not res.stderr


def test_train_help_lists_every_group_and_option(cli):
    res = cli("train", "--help")
    assert res.returncode == 0, res.stderr
    for group in config.GROUPS:
        line = next(line for line in res.stdout.splitlines() if line.startswith(f"{group}:"))
        assert set(config.group_options(group)) <= {o.strip() for o in line.split(":", 1)[1].split(",")}


def test_cfg_job_prints_the_composed_config(cli, tmp_path):
    res = cli("train", "--cfg", "job", "aug=flip_rotate", "wd=1e-4")
    assert res.returncode == 0, res.stderr
    assert "wd: 0.0001" in res.stdout and "name: flip_rotate" in res.stdout and "hydra:" not in res.stdout
    assert not (tmp_path / "outputs").exists()  # printing a config makes no run directory


def test_a_users_own_config_folder_trains(cli, tmp_path):
    mine = tmp_path / "myconf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\nepochs: 1\nname: mine\n")
    res = cli("train", "--config-dir", tmp_path / "myconf", "experiment=mine", "debug=smoke", "hydra.run.dir=r")
    assert res.returncode == 0, res.stderr
    assert "name: mine" in (tmp_path / "r" / "config.yaml").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["trian"], "unknown command 'trian'; did you mean 'train'?"),
    (["plot"], "the following arguments are required: RUN_DIR (see regx plot --help)"),
    (["plot", "a", "b"], "unrecognized arguments: b"),
    (["eval", "run", "--bogus"], "unrecognized arguments: --bogus"),
    (["show-aug", "--out", "x.jpg"], "--out x.jpg: the file name must end in .png"),
])
def test_bad_arguments_are_one_line(cli, args, message):
    res = cli(*args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_missing_image_folder_is_bad_input_and_makes_no_run_directory(cli, tmp_path):
    res = cli("train", "data=imagefolder", f"data.path={tmp_path / 'photos'}", "data.image_size=32")
    assert res.returncode == 2 and res.stderr == f"regx: error: data.path={tmp_path / 'photos'}: no such directory\n"
    assert not (tmp_path / "outputs").exists()


def test_show_aug_and_lr_plot_write_pngs(cli, tmp_path):
    from PIL import Image

    res = cli("show-aug", "aug=all", "data.n_train=200", "data.image_size=16", "--out", "grid.png")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "grid.png"
    with Image.open(tmp_path / "grid.png") as im:
        assert im.width > 8 * 16 and im.height > 5 * 16  # originals + 4 augmented rows of 8
    res = cli("lr-plot", "sched=step", "data.n_train=200")
    assert res.returncode == 0, res.stderr
    path = tmp_path / res.stdout.strip()
    assert path.suffix == ".png" and path.stat().st_size > 5000
    bad = cli("show-aug", "aug.rotate.degrees=-5")
    assert bad.returncode == 2 and "aug.rotate.degrees" in bad.stderr


def test_plot_redraws_the_curves(cli, tmp_path):
    from PIL import Image

    assert cli("train", "debug=smoke", "hydra.run.dir=run").returncode == 0
    (tmp_path / "run" / "curves.png").unlink()
    res = cli("plot", "run")
    assert res.returncode == 0, res.stderr
    with Image.open(tmp_path / "run" / "curves.png") as im:
        assert im.width >= 800 and im.height >= 300
    missing = cli("plot", "nowhere")
    assert missing.returncode == 2 and "nowhere/metrics.csv not found" in missing.stderr

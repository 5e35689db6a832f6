"""The command line: instant help, --help on every subcommand, Hydra's help and config printing, clear errors."""

import subprocess
import sys

import pytest

from regx import config
from regx.cli import COMMANDS


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from regx.cli import main; rc = main(['--help']); "
        "heavy = [m for m in ('torch', 'torchvision', 'hydra', 'omegaconf') if m in sys.modules]; "
        "assert rc == 0 and not heavy, heavy"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and "resume" in res.stdout


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"train"}))
def test_every_subcommand_has_help(cli, command):
    res = cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: regx {command}") and "--help" in res.stdout and not res.stderr
    assert f"examples:\n  regx {command}" in res.stdout


def test_train_help_lists_every_group_and_option(cli):
    res = cli("train", "--help")
    assert res.returncode == 0, res.stderr
    for group in config.GROUPS:
        line = next(line for line in res.stdout.splitlines() if line.startswith(f"{group}:"))
        assert set(config.group_options(group)) <= {o.strip() for o in line.split(":", 1)[1].split(",")}


def test_cfg_job_prints_the_composed_config(cli, tmp_path):
    res = cli("train", "--cfg", "job", "aug=flip_rotate", "wd=1e-4")
    assert res.returncode == 0, res.stderr
    assert "wd: 0.0001" in res.stdout and "flip_rotate: true" in res.stdout and "hydra:" not in res.stdout
    res = cli("train", "--cfg", "job", "--resolve", "aug=[flip_rotate,erasing]")
    assert "  name: '[flip_rotate,erasing]'\n" in res.stdout  # aug.name: the options, as typed
    assert not (tmp_path / "outputs").exists()  # printing a config makes no run directory


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_a_users_own_config_folder_trains_with_every_hydra_flag(cli, tmp_path):
    import shutil

    mine = tmp_path / "myconf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text("# @package _global_\nepochs: 1\nname: mine\n")
    shutil.copytree(config.conf_dir(), tmp_path / "full", ignore=shutil.ignore_patterns("__init__.py"))
    shutil.copy(mine / "experiment" / "mine.yaml", tmp_path / "full" / "experiment")
    shutil.copy(config.conf_dir() / "train.yaml", mine / "mytrain.yaml")
    for flags in (["--config-dir", "myconf"], ["-cd", "myconf"], ["-cp", "full"], ["-cd", "myconf", "-cn", "mytrain"]):
        run = "r" + "".join(flags)
        res = cli("train", *flags, "experiment=mine", "debug=smoke", f"hydra.run.dir={run}")
        assert res.returncode == 0, (flags, res.stderr)
        assert "name: mine" in (tmp_path / run / "config.yaml").read_text()


def test_regx_alone_lists_the_commands_and_exits_2_and_version_names_the_stack(cli):
    res = cli()
    assert res.returncode == 2 and "commands:" in res.stderr
    for args in (["--version"], ["train", "--version"]):
        res = cli(*args)
        assert res.returncode == 0 and res.stdout.startswith("regx 0.") and "torch " in res.stdout, args
        assert "torchvision " in res.stdout and "Hydra" not in res.stdout


def test_train_help_is_quick_because_it_imports_no_torch():
    code = (
        "import sys; from regx.cli import main; rc = main(['train', '--help']); "
        "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-500:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trian"], "unknown command 'trian'; did you mean 'train'?"),
        (["plot"], "the following arguments are required: RUN_DIR (see regx plot --help)"),
        (["plot", "a", "b"], "unrecognized arguments: b"),
        (["eval", "run", "--bogus"], "unrecognized arguments: --bogus"),
        (["show-aug", "--out", "x.jpg"], "--out x.jpg: the file name must end in .png"),
        (
            ["train", "+lrr=0.1"],
            "unknown config key 'lrr'; did you mean 'lr'? (free-form notes go under +notes.KEY=VALUE)",
        ),
        (["train", "++lrr=0.1"], "unknown config key 'lrr'; did you mean 'lr'?"),
        (["train", "+epochs=3"], "+epochs: epochs is already in the config; set it with epochs=3"),
        (["train", "~early_stop"], "~early_stop: regx's config needs every key of its schema; set a value instead"),
        (
            ["train", "model.name=resnet1"],
            "model.name='resnet1' is neither regx's (smallcnn) nor a torchvision "
            "classification model; did you mean resnet18",
        ),
        (
            ["train", "data.path=/tmp"],
            "data.path=/tmp is set but data=shapes does not read a folder: add data=imagefolder",
        ),
        (["check-data", "data.path=/tmp"], "add data=imagefolder"),
        (["train", "-m", "debug=smoke", "aug=glob(zzz*)"], "the sweep ran no job: a sweep value matched nothing"),
    ],
)
def test_bad_arguments_are_one_line(cli, tmp_path, args, message):
    res = cli(*args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not list(tmp_path.glob("outputs/*/*"))  # no run or sweep directory left behind


def test_notes_are_the_place_for_free_form_keys(cli, tmp_path):
    res = cli("train", "debug=smoke", "epochs=1", "+notes.why=baseline", "hydra.run.dir=r")
    assert res.returncode == 0, res.stderr
    assert "notes:\n  why: baseline" in (tmp_path / "r" / "config.yaml").read_text()


def test_a_directory_that_holds_a_run_or_a_sweep_is_never_overwritten(cli, tmp_path):
    assert cli("train", "debug=smoke", "epochs=1", "hydra.run.dir=r").returncode == 0
    before = (tmp_path / "r" / "summary.json").read_text()
    res = cli("train", "debug=smoke", "epochs=2", "hydra.run.dir=r")
    assert res.returncode == 2 and "r holds a run already; continue it with: regx resume r" in res.stderr
    assert (tmp_path / "r" / "summary.json").read_text() == before
    assert cli("train", "-m", "debug=smoke", "epochs=1", "seed=0", "hydra.sweep.dir=s").returncode == 0
    res = cli("train", "-m", "debug=smoke", "epochs=1", "seed=0", "hydra.sweep.dir=s")
    assert res.returncode == 2 and "regx sweep-resume s" in res.stderr
    res = cli("train", "-m", "debug=smoke", "epochs=1", "seed=0", "hydra.sweep.dir=new", "hydra.sweep.dir=s")
    assert res.returncode == 2 and "regx sweep-resume s" in res.stderr  # the last one given is Hydra's
    res = cli("train", "-m", "debug=smoke", "epochs=1", "seed=0,1", "hydra.sweep.dir=r")  # a run is no sweep
    assert res.returncode == 2 and "r holds a run, not a sweep: pick another hydra.sweep.dir" in res.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if not p.name.startswith(".")) == sorted(
        ["checkpoints", "config.yaml", "metrics.csv", "summary.json", "train.log"]
    )
    res = cli("train", "debug=smoke", "epochs=1", "hydra.run.dir=s")  # nor a sweep a run
    assert res.returncode == 2 and "s holds a sweep, not a run: pick another hydra.run.dir" in res.stderr


def test_a_sweep_ends_with_its_jobs_and_the_report_command(cli, tmp_path):
    # a setting for some of the jobs: they use it, the others are named in one warning (main refused the sweep)
    res = cli("train", "-m", "debug=smoke", "epochs=1", "optim=sgd,adamw", "optim.momentum=0.8", "hydra.sweep.dir=s")
    assert res.returncode == 0, res.stderr
    assert "regx: warning: some jobs of this sweep do not read optim.momentum=0.8 (optim=adamw: " in res.stderr
    lines = res.stdout.splitlines()
    assert any(line.strip().startswith("0_") and "completed  best val" in line for line in lines)
    assert lines[-1] == "2 jobs in s; compare them with: regx report s"


def test_a_closed_pipe_ends_quietly():
    res = subprocess.run(f"{sys.executable} -m regx --help | head -1", shell=True, capture_output=True, text=True)
    assert res.returncode == 0 and "Error" not in res.stderr


def test_a_missing_image_folder_is_bad_input_and_makes_no_run_directory(cli, tmp_path):
    res = cli("train", "data=imagefolder", f"data.path={tmp_path / 'photos'}", "data.image_size=32")
    assert res.returncode == 2 and res.stderr == f"regx: error: data.path={tmp_path / 'photos'}: no such directory\n"
    assert not (tmp_path / "outputs").exists()


def test_show_aug_and_lr_plot_write_pngs(cli, tmp_path, monkeypatch):
    from PIL import Image

    res = cli("show-aug", "aug=all", "data.n_train=200", "data.image_size=16", "--out", "grid.png")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "grid.png"
    with Image.open(tmp_path / "grid.png") as im:
        assert im.width > 8 * 16 and im.height > 5 * 16  # originals + 4 augmented rows of 8
        labels = im.convert("L").crop((0, 0, 60, im.height))
        assert labels.getextrema()[0] < 128  # each row says what it is: text in the white margin
    monkeypatch.setattr("regx.data.core.load_data", lambda **kw: pytest.fail("lr-plot loaded the data"))
    res = cli("lr-plot", "sched=step", "data.n_train=200")
    assert res.returncode == 0, res.stderr
    path = tmp_path / res.stdout.strip()
    assert path.suffix == ".png" and path.stat().st_size > 5000
    assert "note:" not in res.stderr  # 12 epochs reach sched=step's steps every 5
    short = cli("lr-plot", "sched=step", "epochs=5", "data.n_train=200", "--out", "short.png")
    assert short.returncode == 0 and "note: sched=step never lowers the rate in a run of 5 epochs" in short.stderr
    bad = cli("show-aug", "aug.rotate.degrees=-5")
    assert bad.returncode == 2 and "aug.rotate.degrees" in bad.stderr


def test_plot_redraws_the_curves(cli, tmp_path):
    from PIL import Image

    res = cli("train", "debug=smoke", "hydra.run.dir=run")  # the smoke preset draws no pictures
    assert res.returncode == 0, res.stderr
    assert (
        f"no curves.png or aug_preview.png; draw the curves with: regx plot {tmp_path / 'run'}\n"
        in res.stdout + res.stderr
    )
    assert not (tmp_path / "run" / "curves.png").exists() and not (tmp_path / "run" / "aug_preview.png").exists()
    res = cli("plot", "run")
    assert res.returncode == 0, res.stderr
    with Image.open(tmp_path / "run" / "curves.png") as im:
        assert im.width >= 800 and im.height >= 300
    missing = cli("plot", "nowhere")
    assert missing.returncode == 2 and "nowhere/metrics.csv not found" in missing.stderr


def test_relative_paths_hold_when_hydra_changes_into_the_run_directory(cli, tmp_path):
    from tests.conftest import write_images

    write_images(tmp_path / "imgs", per_class=6)
    res = cli(
        "train",
        "debug=smoke",
        "epochs=1",
        "data=imagefolder",
        "data.path=imgs",
        "data.image_size=16",
        "data.workers=0",
        "hydra.job.chdir=true",
        "hydra.run.dir=r",
    )
    assert res.returncode == 0, res.stderr
    assert f"path: {tmp_path / 'imgs'}" in (tmp_path / "r" / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("regx tr", {"train"}),
        ("regx ", {"train", "resume", "report", "eval"}),
        ("regx train aug=fl", {"aug=flip", "aug=flip_rotate"}),
        ("regx train op", {"optim=", "optim."}),
        ("regx train debug=smoke optim.mo", {"optim.momentum="}),
        ("regx show-aug aug.rotate.deg", {"aug.rotate.degrees="}),
        ("regx resume --f", {"--force"}),
        ("regx report --gr", {"--group-by"}),
        ("regx train --cf", {"--cfg"}),
    ],
)
def test_completion_answers_what_the_line_asks(line, expected, monkeypatch, capsys):
    from regx.cli import main

    monkeypatch.setenv("COMP_LINE", line)
    assert main(["-sc", "query=bash"]) == 0
    assert expected <= set(capsys.readouterr().out.split())


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_installs_as_hydra_users_type_it(cli, shell):
    for args in (["-sc", f"install={shell}"], ["train", "-sc", f"install={shell}"]):
        res = cli(*args)
        assert res.returncode == 0 and "complete -o nospace -o default -F _regx_completion regx" in res.stdout
        assert ("bashcompinit" in res.stdout) == (shell == "zsh")
    assert cli("-sc", "install=fish").returncode == 2


def test_completion_works_in_a_real_bash(tmp_path):
    import os
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = subprocess.run(
        [sys.executable, "-m", "regx", "-sc", "install=bash"], capture_output=True, text=True
    ).stdout
    (tmp_path / "regx").write_text(f'#!/bin/sh\nexec {sys.executable} -m regx "$@"\n')
    (tmp_path / "regx").chmod(0o755)
    probe = (
        script
        + """
COMP_LINE="regx train aug=flip_r"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(regx train aug=flip_r); COMP_CWORD=2
_regx_completion; echo "${COMPREPLY[@]}"
"""
    )
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env)
    assert res.stdout.split() == ["aug=flip_rotate"], res.stderr


def test_your_own_config_folder_is_suggested_listed_completed_and_explained(tmp_path, cli, monkeypatch, capsys):
    """On main: Hydra's raw ConfigCompositionException for a file without `# @package _global_`, 'did you
    mean mnist' for a typo of the user's own 'mine', and neither the list nor completion named it."""
    from regx.cli import main

    (tmp_path / "myconf" / "experiment").mkdir(parents=True)
    (tmp_path / "myconf" / "experiment" / "mine.yaml").write_text("# @package _global_\nepochs: 2\n")
    (tmp_path / "myconf" / "experiment" / "nopkg.yaml").write_text("defaults:\n  - override /aug: flip\nepochs: 2\n")
    (tmp_path / "myconf" / "experiment" / "plain.yaml").write_text("epochs: 2\n")
    monkeypatch.chdir(tmp_path)
    res = cli("train", "-cd", "myconf", "experiment=mne", "debug=smoke")
    assert res.returncode == 2 and "did you mean 'mine'?" in res.stderr and ", mine, " in res.stderr
    for name in ("nopkg", "plain"):
        res = cli("train", "-cd", "myconf", f"experiment={name}", "debug=smoke")
        assert res.returncode == 2, res.stderr
        assert f"experiment/{name}.yaml lacks `# @package _global_` as its first line" in res.stderr
    assert not (tmp_path / "outputs").exists()
    monkeypatch.setenv("COMP_LINE", "regx train -cd myconf experiment=m")
    assert main(["-sc", "query=bash"]) == 0
    assert {"experiment=mine", "experiment=mnist"} <= set(capsys.readouterr().out.split())


def test_hydras_launch_of_a_run_composes_nothing(cli, monkeypatch):
    """Hydra's launch composed the whole config twice more (Hydra.get_mode, Hydra.run: about 0.2 s each)
    after the preflight had: it takes the preflight's now (config.hydra_config)."""
    from hydra._internal.hydra import Hydra

    calls, compose_config = [], Hydra.compose_config
    monkeypatch.setattr(Hydra, "compose_config", lambda self, *a, **k: calls.append(k) or compose_config(self, *a, **k))
    assert cli("train", "debug=smoke", "epochs=1", "lr=0.0123").returncode == 0
    # hydra.compose (the preflight's, where this process had not composed it before) passes from_shell=False;
    # Hydra's launch (get_mode, run) leaves it at True
    assert [k for k in calls if k.get("from_shell", True)] == []


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_epoch_bar_shows_its_step_count_and_stats_whole_at_any_width(monkeypatch, width):
    """At 80 columns rich cut the step count short ("294/4…"): the bar gives way first, then goes."""
    import io

    from rich.console import Console

    from regx import console as con

    terminal = Console(width=width, file=io.StringIO(), force_terminal=True)
    monkeypatch.setattr(con, "_console", terminal)
    monkeypatch.setattr(con, "interactive", lambda: True)
    with con.EpochProgress("epoch 12/150", 844) as bar:
        bar.update(294, 0.4634, 0.8306, 0.0107, 12345.0)
        shown = Console(width=width, file=io.StringIO(), color_system=None)
        shown.print(bar._progress.make_tasks_table(bar._progress.tasks))
    line = shown.file.getvalue().rstrip("\n")
    assert "\n" not in line and len(line) <= width
    assert "epoch 12/150" in line and "294/844" in line and "loss 0.4634  acc 83.06%  lr 0.0107  12,345 img/s" in line
    assert ("━" in line) == (width > 80)  # a bar where there is room for one

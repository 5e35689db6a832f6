"""Sweeps: `regx sweep-resume` after a sweep was killed midway."""

import json
import os
import re
import shutil

import pytest
import yaml

from regx import sweep
from regx.train import train
from tests.conftest import metric_rows, regx_here, run_regx, smoke_cfg


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_a_killed_sweep_resumes_in_place(tmp_path, cli):
    # kill@8: job 0 (1 epoch, 6 steps) finishes; job 1 dies in its second epoch; job 2 never starts
    killed = run_regx(["train", "-m", "debug=smoke", "epochs=1,2,3"], tmp_path, fault="kill@8")
    assert killed.returncode == -9
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_epochs=1", "1_epochs=2"]  # named by what the sweep varies (on main: every override)
    (sweep / jobs[1]).rename(sweep / "1_debug=smoke,epochs=2")  # as regx named it before: resumed in place
    jobs[1] = "1_debug=smoke,epochs=2"
    done = sweep / jobs[0] / "checkpoints" / "last.pt"
    before = done.stat().st_mtime_ns

    res = cli("sweep-resume", sweep)
    assert res.returncode == 0, res.stderr
    assert f"{jobs[0]}: completed already, skipped" in res.stdout
    assert f"{jobs[1]}: resuming (running)" in res.stdout and "2_epochs=3: starting" in res.stdout
    assert done.stat().st_mtime_ns == before  # the finished job was not rerun
    for job in sweep.iterdir():
        if job.is_dir():
            assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    train(smoke_cfg("epochs=2"), tmp_path / "ref")
    assert metric_rows(tmp_path / "ref") == metric_rows(sweep / jobs[1])  # resumed exactly

    again = cli("sweep-resume", sweep)
    assert again.returncode == 0 and again.stdout.count("completed already, skipped") == 3


def test_sweep_resume_bad_input(tmp_path, cli):
    assert cli("train", "-m", "debug=smoke", "epochs=1", "seed=0", "hydra.sweep.dir=s").returncode == 0
    res = cli("resume", "s")
    assert res.returncode == 2 and "s is a sweep directory: finish it with regx sweep-resume s" in res.stderr
    res = cli("sweep-resume", tmp_path)
    assert res.returncode == 2 and "not a regx sweep directory (no multirun.yaml)" in res.stderr


def plugin(name):
    return pytest.importorskip(f"hydra_plugins.{name}", reason=f"{name} is not installed: pip install 'regx[sweeps]'")


def summaries(root):
    (sweep,) = (root / "outputs" / "sweeps").iterdir()
    return sweep, {
        j.name: json.loads((j / "summary.json").read_text()) for j in sweep.iterdir() if (j / "summary.json").is_file()
    }


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_joblib_runs_jobs_in_parallel_without_oversubscribing_and_reports_failures(tmp_path):
    plugin("hydra_joblib_launcher")
    res = run_regx(  # lr=1e4 diverges: those jobs fail as they train (bad input would stop the sweep first)
        ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke", "epochs=1", "seed=0,1",
         "lr=0.05,1e4", "wd=0"],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 1 and "2 of 4 jobs failed" in res.stderr and "diverged" in res.stderr
    _, s = summaries(tmp_path)
    assert sorted(v["status"] for v in s.values()) == ["completed", "completed", "failed", "failed"]
    cores = os.cpu_count()
    assert all(v["threads"] == max(1, cores // min(2, cores)) for v in s.values())
    assert len({v["pid"] for v in s.values()} - {os.getpid()}) >= 2  # worker processes, not this one


@pytest.mark.slow  # ten seconds for a plugin's launcher; make test-all runs it
def test_submitit_local_sweep(tmp_path):
    plugin("hydra_submitit_launcher")
    res = run_regx(["train", "-m", "hydra/launcher=submitit_local", "debug=smoke", "epochs=1", "seed=0,1"], tmp_path)
    assert res.returncode == 0, res.stderr
    sweep, s = summaries(tmp_path)
    assert [v["status"] for v in s.values()] == ["completed", "completed"]
    assert (sweep / ".submitit").is_dir()


def test_slurm_preset_composes_with_settable_resources(tmp_path, cli):
    plugin("hydra_submitit_launcher")
    res = cli(
        "train",
        "--cfg",
        "hydra",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=30",
    )
    assert res.returncode == 0, res.stderr
    assert "SlurmLauncher" in res.stdout and "partition: gpu" in res.stdout and "timeout_min: 30" in res.stdout
    assert "gpus_per_node: 1" in res.stdout


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_optuna_search_maximizes_validation_accuracy(tmp_path, cli):
    plugin("hydra_optuna_sweeper")
    res = cli("train", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "debug=smoke", "epochs=1")
    assert res.returncode == 0, res.stderr
    sweep, s = summaries(tmp_path)
    assert len(s) == 3 and all(v["status"] == "completed" for v in s.values())
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(v["best_val_acc"] for v in s.values()))
    assert set(best["best_params"]) == {"lr", "wd", "dropout.p", "aug.rotate.degrees", "aug.color.brightness"}


def test_a_missing_plugin_is_one_clear_line(monkeypatch):
    from regx import config, errors

    monkeypatch.setattr(errors, "_installed", lambda module: False)
    with pytest.raises(
        config.ConfigError,
        match=r"hydra/launcher=joblib needs the hydra-joblib-launcher plugin: pip install 'regx\[sweeps\]'",
    ):
        errors.preflight(["hydra/launcher=joblib"])


class _Payload:
    """Unpickling it creates a file: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tamper(sweep, *, task=(), hydra=()):
    """Add overrides to a sweep's record as someone with write access to the directory could."""
    record = yaml.safe_load((sweep / "multirun.yaml").read_text())
    record["hydra"]["overrides"]["task"] += list(task)
    record["hydra"]["overrides"]["hydra"] += list(hydra)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A finished one-job smoke sweep, made once; each test works on its own copy."""
    root = tmp_path_factory.mktemp("sweep")
    assert regx_here(root, "train", "-m", "debug=smoke", "epochs=1", "seed=0", "hydra.sweep.dir=s").returncode == 0
    return root / "s"


@pytest.fixture
def sweep_copy(finished_sweep, tmp_path):
    shutil.copytree(finished_sweep, tmp_path / "s")
    return tmp_path / "s"


def test_sweep_resume_never_replays_hydra_callbacks_from_the_directory(tmp_path, cli, sweep_copy):
    import torch

    sweep, marker = sweep_copy, tmp_path / "pwned"
    torch.save(_Payload(marker), sweep / "payload.pt")
    _tamper(
        sweep,
        hydra=[
            "+hydra.callbacks.pwn._target_=torch.load",
            f"+hydra.callbacks.pwn.f={sweep}/payload.pt",
            "+hydra.callbacks.pwn.weights_only=false",
        ],
    )
    res = cli("sweep-resume", sweep)
    assert res.returncode == 2 and not marker.exists()
    assert "hydra.callbacks.pwn._target_" in res.stderr and "never replays" in res.stderr
    assert "weights_only" not in res.stderr.split("never replays")[1]  # the unsafe step is never suggested
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "task",
    [
        ["+hydra.callbacks.x._target_=os.system"],
        ["aug@hydra.callbacks.x=flip"],
        ["name=${oc.env:HOME}"],
        ["aug=../../../tmp/evil"],
        ["+foo._target_=os.system"],
        ["+nosuchkey=1"],
    ],
)
def test_sweep_resume_replays_only_regx_keys(sweep_copy, task):
    _tamper(sweep_copy, task=task)
    with pytest.raises(sweep.Untrusted, match=re.escape(task[0].split("=")[0].lstrip("+").split("@")[0])):
        sweep.resume_args(sweep_copy)


def test_a_launcher_is_replayed_only_when_given_again(cli, sweep_copy):
    _tamper(sweep_copy, hydra=["hydra/launcher=basic", "hydra.job.chdir=false"])
    res = cli("sweep-resume", "s")
    assert res.returncode == 2
    assert (
        "if you trust them, pass them again: regx sweep-resume s hydra/launcher=basic hydra.job.chdir=false"
        in res.stderr
    )
    res = cli("sweep-resume", "s", "hydra/launcher=basic", "hydra.job.chdir=false")
    assert res.returncode == 0 and "completed already, skipped" in res.stdout, res.stderr
    res = cli("sweep-resume", "s", "seed=3")
    assert res.returncode == 2 and "seed=3" in res.stderr


def test_ablate_resume_refuses_an_arm_file_changed_after_regx_wrote_it(tmp_path, cli):
    from regx import study

    arms = {"baseline": ["dropout=none"], "flip": ["dropout=none", "aug=flip"]}
    (tmp_path / "s").mkdir()
    study.write_group(tmp_path / "s", study.ARM, arms)
    assert (
        cli(
            *["train", *study.sweep_args({study.ARM: list(arms)}, 1, ["debug=smoke", "epochs=1"], tmp_path / "s", 1)]
        ).returncode
        == 0
    )
    arm = tmp_path / "s" / "arms" / "ablate_arm" / "flip.yaml"
    arm.write_text(arm.read_text() + "hydra:\n  callbacks:\n    x:\n      _target_: os.getcwd\n")
    res = cli("ablate", "--resume", "s")
    assert res.returncode == 2 and "flip.yaml" in res.stderr and "changed" in res.stderr
    arm.write_text(study.option_yaml(arms["flip"]))
    (tmp_path / "s" / "arms" / "hydra").mkdir()
    (tmp_path / "s" / "arms" / "hydra" / "evil.yaml").write_text("x: 1\n")
    res = cli("ablate", "--resume", "s")
    assert res.returncode == 2 and "arms/hydra is not a file regx writes" in res.stderr


def test_a_stored_config_is_read_without_resolvers(tmp_path, cli):
    assert cli("train", "debug=smoke", "epochs=1", "hydra.run.dir=r").returncode == 0
    config = tmp_path / "r" / "config.yaml"
    config.write_text(config.read_text().replace("name: ", "name: ${oc.env:HOME}  # ", 1))
    res = cli("resume", "r", "epochs=2")
    assert res.returncode == 2 and "name" in res.stderr and "interpolation" in res.stderr
    assert os.environ.get("HOME", "/") not in res.stderr


def test_job_directories_are_named_by_the_swept_keys_and_sort(tmp_path, monkeypatch):
    """On main: `3_aug=flip_rotate,batch_size=32,data.train_size=1000,epochs=3,wd=0.0001`, sorting 0, 10, 11, 1."""
    monkeypatch.setenv(sweep.NAMING, "")  # restored after the test
    sweep.name_jobs_by(["debug=smoke", "aug=none,flip", "model.channels=[8,16]", "seed=0,1,2,3,4,5"])
    dirname = "aug=flip,debug=smoke,model.channels=[8,16],seed=1"
    assert sweep.job_name(str(tmp_path), 3, dirname) == "03_aug=flip,seed=1"
    names = [sweep.job_name(str(tmp_path), n, dirname) for n in (0, 10, 11, 1)]
    assert sorted(names) == [names[0], names[3], names[1], names[2]]  # 00, 01, 10, 11
    (tmp_path / "7_aug=none,debug=smoke,seed=3").mkdir()  # named before: kept
    assert sweep.job_name(str(tmp_path), 7, dirname) == "7_aug=none,debug=smoke,seed=3"

"""Across runs and after a run: `regx report`, `regx eval`, early stopping, TensorBoard."""

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from regx import config, errors
from regx.train import train
from tests.conftest import regx_here, smoke_cfg


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four jobs: two seeds of a sane lr and two of a diverging one (those fail)."""
    root = tmp_path_factory.mktemp("sweep")
    res = regx_here(root, "train", "-m", "debug=smoke", "epochs=2", "lr=0.05,1e4", "wd=0", "seed=0,1")
    assert res.returncode == 1 and "2 of 4 jobs failed" in res.stderr, res.stderr
    (path,) = (root / "outputs" / "sweeps").iterdir()
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summaries(sweep):
    return {j.name: json.loads((j / "summary.json").read_text()) for j in sweep.iterdir() if j.is_dir()}


def test_report_lists_every_run_and_writes_three_files(sweep):
    res = regx_here(sweep, "report", str(sweep))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("failed: ") == 2 and "the run diverged" in res.stdout
    rows = read_csv(sweep / "report.csv")
    assert len(rows) == 4
    assert {"run", "lr", "seed", "status", "best_val", "final_val", "test", "gap", "verdict", "done", "wall_s"} <= rows[
        0
    ].keys()
    assert "debug" not in rows[0]  # same in every run: not a column
    s = summaries(sweep)
    by_path = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    for name, summ in s.items():
        row = by_path[name]
        assert row["status"] == summ["status"]
        if summ["status"] == "completed":
            assert float(row["best_val"]) == pytest.approx(summ["best_val_acc"])
            assert float(row["test"]) == pytest.approx(summ["test_acc"])
            assert float(row["gap"]) == pytest.approx(summ["evidence"]["gap"])  # the verdict's, beside it
        else:
            assert row["lr"] == "10000.0" and "the run diverged" in row["error"]
    md = (sweep / "report.md").read_text()
    assert md.count("\n| #") == 4 and "Not completed" in md
    with Image.open(sweep / "report.png") as im:
        assert im.size[0] >= 800 and im.size[1] >= 300


def test_report_sorts_and_groups_with_mean_and_std(sweep, tmp_path):
    res = regx_here(sweep, "report", str(sweep), "--sort", "best_val", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = read_csv(tmp_path / "report.csv")
    vals = [float(r["best_val"]) for r in rows if r["best_val"]]
    assert vals == sorted(vals, reverse=True) and all(r["best_val"] for r in rows[: len(vals)])

    res = regx_here(sweep, "report", str(sweep), "--group-by", "lr", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "averaged over: seed" in res.stdout
    assert len(read_csv(tmp_path / "report.csv")) == 4  # every run, still
    assert (tmp_path / "report_by_lr.md").is_file() and (tmp_path / "report_by_lr.png").is_file()
    groups = {r["lr"]: r for r in read_csv(tmp_path / "report_by_lr.csv")}
    done = [v for v in summaries(sweep).values() if v["status"] == "completed"]
    accs = [v["best_val_acc"] for v in done]
    assert (groups["0.05"]["completed"], groups["0.05"]["runs"]) == ("2", "2")
    assert float(groups["0.05"]["best_val_mean"]) == pytest.approx(statistics.fmean(accs))
    assert float(groups["0.05"]["best_val_std"]) == pytest.approx(statistics.stdev(accs))
    assert (groups["10000.0"]["completed"], groups["10000.0"]["best_val_mean"]) == ("0", "")


def test_report_takes_globs_and_shows_killed_runs(sweep, tmp_path):
    import shutil

    for job in sweep.iterdir():
        if job.is_dir():
            shutil.copytree(job, tmp_path / job.name)
    victim = next(p for p in tmp_path.iterdir() if p.name.startswith("0_"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    s = json.loads((victim / "summary.json").read_text())
    s.update(status="running", pid=int(dead.stdout))
    (victim / "summary.json").write_text(json.dumps(s))
    res = regx_here(tmp_path, "report", str(tmp_path / "*_*"), "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    statuses = [r["status"] for r in read_csv(tmp_path / "r" / "report.csv")]
    assert len(statuses) == 4 and statuses.count("killed") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "nowhere: no such directory"),
        (["."], "no regx runs in it"),
        (["{sweep}", "--sort", "speed"], "--sort speed: must be one of"),
        (["{sweep}", "--group-by", "colour"], "--group-by colour: no run has this key"),
        (["{sweep}", "--metric", "joy"], "--metric joy: must be one of"),
        (["{sweep}", "--sort"], "argument --sort: expected one argument (see regx report --help)"),
        ([], "the following arguments are required: DIR|GLOB"),
    ],
)
def test_report_bad_input(sweep, tmp_path, args, message):
    res = regx_here(tmp_path, "report", *[a.format(sweep=sweep) for a in args])
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    res = regx_here(root, "train", "debug=smoke", "epochs=3", f"hydra.run.dir={root / 'run'}")
    assert res.returncode == 0, res.stderr
    return root / "run"


def test_eval_gives_per_class_accuracy_and_a_confusion_matrix(finished):
    res = regx_here(finished, "eval", str(finished))
    assert res.returncode == 0, res.stderr
    assert "per-class accuracy" in res.stdout and "confusion matrix" in res.stdout
    e = json.loads((finished / "eval.json").read_text())
    s = json.loads((finished / "summary.json").read_text())
    assert e["split"] == "test" and e["n"] == s["n_test"] and e["checkpoint"].endswith("best.pt")
    assert e["accuracy"] == pytest.approx(s["test_acc"])  # the same checkpoint, data and arithmetic
    assert sum(c["n"] for c in e["per_class"]) == e["n"] == sum(map(sum, e["confusion"]))
    assert sum(c["correct"] for c in e["per_class"]) == sum(e["confusion"][i][i] for i in range(len(e["classes"])))
    with Image.open(finished / "confusion.png") as im:
        assert im.size[0] >= 400 and im.size[1] >= 400


def test_eval_last_checkpoint_and_other_data(finished):
    res = regx_here(finished, "eval", str(finished), "--checkpoint", "last", "data.n_test=50", "data.seed=7")
    assert res.returncode == 0, res.stderr
    (path,) = finished.glob("eval_last_data.n_test=50*.json")
    e = json.loads(path.read_text())
    assert e["n"] == 50 and e["checkpoint"].endswith("last.pt") and e["epoch"] == 3
    assert list(finished.glob("confusion_last_data.n_test=50*.png"))
    best = json.loads((finished / "eval.json").read_text()) if (finished / "eval.json").is_file() else None
    res = regx_here(finished, "eval", str(finished), "--last")
    assert res.returncode == 0 and (finished / "eval_last.json").is_file()
    if best is not None:  # the best checkpoint's evaluation is still there, untouched
        assert json.loads((finished / "eval.json").read_text()) == best


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data.channels=1"], "the model takes 3-channel images but data=shapes has 1"),
        (["--split", "everything"], "invalid choice: 'everything'"),
        (["lr=1"], "regx eval takes data="),
        (["data=nope"], "unknown option data=nope"),
    ],
)
def test_eval_bad_input(finished, args, message):
    res = regx_here(finished, "eval", str(finished), *args)
    assert res.returncode == 2 and message in res.stderr


def test_eval_names_a_missing_run(tmp_path):
    res = regx_here(tmp_path, "eval", "nothing-here")
    assert res.returncode == 2 and "no such run directory: nothing-here" in res.stderr


def test_early_stop_says_when_and_why_and_resume_respects_it(tmp_path):
    # min_delta 0.9: no epoch after the first can count as an improvement
    cfg = smoke_cfg("epochs=6", "early_stop.patience=2", "early_stop.min_delta=0.9")
    s = train(cfg, tmp_path / "r")
    assert s["status"] == "completed" and s["epochs_done"] == 3
    assert (
        s["stopped_early"]["epoch"] == 3
        and "did not improve by more than 90 points for 2 epochs" in s["stopped_early"]["reason"]
    )
    assert s["test_acc"] is not None
    assert "never stops early" not in (tmp_path / "r" / "train.log").read_text()
    # one epoch fewer leaves no room for that stop: said before training, and the run goes to its end
    short = train(smoke_cfg("epochs=3", "early_stop.patience=2", "early_stop.min_delta=0.9"), tmp_path / "short")
    assert short["epochs_done"] == 3 and short["stopped_early"] is None
    assert (
        "early_stop.patience=2: a run of 3 epochs never stops early (the earliest stop is after epoch 3); "
        "early_stop.patience=1 or less, or more epochs" in (tmp_path / "short" / "train.log").read_text()
    )
    same = regx_here(tmp_path, "resume", str(tmp_path / "r"))
    assert same.returncode == 0 and "stopped early after epoch 3" in same.stdout
    more = regx_here(tmp_path, "resume", str(tmp_path / "r"), "early_stop.patience=0")
    assert more.returncode == 0, more.stderr
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["epochs_done"] == 6 and s["stopped_early"] is None


def test_tensorboard_logger_writes_scalars_image_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    train(smoke_cfg("logger=tensorboard", "aug=flip", "pictures=true"), tmp_path / "tb")
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/train", "loss/val", "accuracy/val", "accuracy/clean_train", "gap", "lr", "hparam/test_acc"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in acc.Scalars("accuracy/val")] == [1, 2]
    assert tags["images"] == ["augmentation"]
    plugin = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["aug"].string_value == "flip"
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(0.05)
    end = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_end_info"])
    assert end.session_end_info.status == 1  # STATUS_SUCCESS


def test_tensorboard_logger_without_the_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(config.ConfigError, match=r"pip install 'regx\[tensorboard\]'"):
        errors.preflight(["logger=tensorboard"])


def test_report_shows_what_differs_wherever_it_was_set(tmp_path):
    """lr set by a resume with --force, and through an experiment file: both are columns."""
    train(smoke_cfg("epochs=1"), tmp_path / "a")
    train(smoke_cfg("epochs=1", "experiment=overfit", "data.n_train=800", "epochs=1"), tmp_path / "b")
    train(smoke_cfg("epochs=1"), tmp_path / "c")
    res = regx_here(tmp_path, "resume", "c", "epochs=2", "lr=0.01", "sched.restart=true", "--force")
    assert res.returncode == 0, res.stderr
    res = regx_here(tmp_path, "report", "a", "b", "c", "--out", "r")
    assert res.returncode == 0, res.stderr
    rows = {r["run"]: r for r in read_csv(tmp_path / "r" / "report.csv")}
    assert rows["c"]["lr"] == "0.01" and rows["a"]["lr"] == "0.05"
    assert "aug" not in rows["a"] and rows["b"]["sched"] == "constant" and rows["b"]["wd"] == "0.0"
    assert rows["b"]["data.train_size"] == "500" and rows["c"]["done"] == "2/2"
    header = next(line for line in (tmp_path / "r" / "report.md").read_text().splitlines() if line.startswith("| run"))
    assert header.count("epochs") == 1  # the config key; epochs done/planned is "done"


@pytest.mark.parametrize("columns", [80, 200])
def test_report_tables_survive_80_columns(sweep, tmp_path, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr("regx.console._console", None)  # a console of that width
    res = regx_here(tmp_path, "report", sweep, "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    table = lines[: next(i for i, line in enumerate(lines) if "accuracies and gap in %" in line) + 1]
    assert all(len(line) <= columns for line in table), max(table, key=len)  # paths and errors follow, whole
    for row in read_csv(tmp_path / "report.csv"):  # every number whole, on one line
        if row["best_val"]:
            assert f"{100 * float(row['best_val']):.2f}" in res.stdout
        assert row["lr"] in res.stdout
    assert ("┃ run" in res.stdout) == (columns == 200)  # wide: a table; narrow: one block per run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run trained on an image folder of cat, dog and emu."""
    from tests.conftest import write_images

    root = tmp_path_factory.mktemp("folder")
    write_images(root / "imgs", per_class=10)
    train(
        smoke_cfg(
            "epochs=1",
            "data=imagefolder",
            f"data.path={root / 'imgs'}",
            "data.image_size=16",
            "data.workers=0",
            f"data.root={root}",
        ),
        root / "run",
    )
    return root


def test_eval_matches_classes_by_name_on_new_data(folder_run, tmp_path):
    from tests.conftest import write_images

    run = folder_run / "run"
    write_images(tmp_path / "new", classes=("zebra", "dog"), per_class=4)  # dog is the model's 2nd class, zebra unknown
    args = ["eval", run, "data.path=new", "--split", "all", "--out", "."]
    res = regx_here(tmp_path, *args)
    assert res.returncode == 2 and "the data has class zebra that the model does not know" in res.stderr
    res = regx_here(tmp_path, *args, "--unknown")
    assert res.returncode == 0, res.stderr
    e = json.loads(next(tmp_path.glob("eval_all_*.json")).read_text())
    assert e["n"] == 4 and e["unknown"] == {"classes": ["zebra"], "n": 4} and e["absent_classes"] == ["cat", "emu"]
    rows = {c["class"]: c for c in e["per_class"]}
    assert rows["dog"]["n"] == 4 and rows["cat"]["n"] == rows["emu"]["n"] == 0  # by name, not by position
    assert "not in the accuracy" in res.stdout and "does not have: cat, emu" in res.stdout


def test_eval_scores_a_test_only_folder_and_every_image_of_a_flat_one(folder_run, tmp_path):
    from tests.conftest import write_images

    run = folder_run / "run"
    write_images(tmp_path / "held_out" / "test", per_class=3)
    res = regx_here(tmp_path, "eval", run, "data.path=held_out", "--out", ".")
    assert res.returncode == 0, res.stderr
    assert json.loads(next(tmp_path.glob("eval_data.path=held_out*.json")).read_text())["n"] == 9
    res = regx_here(tmp_path, "eval", run, f"data.path={folder_run / 'imgs'}", "--split", "all", "--out", ".")
    assert res.returncode == 0, res.stderr
    e = json.loads(next(tmp_path.glob("eval_all_*.json")).read_text())
    assert e["split"] == "all" and e["n"] == 30  # every image, not the validation tenth


def test_a_report_stopped_halfway_publishes_none_of_its_files(sweep, tmp_path, monkeypatch):
    """On main a stop while report.png was drawn left the new report.csv and .md beside the old .png."""
    import regx.report

    out = tmp_path / "out"
    regx.report.write_report(out, [], [], "test", None, "first")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["report.csv", "report.md", "report.png"]

    def stopped(*a, **kw):
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM (regx raises it as one), while the picture is drawn

    monkeypatch.setattr(regx.report, "report_plot", stopped)
    records = [regx.report.run_record(j) for j in sorted(sweep.iterdir()) if j.is_dir()]
    with pytest.raises(KeyboardInterrupt):
        regx.report.write_report(out, records, ["lr"], "test", None, "second")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, whole; no temporary file


def test_report_pictures_read_at_a_glance(sweep, tmp_path, monkeypatch):
    """On main: epoch ticks at 1.25, 1.5 for a 2-epoch sweep, a title of only "4 runs", and a group's runs
    in one colour with nothing to tell the group's trend."""
    import regx.report

    figures = {}

    def keep(fig, path):
        figures[Path(path).name] = fig
        return Path(path)

    monkeypatch.setattr(regx.report, "save_figure", keep)
    report = regx.report.build([str(sweep)], group_by=["lr"], out=tmp_path / "out")
    assert report.title == f"4 runs of {sweep.name} (2 completed, 2 failed), grouped by lr"
    runs, grouped = figures["report.png"], figures["report_by_lr.png"]
    assert runs._suptitle.get_text() == f"4 runs of {sweep.name} (2 completed, 2 failed)"
    for fig in (runs, grouped):
        ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 2]
        assert ticks == [1, 2], ticks  # whole epochs only
    legend = [t.get_text() for t in grouped.axes[0].get_legend().get_texts()]
    assert "lr=0.05 (mean of 2)" in legend
    # the bias-variance map: each judged run at (its clean gap, its validation accuracy), as its verdict read them
    judged = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    judged = [s["evidence"] for s in judged if "gap" in s.get("evidence", {})]
    drawn = sorted(tuple(xy) for c in runs.axes[1].collections for xy in c.get_offsets().tolist())
    assert judged and drawn == sorted((100 * e["gap"], 100 * e["val_acc"]) for e in judged)
    lines = {line.get_label() for line in runs.axes[1].get_lines()}
    assert "variance line" in lines and any(label.startswith("bias line (target 90%)") for label in lines)


def test_eval_of_a_flat_folder_run_scores_the_images_it_held_out(folder_run, tmp_path):
    """On main `regx eval RUN` scored all 30 images, the 27 it trained on included, and refused --split val."""
    run = folder_run / "run"
    s = json.loads((run / "summary.json").read_text())
    for args in ([], ["--split", "val"]):
        res = regx_here(tmp_path, "eval", run, *args, "--out", ".")
        assert res.returncode == 0, res.stderr
        e = json.loads(next(tmp_path.glob(f"eval{'_val' if args else ''}.json")).read_text())
        assert e["split"] == "val" and e["n"] == s["n_val"] == 3
        assert e["accuracy"] == pytest.approx(s["best_val_acc"])  # the very images the run validated on
    res = regx_here(tmp_path, "eval", run, "--split", "test")
    assert res.returncode == 2 and "has no test/ folder: the images this run held out are its val split" in res.stderr
    res = regx_here(tmp_path, "eval", run, "--split", "all", "--out", ".")
    e = json.loads(next(tmp_path.glob("eval_all.json")).read_text())
    assert e["split"] == "all (training images included)" and e["n"] == 30

"""`regx curve` and `regx path`: studies on regx ablate's machinery, their plans, tables and pictures."""

import csv
import json

import pytest

from regx import config, curve


def test_a_log_range_and_a_list_of_values():
    values, log = curve.parse_values("1e-6:1e-2:5")
    assert values == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2]) and log
    assert curve.parse_values("0,0.2,0.4") == ([0.0, 0.2, 0.4], False)
    assert curve.parse_values("3e-3:3e-1:5")[0] == [0.003, 0.00949, 0.03, 0.0949, 0.3]  # as a person writes them
    for bad in ("0.5", "1:0.1:3", "a,b", "1e-3:1e-2:1", "1:1.001:9"):
        with pytest.raises(config.ConfigError):
            curve.parse_values(bad)


def test_an_equal_budget_of_steps_gives_small_sizes_more_epochs():
    cfg = config.compose(["batch_size=64", "epochs=10"])
    steps = curve.default_steps(cfg, [250, 1000, 4000])  # 10 epochs at the geometric mean, 1000 images: 16 steps
    assert steps == 160
    points = curve.plan_points(cfg, sizes=[250, 1000, 4000], key=None, values=None, budget="steps", steps=steps)
    assert [p["epochs"] for p in points.values()] == [40, 10, 3]  # 4, 16 and 63 steps an epoch
    assert points["n250"]["overrides"] == ["data.train_size=250", "epochs=40"]
    same = curve.plan_points(cfg, sizes=[250, 4000], key="wd", values=[0.0, 1e-3], budget="epochs", steps=None)
    assert list(same) == ["n250_v0", "n250_v1", "n4000_v0", "n4000_v1"]
    assert same["n4000_v1"]["overrides"] == ["data.train_size=4000", "wd=0.001"]  # the config's epochs


def _fake_study(sweep, kind, arms, points, scores):
    """A study directory as a finished sweep leaves it: option files, study.json, one job per run with its
    overrides and summary (scores: (arm, point, seed) -> (test acc, clean gap, clean train acc, verdict))."""
    from regx import study

    study.write_group(sweep, study.ARM, arms)
    study.write_group(sweep, study.POINT, {n: p["overrides"] for n, p in points.items()})
    curve.write_plan(sweep, curve.Plan(kind, "test", "wd" if kind == "path" else None, False, "epochs", None, points))
    for i, ((arm, point, seed), (acc, gap, clean, verdict)) in enumerate(scores.items()):
        job = sweep / f"{i}_job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- +ablate_arm={arm}\n- +study_point={point}\n- seed={seed}\n")
        summary = {
            "status": "completed",
            "test_acc": acc,
            "verdict": verdict,
            "num_classes": 10,
            "evidence": {"gap": gap, "train_acc": clean, "val_acc": clean - gap},
        }
        (job / "summary.json").write_text(json.dumps(summary))


def test_a_curve_says_where_each_arm_stops_helping(tmp_path):
    points = {
        f"n{n}": {"size": n, "value": None, "epochs": 5, "overrides": [f"data.train_size={n}", "epochs=5"]}
        for n in (250, 1000, 4000)
    }
    scores = {}
    for seed, noise in enumerate((0.0, 0.004, -0.003)):
        for n, base, gain in ((250, 0.70, 0.05), (1000, 0.80, 0.03), (4000, 0.88, 0.0)):
            scores[("baseline", f"n{n}", seed)] = (base + noise, 0.2, 0.95, "overfitting")
            scores[("all", f"n{n}", seed)] = (base + gain + noise + 0.001 * seed, 0.1, 0.9, "good_fit")
    _fake_study(tmp_path, "curve", {"baseline": ["wd=0"], "all": ["wd=0", "aug=flip"]}, points, scores)
    header, shown, files, notes, warnings = curve.report(tmp_path)
    assert [row[:2] for row in shown] == [
        ["baseline", "250"],
        ["all", "250"],
        ["baseline", "1,000"],
        ["all", "1,000"],
        ["baseline", "4,000"],
        ["all", "4,000"],
    ]
    assert "all helps up to 1,000 images and stops helping at 4,000" in " ".join(notes)
    rows = list(csv.DictReader(open(tmp_path / "curve.csv")))
    assert float(rows[1]["diff"]) == pytest.approx(0.051) and float(rows[1]["gap"]) == pytest.approx(0.1)
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_an_arm_that_helps_again_past_where_it_stopped_is_said_to():
    def row(size, diff, ci95):
        return {"arm": "recipe", "size": size, "diff": diff, "ci95": ci95}

    said = curve._where_it_stops([row(250, 0.036, 0.012), row(500, 0.015, 0.022), row(1000, 0.017, 0.009)])
    assert said == [
        "recipe helps up to 250 images and stops helping at 500 (+1.50 ± 2.20 points). It helps again at 1,000 "
        "(+1.70 ± 0.90)."
    ]
    said = curve._where_it_stops([row(250, -0.01, 0.02), row(1000, 0.03, 0.01)])
    assert said[0].endswith("(-1.00 ± 2.00 points). It helps again at 1,000 (+3.00 ± 1.00).")


@pytest.mark.slow  # eight smoke runs and a resume (20 s); make test-all runs it
def test_a_curve_on_the_embedded_data(tmp_path, cli):
    res = cli("curve", "debug=smoke", "data.val_fraction=0.2", "--sizes", "64,160", "--seeds", "2")
    assert res.returncode == 0, res.stderr
    (sweep,) = (tmp_path / "outputs" / "curves").iterdir()
    rows = list(csv.DictReader(open(sweep / "curve.csv")))
    assert [(r["arm"], r["size"]) for r in rows] == [
        ("baseline", "64"),
        ("all", "64"),
        ("baseline", "160"),
        ("all", "160"),
    ]
    assert all(r["seeds"] == "2" for r in rows) and rows[0]["epochs"] != rows[2]["epochs"]  # equal steps, not epochs
    md = (sweep / "curve.md").read_text()
    assert "| baseline | 64 |" in md and ("helps" in md or "does not help" in md)
    assert (sweep / "curve.png").stat().st_size > 10_000
    again = cli("curve", "--resume", str(sweep))
    assert again.returncode == 0 and again.stdout.count("completed already, skipped") == 8
    for option in (["--seeds", "5"], ["--sizes=64,400"], ["--metric", "best_val"]):  # main finished it as begun, exit 0
        res = cli("curve", "--resume", str(sweep), *option)
        assert (
            res.returncode == 2 and f"{option[0].split('=')[0]}: --resume finishes the curve as it began" in res.stderr
        )
    plan = json.loads((sweep / "study.json").read_text())
    plan["points"]["n64"]["overrides"] = ["data.train_size=64", "epochs=99"]
    (sweep / "study.json").write_text(json.dumps(plan))
    res = cli("curve", "--resume", str(sweep))
    assert res.returncode == 2 and "does not match the study's points" in res.stderr


def test_a_path_on_the_embedded_data(tmp_path, cli):
    # in a folder of the user's choosing (regx's own hydra.sweep.dir came last and won; the end looked in theirs)
    res = cli("path", "label_smoothing=0,0.2", "debug=smoke", "epochs=1", "--seeds", "2", "hydra.sweep.dir=mine/p")
    assert res.returncode == 0, res.stderr
    sweep = tmp_path / "mine/p"
    assert not (tmp_path / "outputs").exists() and "every run: regx report mine/p" in res.stdout
    rows = list(csv.DictReader(open(sweep / "path.csv")))
    assert [r["value"] for r in rows] == ["0.0", "0.2"] and all(r["clean_train"] and r["val"] for r in rows)
    md = (sweep / "path.md").read_text()
    assert "★" in md and "Best label_smoothing: " in md and "from the weakest to the strongest" in md
    assert (sweep / "path.png").stat().st_size > 10_000
    again = cli("sweep-resume", "mine/p")  # finished as any sweep; the study's own --resume also tabulates it
    assert again.stdout.splitlines()[-1] == "4 jobs in mine/p; its table: regx path --resume mine/p; every run: " + (
        "regx report mine/p"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["path", "aug=0,1"], "aug: regx path sweeps a numeric key"),
        (["path", "name=1,2"], "name: regx path sweeps a numeric key"),
        (["path", "wd=0.5"], "a path needs at least two values"),
        (["path", "wd=0,1e-3", "wd=1e-4"], "wd=1e-4: the path sets wd itself"),
        (["path"], "debug: regx path sweeps a numeric key"),  # the swept key comes first
        (["curve", "--sizes", "100"], "a curve needs at least two sizes"),
        (["curve", "--sizes", "100,999999"], "999,999 is above the 360 training images data=shapes has"),
        (["curve", "--sizes", "100,200", "data.train_size=50"], "data.train_size=50: the curve sets data.train_size"),
        (["curve", "--sizes", "100,x"], "--sizes 100,x: whole numbers"),
        (["curve", "--sizes", "100,200", "--arms", "all,recipe"], "--arms all,recipe: no arm recipe (together, each"),
        (  # a budget nothing reads (main trained the config's epochs and exited 0)
            ["curve", "--sizes", "100,200", "--budget", "epochs", "--steps", "300"],
            "--steps 300: --budget epochs trains every run the config's epochs",
        ),
        (["path", "wd=0,1e-3", "--steps", "300"], "--steps 300: a path at one size trains the config's epochs"),
        (  # a path's points named as such (main said "path arm run"), each a strength nothing reads
            ["path", "aug.rotate.degrees=5,10"],
            "path point v0 (aug.rotate.degrees=5): aug.rotate.degrees=5.0 is not read: aug.rotate.p is 0",
        ),
        (["path", "wd=0,1", "hydra.sweep.dir=/usr"], "hydra.sweep.dir=/usr: the folder is not empty"),
        (["path", "wd=0,1", "hydra.sweep.subdir=x"], "hydra.sweep.subdir: the path sets it itself"),
        (["ablate", "hydra.searchpath=[file://.]"], "hydra.searchpath: the ablate sets it itself"),
        (
            ["curve", "--sizes", "100,200", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            "hydra.launcher.n_jobs: the curve runs",
        ),
        (["path", "wd=0,1", "hydra/launcher=basic", "--jobs", "2"], "with hydra/launcher=basic set its own"),
    ],
)
def test_bad_studies_are_one_line_and_make_no_directory(tmp_path, cli, args, message):
    res = cli(*args, "debug=smoke")
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_studys_point_files_are_checked_before_it_is_resumed(tmp_path):
    from regx import study, sweep

    points = {"n250": {"size": 250, "value": None, "epochs": 5, "overrides": ["data.train_size=250", "epochs=5"]}}
    _fake_study(tmp_path, "curve", {"baseline": ["wd=0"]}, points, {})
    assert study.check_dir(tmp_path, sweep.check_task_override) == {"ablate_arm": ["baseline"], "study_point": ["n250"]}
    point = tmp_path / "arms" / "study_point" / "n250.yaml"
    point.write_text(point.read_text() + "hydra:\n  callbacks: {}\n")
    with pytest.raises(study.Untrusted, match="n250.yaml was changed after regx wrote it"):
        study.check_dir(tmp_path, sweep.check_task_override)


def test_a_curve_takes_the_arms_it_is_given_by_name():
    from regx.cli import _arms_for_curve

    cfg = config.compose(["debug=smoke", '+ablate.arms.recipe=["aug=crop_flip","label_smoothing=0.1"]'])
    arms = _arms_for_curve(cfg, "all,recipe")
    assert list(arms) == ["baseline", "all", "recipe"]
    assert arms["recipe"] == [*arms["baseline"], "aug=crop_flip", "label_smoothing=0.1"]
    assert list(_arms_for_curve(cfg, "together")) == ["baseline", "all"]


def test_a_paths_picture_names_each_points_verdicts_in_words(tmp_path, monkeypatch):
    """Over each point's gap, its seeds' verdicts as words a learner reads without a key."""
    from regx import plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    rows = [
        {
            "size": None,
            "value": v,
            "mean": 0.8,
            "ci95_mean": 0.01,
            "gap": g,
            "gap_ci95_mean": None,  # one seed: no band to make room above the highest point
            "val": 0.8,
            "clean_train": 0.8 + g,
            "verdicts": verdicts,
        }
        for v, g, verdicts in ((0.001, 0.12, "overfitting ×3"), (0.01, 0.06, "underfitting ×2, good_fit"))
    ]
    plots.path_chart(tmp_path / "path.png", rows, "wd", True, "test", "t", best={})
    fig = drawn["fig"]
    gap_panel = fig.axes[1]
    assert [t.get_text() for t in gap_panel.texts] == ["over ×3", "under ×2, good"]
    assert fig._suptitle.get_text().startswith("t (bands: 95% over seeds; words:")
    one = [{**r, "ci95_mean": None} for r in rows]  # one seed: no interval, so no band, and the title says so
    drawn.clear()
    plots.path_chart(tmp_path / "path1.png", one, "wd", True, "test", "t", best={})
    assert drawn["fig"]._suptitle.get_text().startswith("t (one seed: no bands; words:")
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    inside = gap_panel.get_window_extent(renderer)
    for text in gap_panel.texts:  # the highest point's words stay inside the panel (they were cut off at its top)
        box = text.get_window_extent(renderer)
        assert inside.y0 <= box.y0 and box.y1 <= inside.y1, text.get_text()


def test_a_curves_picture_shows_each_arms_paired_difference_from_the_baseline(tmp_path, monkeypatch):
    """The middle panel: each arm minus the baseline with its paired interval, at every size, around zero."""
    from regx import plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    row = {"ci95_mean": 0.01, "gap": 0.1, "gap_ci95_mean": 0.01}
    rows = [
        {**row, "arm": "baseline", "size": 1000, "mean": 0.84, "diff": None, "ci95": None},
        {**row, "arm": "baseline", "size": 8000, "mean": 0.88, "diff": None, "ci95": None},
        {**row, "arm": "recipe", "size": 1000, "mean": 0.86, "diff": 0.02, "ci95": 0.012},
        {**row, "arm": "recipe", "size": 8000, "mean": 0.885, "diff": 0.005, "ci95": 0.013},
    ]
    plots.curve_chart(tmp_path / "curve.png", rows, "test", "t")
    middle = drawn["fig"].axes[1]
    assert "vs baseline" in middle.get_ylabel()
    (line,) = middle.get_lines()[:1]
    assert [round(y, 6) for y in line.get_ydata()] == [2.0, 0.5]
    assert [t.get_text() for t in middle.get_legend().get_texts()] == ["recipe"]


def test_an_accuracys_band_ends_at_zero(tmp_path, monkeypatch):
    from regx import plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    rows = [
        {"arm": "baseline", "size": n, "mean": 0.08, "ci95_mean": 0.13, "gap": -0.05, "gap_ci95_mean": 0.1}
        for n in (64, 160)
    ]
    plots.curve_chart(tmp_path / "curve.png", rows, "test", "t")
    acc, _, gap = drawn["fig"].axes
    lowest = min(path.vertices[:, 1].min() for c in acc.collections for path in c.get_paths())
    assert lowest == 0.0  # 8% ± 13 would reach -5%: an accuracy's band stops at 0
    assert min(path.vertices[:, 1].min() for c in gap.collections for path in c.get_paths()) < -10  # a gap's does not

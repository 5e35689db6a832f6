"""`regx ablate`: arms as configs, paired statistics, one sweep that resumes."""

import csv
import json
import math

import pytest

from regx import ablate, config, stats, study
from regx.stats import paired_ci


def test_the_arms_are_the_baseline_plus_each_technique_then_all():
    arms = ablate.arms_of(config.compose([]))
    assert list(arms) == ["baseline", "augmentation", "dropout", "weight_decay", "lr_decay", "all"]
    assert arms["baseline"] == ["aug=none", "dropout=none", "wd=0", "sched=constant"]
    assert arms["dropout"] == [*arms["baseline"], "dropout=fc"]
    assert arms["all"][-5:] == ["aug=crop_flip", "dropout=fc", "decay=l2", "wd=5e-4", "sched=cosine"]


def test_an_arm_composes_as_its_overrides_do(tmp_path):
    arms = ablate.arms_of(config.compose([]))
    study.write_group(tmp_path, study.ARM, arms)
    for name in ("baseline", "weight_decay", "all"):
        got = config.compose(["debug=smoke", f"+ablate_arm={name}", f"hydra.searchpath=[file://{tmp_path / 'arms'}]"])
        want = config.compose(["debug=smoke", *arms[name]])
        assert got == want, name


def test_the_paired_interval_is_students_t():
    mean, half = paired_ci([0.01, 0.03, 0.02])
    assert mean == pytest.approx(0.02)
    assert half == pytest.approx(4.303 * 0.01 / math.sqrt(3), rel=1e-3)
    assert paired_ci([0.05]) == (0.05, None)


@pytest.mark.slow  # 4-14 s of subprocesses; make test-all runs it
def test_ablate_runs_every_arm_and_seed_and_tabulates_paired_differences(tmp_path, cli):
    res = cli(
        "ablate",
        "debug=smoke",
        "epochs=1",
        "~ablate.arms.weight_decay",
        "~ablate.arms.lr_decay",
        "--seeds",
        "2",
        "--vary-split",
        "--corrupt",
        "contrast",
        "--metric",
        "test",
    )
    assert res.returncode == 0, res.stderr
    (sweep,) = (tmp_path / "outputs" / "ablations").iterdir()
    rows = {r["arm"]: r for r in csv.DictReader(open(sweep / "ablation.csv"))}
    assert list(rows) == ["baseline", "augmentation", "dropout", "all"]
    assert all(r["seeds"] == "2" for r in rows.values())
    acc, corrupt = {}, {}  # arm -> seed -> test accuracy, and under corruption: read from the jobs themselves
    for job in sweep.iterdir():
        if (job / "summary.json").is_file():
            overrides = dict(
                o.lstrip("- ").split("=", 1) for o in (job / ".hydra" / "overrides.yaml").read_text().splitlines()
            )
            acc.setdefault(overrides["+ablate_arm"], {})[overrides["seed"]] = json.loads(
                (job / "summary.json").read_text()
            )["test_acc"]
            corrupt.setdefault(overrides["+ablate_arm"], []).append(
                json.loads((job / "summary.json").read_text())["test_corrupt_acc"]
            )
            assert f"seed: {overrides['seed']}\n  " in (job / "config.yaml").read_text().split("data:")[1]  # data.seed
            remedies = json.loads((job / "summary.json").read_text())["remedies"]
            assert remedies and not any("ablate" in r for r in remedies)  # plain runs' commands, the arm spelled out
            if overrides["+ablate_arm"] == "baseline":
                assert all("aug=none dropout=none wd=0 sched=constant" in r for r in remedies), remedies
    diffs = [acc["dropout"][seed] - acc["baseline"][seed] for seed in ("0", "1")]
    assert float(rows["dropout"]["diff"]) == pytest.approx(sum(diffs) / 2)
    assert float(rows["dropout"]["ci95"]) == pytest.approx(12.7062047 * abs(diffs[0] - diffs[1]) / 2, rel=1e-6)
    md = (sweep / "ablation.md").read_text()
    assert (sweep / "ablation.png").stat().st_size > 0 and "| baseline |" in md
    assert "Warning: 2 seeds: too few" in md and "regx: warning: 2 seeds" in res.stderr
    # said once before the jobs start, and under the table (on main: only inside each run's log)
    few = "regx: warning: this ablation's runs take as few as 6 optimizer steps: too few to judge a regularizer by"
    assert res.stderr.startswith(few) and "Warning: runs of only 6 optimizer steps" in md
    shown = {
        cells[0].lstrip("| "): cells[1] for cells in (line.split(" | ") for line in md.splitlines()) if len(cells) > 2
    }
    assert rows["dropout"]["overrides"] == shown["dropout"] == "dropout=fc"  # csv and md spell the arms alike
    again = cli("ablate", "--resume", str(sweep), "--metric", "test_corrupt")  # nothing left to run: tabulated anew
    assert again.returncode == 0 and "completed already, skipped" in again.stdout
    res = cli("ablate", "--resume", str(sweep), "--jobs", "2")  # main ignored it, exit 0
    assert res.returncode == 2 and "--jobs: --resume finishes the ablate as it began" in res.stderr
    rows = {r["arm"]: r for r in csv.DictReader(open(sweep / "ablation.csv"))}
    assert float(rows["baseline"]["mean"]) == pytest.approx(sum(corrupt["baseline"]) / 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["aug=all"], "aug=all: the ablate sets aug itself"),
        (["seed=3"], "seed=3: the ablate sets seed itself"),
        (["--seeds", "0"], "--seeds and --jobs must be at least 1"),
        (['+ablate.arms.bad=["aug=nope"]'], "ablate arm bad ("),
    ],
)
def test_bad_ablations_are_one_line(tmp_path, cli, args, message):
    res = cli("ablate", "debug=smoke", *args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "outputs").exists()


def test_holm_adjusts_step_down_and_the_p_value_is_a_paired_t_test():
    from scipy.stats import ttest_rel

    adjusted = stats.holm([0.01, 0.04, None, 0.03])
    assert (
        adjusted[2] is None and adjusted[0] == pytest.approx(0.03) and adjusted[1] == adjusted[3] == pytest.approx(0.06)
    )
    a, b = [0.81, 0.83, 0.80, 0.82], [0.80, 0.80, 0.79, 0.80]
    assert stats.paired_p([x - y for x, y in zip(a, b)]) == pytest.approx(ttest_rel(a, b).pvalue)


def test_the_seeds_needed_are_the_fewest_whose_interval_excludes_zero():
    diffs = [0.01, 0.03, -0.005, 0.02]
    n = stats.seeds_needed(diffs)
    mean, sd = sum(diffs) / 4, __import__("statistics").stdev(diffs)
    from scipy.stats import t

    assert t.ppf(0.975, n - 1) * sd / math.sqrt(n) < mean <= t.ppf(0.975, n - 2) * sd / math.sqrt(n - 1)


def test_every_run_counts_in_the_table():
    """A seed that diverged is shown with its status and marks its arm's figures; fewer than 3 seeds and
    a baseline near chance are said."""
    base = study.Arm("baseline", ["wd=0"], {0: 0.10, 1: 0.08}, ["underfitting"] * 2, {0: 0.01, 1: 0.02}, {}, 10)
    hot = study.Arm("hot", ["wd=0", "lr=1000"], {0: 0.09}, ["underfitting", "diverged"], {0: 0.0}, {1: "diverged"}, 10)
    header, shown, data, warnings = ablate.table([base, hot], "test")
    row = dict(zip(header, shown[1]))
    assert row["seeds"] == "1 (seed 1 diverged)" and row["test acc (mean ± std)"].endswith("†")
    assert data[1]["failed"] == {"1": "diverged"} and data[1]["seeds"] == 1
    assert any("hot: seed 1 diverged" in w for w in warnings)
    assert any(w.startswith("2 seeds: too few") for w in warnings)
    assert any("baseline is near chance (9.0% on 10 classes" in w for w in warnings)


def test_augmentations_of_several_arms_compose_together_in_all(tmp_path):
    cfg = config.compose(['+ablate.arms.augmix=["aug=augmix"]', '+ablate.arms.rot=["aug=flip_rotate"]'])
    arms = ablate.arms_of(cfg)
    assert "aug=[crop_flip,augmix,flip_rotate]" in arms["all"] and arms["all"][0] == "aug=none"
    study.write_group(tmp_path, study.ARM, arms)
    got = config.compose(["debug=smoke", "+ablate_arm=all", f"hydra.searchpath=[file://{tmp_path / 'arms'}]"])
    assert got == config.compose(["debug=smoke", *arms["all"]])
    assert got.aug.augmix.p > 0 and got.aug.crop.p > 0 and got.aug.rotate.p > 0

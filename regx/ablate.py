"""`regx ablate`: which regularization helps this data, and by how much.

One sweep of the baseline, each technique alone (added to the baseline) and all together, over N
seeds paired across arms (seed s of every arm shares its data split, initial weights and batch
order). The arms are a config: `ablate.baseline` and `ablate.arms` (regx/config.py). Each arm
becomes a config option of a group `ablate_arm`, written into the sweep directory, so the sweep is an
ordinary Hydra sweep: parallel with the joblib launcher, resumable with `regx sweep-resume` (or
`regx ablate --resume DIR`). It ends with ablation.csv, ablation.md and ablation.png: per arm the
mean ± std, the paired difference against the baseline with its 95% confidence interval (Student's t
over the seeds), its p-value and the Holm-adjusted one (several arms are compared with one baseline),
the seeds a difference of that size would need, the clean gap and its paired difference, the verdicts.
Every run counts: a seed that diverged or failed is shown with its status, and the arm's figures say
over how many seeds they are. With `ablate.vary_split` each seed draws its own subset and split.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from regx.config import GROUPS, ConfigError
from regx.files import DamagedFile, job_dirs, read_json, read_overrides, write_text

GROUP = "ablate_arm"
ARMS_DIR = "arms"
ARM_HEADER = "# written by regx ablate: "
METRICS = {"test": "test_acc", "best_val": "best_val_acc", "final_val": "final_val_acc"}


def arms_of(cfg) -> dict[str, list[str]]:
    """{arm: its overrides}: `baseline`, each technique added to it, and `all` (every technique)."""
    baseline = [str(o) for o in cfg.ablate.baseline]
    techniques = {str(k): [str(o) for o in v] for k, v in cfg.ablate.arms.items()}
    if not techniques:
        raise ConfigError("ablate.arms is empty: name at least one technique, e.g. '+ablate.arms.flip=[\"aug=flip\"]'")
    for name in techniques:
        if name in ("baseline", "all") or not name.replace("_", "").isalnum():
            raise ConfigError(f"ablate.arms.{name}: an arm's name is letters, digits and _, and not baseline or all")
    arms = {"baseline": baseline, **{k: [*baseline, *v] for k, v in techniques.items()}}
    if len(techniques) > 1:
        arms["all"] = [*baseline, *(o for v in techniques.values() for o in v)]
    return arms


def varied_keys(arms: dict[str, list[str]]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for overrides in arms.values() for o in overrides}


def arm_yaml(overrides: list[str]) -> str:
    """An arm's overrides as a config option of the `ablate_arm` group (global package): group choices
    as defaults-list overrides, values as keys; later overrides win."""
    groups, values = {}, OmegaConf.create()
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+")
        if key in GROUPS:
            groups[key] = value
        else:
            values = OmegaConf.merge(values, OmegaConf.from_dotlist([f"{key}={value}"]))
    lines = ["# @package _global_", ARM_HEADER + " ".join(overrides)]
    if groups:
        lines += ["defaults:", *(f"  - override /{g}: {v}" for g, v in groups.items())]
    body = OmegaConf.to_yaml(values) if len(values) else ""
    return "\n".join(lines) + "\n" + body


def write_arms(sweep_dir: Path, arms: dict[str, list[str]]) -> Path:
    folder = sweep_dir / ARMS_DIR / GROUP
    for name, overrides in arms.items():
        write_text(folder / f"{name}.yaml", arm_yaml(overrides))
    return sweep_dir / ARMS_DIR


def as_plain_run(overrides: list[str], job_dir: Path) -> list[str]:
    """A job's overrides as a plain `regx train` would take them: `+ablate_arm=NAME` becomes the arm's
    own overrides (recorded in the sweep's arms folder), and the ablation's own keys go."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == f"+{GROUP}":
            recorded = job_dir.parent / ARMS_DIR / GROUP / f"{value}.yaml"
            lines = recorded.read_text().splitlines() if recorded.is_file() else []
            out += lines[1].removeprefix(ARM_HEADER).split() if len(lines) > 1 else []
        elif key.lstrip("+~").split(".", 1)[0] != "ablate":
            out.append(o)
    return out


def sweep_args(arms: dict[str, list[str]], seeds: int, overrides: list[str], sweep_dir: Path, jobs: int) -> list[str]:
    """The `regx train` arguments of the ablation's sweep."""
    args = [
        "-m",
        f"+{GROUP}={','.join(arms)}",
        f"seed={','.join(str(s) for s in range(seeds))}",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.searchpath=[file://{(sweep_dir / ARMS_DIR).resolve()}]",
    ]
    if jobs > 1:
        args += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return args


# ---------------------------------------------------------------------------------------------
# The table


def paired_ci(diffs: list[float]) -> tuple[float, float | None]:
    """(mean difference, half-width of its 95% confidence interval, Student's t; None for one pair)."""
    from scipy.stats import t

    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None
    return mean, float(t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def paired_p(diffs: list[float]) -> float | None:
    """The two-sided p-value of a paired t-test that the mean difference is zero (None below two pairs;
    1 when every pair is equal)."""
    from scipy.stats import t

    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if statistics.fmean(diffs) == 0 else 0.0
    return float(2 * t.sf(abs(statistics.fmean(diffs)) / (sd / math.sqrt(len(diffs))), len(diffs) - 1))


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values for comparing several arms with one baseline (scipy's
    false_discovery_control does Benjamini-Hochberg, not Holm's family-wise control)."""
    known = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def seeds_needed(diffs: list[float], limit: int = 1000) -> int | None:
    """The fewest paired seeds whose 95% interval would exclude zero for a difference of the observed mean
    and spread (None: it needs more than `limit`, or there is no spread to go by)."""
    from scipy.stats import t

    if len(diffs) < 2 or statistics.fmean(diffs) == 0:
        return None
    mean, sd = abs(statistics.fmean(diffs)), statistics.stdev(diffs)
    if sd == 0:
        return 2
    return next((n for n in range(2, limit + 1) if t.ppf(0.975, n - 1) * sd / math.sqrt(n) < mean), None)


@dataclass
class Arm:
    name: str
    overrides: list[str]
    scores: dict[int, float]  # seed -> the metric, of the runs that completed
    verdicts: list[str]
    gaps: dict[int, float]  # seed -> the clean gap at the epoch the verdict describes
    failed: dict[int, str]  # seed -> how a run that did not complete ended: diverged, failed, interrupted, ...
    classes: int | None = None


def collect(sweep_dir: Path, metric: str) -> list[Arm]:
    """Each arm's results, from the job directories' overrides and summaries."""

    arms: dict[str, Arm] = {}  # in the order the sweep ran them (ablate.arms' order)
    recorded = {p.stem: p for p in (sweep_dir / ARMS_DIR / GROUP).glob("*.yaml")}
    jobs = sorted(
        job_dirs(sweep_dir), key=lambda j: int(j.name.split("_", 1)[0]) if j.name.split("_", 1)[0].isdigit() else 0
    )
    for job in jobs:
        try:
            overrides = read_overrides(job)
        except DamagedFile:
            continue
        name = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"+{GROUP}=")), None)
        seed = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed=")), 0)
        if name is None:
            continue
        if name not in arms:
            text = recorded[name].read_text().splitlines()[1] if name in recorded else ""
            arms[name] = Arm(name, text.removeprefix(ARM_HEADER).split(), {}, [], {}, {})
        arm = arms[name]
        try:
            s = read_json(job / "summary.json")
        except (OSError, ValueError):
            s = {"status": "not run"}
        arm.classes = s.get("num_classes", arm.classes)
        value = s.get(METRICS[metric])
        if s.get("status") != "completed" or not isinstance(value, int | float):
            arm.failed[seed] = "diverged" if s.get("verdict") == "diverged" else str(s.get("status", "not run"))
            arm.verdicts.append(arm.failed[seed])
            continue
        arm.scores[seed] = float(value)
        arm.verdicts.append(str(s.get("verdict", "-")))
        gap = (s.get("evidence") or {}).get("gap")
        if isinstance(gap, int | float):
            arm.gaps[seed] = float(gap)
    order = ["baseline", *(n for n in arms if n not in ("baseline", "all")), "all"]
    return [arms[n] for n in order if n in arms]


def _pct(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}")


def table(arms: list[Arm], metric: str) -> tuple[list[str], list[list[str]], list[dict], list[str]]:
    """(header, rows shown, rows as data, warnings) with the paired differences against the baseline."""
    base = next((a for a in arms if a.name == "baseline"), None)
    header = [
        "arm",
        "overrides",
        "seeds",
        f"{metric} acc (mean ± std)",
        "vs baseline (95% CI)",
        "p",
        "p (Holm)",
        "seeds needed",
        "clean gap",
        "gap vs baseline (95% CI)",
        "verdicts",
    ]
    data = []
    for a in arms:
        values = [a.scores[s] for s in sorted(a.scores)]
        row = {
            "arm": a.name,
            "overrides": " ".join(a.overrides),
            "seeds": len(values),
            "failed": {str(k): v for k, v in sorted(a.failed.items())},
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "diff": None,
            "ci95": None,
            "p": None,
            "seeds_needed": None,
            "gap": statistics.fmean(a.gaps.values()) if a.gaps else None,
            "gap_diff": None,
            "gap_ci95": None,
            "verdicts": ", ".join(f"{v} ×{n}" if n > 1 else v for v, n in Counter(a.verdicts).most_common()),
            "scores": {str(s): v for s, v in sorted(a.scores.items())},
        }
        if base is not None and a is not base:
            paired = [a.scores[s] - base.scores[s] for s in sorted(a.scores) if s in base.scores]
            if paired:
                row["diff"], row["ci95"] = paired_ci(paired)
                row["p"], row["seeds_needed"] = paired_p(paired), seeds_needed(paired)
            gaps = [a.gaps[s] - base.gaps[s] for s in sorted(a.gaps) if s in base.gaps]
            if gaps:
                row["gap_diff"], row["gap_ci95"] = paired_ci(gaps)
        data.append(row)
    for row, adjusted in zip(data, holm([row["p"] for row in data])):
        row["p_holm"] = adjusted
    shown = []
    for a, row in zip(arms, data):
        mark = " †" if a.failed else ""  # over the seeds that completed, fewer than were run
        extra = [o for o in a.overrides if base is None or o not in base.overrides or a is base]
        failed = ", ".join(f"seed {k} {v}" for k, v in sorted(a.failed.items()))
        shown.append(
            [
                a.name,
                " ".join(extra) or "-",
                f"{row['seeds']}" + (f" ({failed})" if failed else ""),
                "-" if row["mean"] is None else f"{_pct(row['mean'])} ± {_pct(row['std'])}{mark}",
                _pct(row["diff"], True) + ("" if row["ci95"] is None else f" ± {_pct(row['ci95'])}") + mark,
                "-" if row["p"] is None else f"{row['p']:.3f}",
                "-" if row["p_holm"] is None else f"{row['p_holm']:.3f}",
                "-"
                if row["seeds_needed"] is None
                else str(row["seeds_needed"])
                if row["p"] is None or row["p"] >= 0.05
                else f"{row['seeds']} (have)",
                "-" if row["gap"] is None else f"{100 * row['gap']:.1f}",
                "-"
                if row["gap_diff"] is None
                else f"{100 * row['gap_diff']:+.1f}"
                + ("" if row["gap_ci95"] is None else f" ± {100 * row['gap_ci95']:.1f}"),
                row["verdicts"] or "-",
            ]
        )
    return header, shown, data, warnings_for(arms, data)


def warnings_for(arms: list[Arm], data: list[dict]) -> list[str]:
    """What makes the table weaker than it looks: few seeds, runs that did not complete, a baseline that
    learned nothing."""
    out = []
    seeds = max((len(a.scores) + len(a.failed) for a in arms), default=0)
    if seeds < 3:
        out.append(
            f"{seeds} seed{'s' * (seeds != 1)}: too few for the intervals to mean much (a 95% interval over "
            "2 pairs is 12.7 times their spread); use --seeds 3 or more"
        )
    for a in arms:
        if a.failed:
            runs = ", ".join(f"seed {k} {v}" for k, v in sorted(a.failed.items()))
            out.append(f"{a.name}: {runs}; its figures (†) are over the {len(a.scores)} seeds that completed")
    base = next((d for d, a in zip(data, arms) if a.name == "baseline"), None)
    classes = next((a.classes for a in arms if a.classes), None)
    if base is not None and base["mean"] is not None and classes:
        chance = 1 / classes
        if base["mean"] < 1.5 * chance:
            out.append(
                f"the baseline is near chance ({100 * base['mean']:.1f}% on {classes} classes, chance "
                f"{100 * chance:.1f}%): it learned nothing, so no arm's difference says what a technique does; "
                "train longer or on more data first"
            )
    return out


def chart(path: Path, data: list[dict], metric: str, title: str) -> None:
    """Bars: each arm's mean with its std over seeds, the seeds as dots, the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regx.plots import save_figure

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(data) + 2), 4.2), dpi=110)
    names = [d["arm"] for d in data]
    means = [100 * (d["mean"] or 0) for d in data]
    ax.bar(
        names,
        means,
        yerr=[100 * d["std"] for d in data],
        capsize=4,
        color=["#888888" if n == "baseline" else "#4c72b0" for n in names],
    )
    for i, d in enumerate(data):
        ax.scatter([i] * len(d["scores"]), [100 * v for v in d["scores"].values()], color="black", s=10, zorder=3)
        if d["diff"] is not None:
            label = f"{100 * d['diff']:+.1f}" + ("" if d["ci95"] is None else f"±{100 * d['ci95']:.1f}")
            ax.annotate(
                label,
                (i, means[i] + 100 * d["std"]),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=8,
            )
    if data and data[0]["arm"] == "baseline" and data[0]["mean"] is not None:
        ax.axhline(100 * data[0]["mean"], color="#888888", linestyle="--", linewidth=1)
    low = min((100 * v for d in data for v in d["scores"].values()), default=0)
    ax.set_ylim(max(0, low - 5), min(100, max(means, default=100) + 5))
    ax.set_ylabel(f"{metric} accuracy (%)")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def report(sweep_dir: Path, metric: str = "test") -> tuple[list[str], list[list[str]], list[Path], list[str]]:
    """Write ablation.csv, ablation.md and ablation.png into the sweep directory; (header, rows, files,
    warnings)."""
    arms = collect(sweep_dir, metric)
    if not arms:
        raise ConfigError(f"{sweep_dir}: no ablation job in it (a directory regx ablate made)")
    header, shown, data, warnings = table(arms, metric)
    buf = io.StringIO()
    fields = [
        "arm",
        "overrides",
        "seeds",
        "failed",
        "mean",
        "std",
        "diff",
        "ci95",
        "p",
        "p_holm",
        "seeds_needed",
        "gap",
        "gap_diff",
        "gap_ci95",
        "verdicts",
    ]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**d, "failed": " ".join(f"{k}:{v}" for k, v in d["failed"].items())} for d in data)
    write_text(sweep_dir / "ablation.csv", buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in shown]
    notes = [
        f"{metric} accuracy in %; differences are paired by seed (same initial weights and batch order, and the "
        "same split unless ablate.vary_split) with their 95% confidence interval (Student's t); p: a paired t-test "
        "against the baseline, Holm-adjusted across the arms beside it; seeds needed: how many seeds a difference of "
        "this size and spread would need for its interval to exclude zero; clean gap: clean train acc - val acc, "
        "in points, at the epoch each verdict describes.",
        *(f"Warning: {w}" for w in warnings),
    ]
    write_text(sweep_dir / "ablation.md", "\n".join(md) + "\n\n" + "\n\n".join(notes) + "\n")
    chart(sweep_dir / "ablation.png", data, metric, f"regx ablate: {sweep_dir.name} ({metric} accuracy, mean ± std)")
    return header, shown, [sweep_dir / "ablation.csv", sweep_dir / "ablation.md", sweep_dir / "ablation.png"], warnings

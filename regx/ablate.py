"""`regx ablate`: which regularization helps this data, and by how much.

One sweep of the baseline, each technique alone (added to the baseline) and all together, over N
seeds paired across arms (seed s of every arm shares its data split, initial weights and batch
order). The arms are a config: `ablate.baseline` and `ablate.arms` (regx/config.py). Each arm
becomes a config option of a group `ablate_arm`, written into the sweep directory, so the sweep is an
ordinary Hydra sweep: parallel with the joblib launcher, resumable with `regx sweep-resume` (or
`regx ablate --resume DIR`). It ends with ablation.csv, ablation.md and ablation.png: mean ± std per
arm, the paired difference against the baseline with a 95% confidence interval (Student's t over
the seeds), and each arm's verdicts.
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
# Student's t, 97.5% quantile, for 1..30 degrees of freedom (scipy.stats.t.ppf(0.975, df)); 1.96 beyond
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.16,
    2.145,
    2.131,
    2.12,
    2.11,
    2.101,
    2.093,
    2.086,
    2.08,
    2.074,
    2.069,
    2.064,
    2.06,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
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
    """(mean difference, half-width of its 95% confidence interval; None for one pair)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None
    t = T975[len(diffs) - 2] if len(diffs) - 1 <= len(T975) else 1.96
    return mean, t * statistics.stdev(diffs) / math.sqrt(len(diffs))


@dataclass
class Arm:
    name: str
    overrides: list[str]
    scores: dict[int, float]  # seed -> the metric
    verdicts: list[str]
    gaps: list[float]
    missing: list[str]  # job directories that did not complete


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
            continue  # counted as missing
        name = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"+{GROUP}=")), None)
        seed = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed=")), 0)
        if name is None:
            continue
        if name not in arms:
            text = recorded[name].read_text().splitlines()[1] if name in recorded else ""
            arms[name] = Arm(name, text.removeprefix("# written by regx ablate: ").split(), {}, [], [], [])
        arm = arms[name]
        try:
            s = read_json(job / "summary.json")
        except (OSError, ValueError):
            s = {}
        value = s.get(METRICS[metric])
        if s.get("status") != "completed" or not isinstance(value, int | float):
            arm.missing.append(job.name)
            continue
        arm.scores[seed] = float(value)
        arm.verdicts.append(str(s.get("verdict", "-")))
        gap = (s.get("evidence") or {}).get("gap")
        if isinstance(gap, int | float):
            arm.gaps.append(float(gap))
    order = ["baseline", *(n for n in arms if n not in ("baseline", "all")), "all"]
    return [arms[n] for n in order if n in arms]


def table(arms: list[Arm], metric: str) -> tuple[list[str], list[list[str]], list[dict]]:
    """(header, rows shown, rows as data) with the paired differences against the baseline."""
    base = next((a for a in arms if a.name == "baseline"), None)
    header = [
        "arm",
        "overrides",
        "seeds",
        f"{metric} acc (mean ± std)",
        "vs baseline (95% CI)",
        "clean gap",
        "verdicts",
    ]
    shown, data = [], []
    for a in arms:
        values = [a.scores[s] for s in sorted(a.scores)]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        diff = half = None
        if base is not None and a is not base:
            paired = [a.scores[s] - base.scores[s] for s in sorted(a.scores) if s in base.scores]
            if paired:
                diff, half = paired_ci(paired)
        verdicts = ", ".join(f"{v} ×{n}" if n > 1 else v for v, n in Counter(a.verdicts).most_common())
        extra = [o for o in a.overrides if base is None or o not in base.overrides or a is base]
        shown.append(
            [
                a.name,
                " ".join(extra) or "-",
                f"{len(values)}" + (f" ({len(a.missing)} missing)" if a.missing else ""),
                "-" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}",
                "-" if diff is None else f"{100 * diff:+.2f}" + ("" if half is None else f" ± {100 * half:.2f}"),
                "-" if not a.gaps else f"{100 * statistics.fmean(a.gaps):.1f}",
                verdicts or "-",
            ]
        )
        data.append(
            {
                "arm": a.name,
                "overrides": " ".join(a.overrides),
                "seeds": len(values),
                "mean": mean,
                "std": std,
                "diff": diff,
                "ci95": half,
                "gap": statistics.fmean(a.gaps) if a.gaps else None,
                "verdicts": verdicts,
                "scores": {str(s): v for s, v in sorted(a.scores.items())},
            }
        )
    return header, shown, data


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


def report(sweep_dir: Path, metric: str = "test") -> tuple[list[str], list[list[str]], list[Path]]:
    """Write ablation.csv, ablation.md and ablation.png into the sweep directory; (header, rows, files)."""
    arms = collect(sweep_dir, metric)
    if not arms:
        raise ConfigError(f"{sweep_dir}: no ablation job in it (a directory regx ablate made)")
    header, shown, data = table(arms, metric)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf,
        fieldnames=["arm", "overrides", "seeds", "mean", "std", "diff", "ci95", "gap", "verdicts"],
        extrasaction="ignore",
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(data)
    write_text(sweep_dir / "ablation.csv", buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in shown]
    write_text(
        sweep_dir / "ablation.md",
        "\n".join(md) + f"\n\n{metric} accuracy in %; the difference is paired by seed "
        "(same split, initial weights and batch order); ± its 95% confidence interval (Student's t).\n",
    )
    chart(sweep_dir / "ablation.png", data, metric, f"regx ablate: {sweep_dir.name} ({metric} accuracy, mean ± std)")
    return header, shown, [sweep_dir / "ablation.csv", sweep_dir / "ablation.md", sweep_dir / "ablation.png"]

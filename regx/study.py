"""Studies over many runs, the one job machinery of `regx ablate`, `regx curve` and `regx path`.

A study is arms x points x seeds, run as ONE ordinary Hydra sweep: each arm (a set of overrides) and
each point (a data size, a regularizer's strength, or both) is an option of a config group written into
the sweep directory, `arms/ablate_arm/NAME.yaml` and `arms/study_point/NAME.yaml`, which the sweep
searches. So a study runs in parallel with the joblib launcher, resumes with `regx sweep-resume`, and
`regx report` reads it. Each option file records the overrides it stands for on its second line; a
sweep directory is checked to hold only files this module wrote, unchanged, before it is resumed
(`check_dir`). `collect` reads every job back as a Run (arm, point, seed, how it ended, its figures).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from regx.config import GROUPS
from regx.diagnose import FEW_STEPS
from regx.files import DamagedFile, job_dirs, read_json, read_overrides, write_text
from regx.stats import holm, paired_ci, paired_p, seeds_needed

ARMS_DIR = "arms"  # in the sweep directory: the searched config folder
ARM, POINT = "ablate_arm", "study_point"  # the two groups
HEADER = "# written by regx ablate: "  # an option file's second line (the words of regx 0.1's ablations, kept)
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # an option's file name
METRICS = {
    "test": "test_acc",
    "best_val": "best_val_acc",
    "final_val": "final_val_acc",
    "test_ece": "test_ece",
    "test_corrupt": "test_corrupt_acc",
}


class Untrusted(ValueError):
    """A sweep directory asks for something regx does not replay from a file; the message names it."""


def option_yaml(overrides: list[str]) -> str:
    """Overrides as a config option of a study's group (global package): group choices as defaults-list
    overrides, values as keys; later overrides win."""
    groups, values = {}, OmegaConf.create()
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+")
        if key in GROUPS:
            groups[key] = value
        else:
            values = OmegaConf.merge(values, OmegaConf.from_dotlist([f"{key}={value}"]))
    lines = ["# @package _global_", HEADER + " ".join(overrides)]
    if groups:
        lines += ["defaults:", *(f"  - override /{g}: {v}" for g, v in groups.items())]
    body = OmegaConf.to_yaml(values) if len(values) else ""
    return "\n".join(lines) + "\n" + body


def write_group(sweep_dir: Path, group: str, options: dict[str, list[str]]) -> Path:
    """Each option's file, arms/GROUP/NAME.yaml; returns the searched folder."""
    for name, overrides in options.items():
        write_text(sweep_dir / ARMS_DIR / group / f"{name}.yaml", option_yaml(overrides))
    return sweep_dir / ARMS_DIR


def recorded(path: Path) -> list[str] | None:
    """The overrides an option file records (its second line), or None when it records none."""
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return lines[1].removeprefix(HEADER).split() if len(lines) > 1 and lines[1].startswith(HEADER) else None


def check_dir(sweep: Path, check_override) -> dict[str, list[str]]:
    """A study's searched folder before it is replayed: every file one this module wrote, unchanged, and
    each recorded override passing `check_override(text, where, {})`. Returns {group: option names}."""
    folder, found = sweep / ARMS_DIR, {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir() and path.parent == folder and path.name in (ARM, POINT):
            continue
        if (
            path.parent.parent != folder
            or path.parent.name not in (ARM, POINT)
            or path.suffix != ".yaml"
            or not NAME.fullmatch(path.stem)
            or path.is_symlink()
        ):
            raise Untrusted(f"{path} is not a file regx writes: the study was not resumed")
        overrides = recorded(path)
        if overrides is None:
            raise Untrusted(f"{path} was changed after regx wrote it: the study was not resumed")
        for o in overrides:
            check_override(o, path, {})
        if path.read_text(errors="replace") != option_yaml(overrides):
            raise Untrusted(f"{path} was changed after regx wrote it: the study was not resumed")
        found.setdefault(path.parent.name, []).append(path.stem)
    return found


def as_plain_run(overrides: list[str], job_dir: Path) -> list[str]:
    """A job's overrides as a plain `regx train` would take them: each study option becomes its own
    recorded overrides, and the study's own keys (ablate.*) go."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in (f"+{ARM}", f"+{POINT}"):
            out += recorded(job_dir.parent / ARMS_DIR / key[1:] / f"{value}.yaml") or []
        elif key.lstrip("+~").split(".", 1)[0] != "ablate":
            out.append(o)
    return out


def sweep_args(
    options: dict[str, list[str]], seeds: int, overrides: list[str], sweep_dir: Path, jobs: int
) -> list[str]:
    """The `regx train` arguments of a study's sweep: every option of each group ({group: names}) for
    every seed 0..seeds-1."""
    args = [
        "-m",
        *(f"+{group}={','.join(names)}" for group, names in options.items()),
        f"seed={','.join(str(s) for s in range(seeds))}",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.searchpath=[file://{(sweep_dir / ARMS_DIR).resolve()}]",
    ]
    if jobs > 1:
        args += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return args


@dataclass
class Run:
    """One job of a study as it ended."""

    arm: str
    point: str | None
    seed: int
    status: str  # completed, diverged, failed, interrupted, running, not run
    value: float | None = None  # the metric compared (test accuracy, ...)
    gap: float | None = None  # the clean gap at the epoch the verdict describes
    verdict: str = "-"
    summary: dict = field(default_factory=dict)


def collect(sweep_dir: Path, metric: str) -> list[Run]:
    """Every job of a study, in the order the sweep ran them."""
    jobs = sorted(
        job_dirs(sweep_dir), key=lambda j: int(j.name.split("_", 1)[0]) if j.name.split("_", 1)[0].isdigit() else 0
    )
    runs = []
    for job in jobs:
        try:
            overrides = read_overrides(job)
        except DamagedFile:
            continue
        arm = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"+{ARM}=")), None)
        point = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"+{POINT}=")), None)
        seed = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed=")), 0)
        if arm is None:
            continue
        try:
            s = read_json(job / "summary.json")
        except (OSError, ValueError):
            s = {"status": "not run"}
        value = s.get(METRICS[metric])
        if s.get("status") != "completed" or not isinstance(value, int | float):
            status = "diverged" if s.get("verdict") == "diverged" else str(s.get("status", "not run"))
            runs.append(Run(arm, point, seed, status, verdict=status, summary=s))
            continue
        gap = (s.get("evidence") or {}).get("gap")
        runs.append(
            Run(
                arm,
                point,
                seed,
                "completed",
                float(value),
                float(gap) if isinstance(gap, int | float) else None,
                str(s.get("verdict", "-")),
                s,
            )
        )
    return runs


def options_of(sweep_dir: Path, group: str) -> dict[str, list[str]]:
    """{option name: its overrides} of a study's group, as written."""
    folder = sweep_dir / ARMS_DIR / group
    return {p.stem: recorded(p) or [] for p in sorted(folder.glob("*.yaml"))}


@dataclass
class Arm:
    """One arm's runs at one point: the metric of each seed that completed, and how the others ended."""

    name: str
    overrides: list[str]
    scores: dict[int, float]  # seed -> the metric, of the runs that completed
    verdicts: list[str]
    gaps: dict[int, float]  # seed -> the clean gap at the epoch the verdict describes
    failed: dict[int, str]  # seed -> how a run that did not complete ended: diverged, failed, interrupted, ...
    classes: int | None = None
    steps: int | None = None  # the fewest optimizer steps a run of the arm took


def arms_at(runs: list[Run], point: str | None, overrides: dict[str, list[str]]) -> list[Arm]:
    """The arms at `point` (None: a study without points), baseline first and all last."""
    arms: dict[str, Arm] = {}
    for r in runs:
        if r.point != point:
            continue
        arm = arms.setdefault(r.arm, Arm(r.arm, overrides.get(r.arm, []), {}, [], {}, {}))
        arm.classes = r.summary.get("num_classes", arm.classes)
        steps = (r.summary.get("evidence") or {}).get("optimizer_steps")
        if steps is not None:
            arm.steps = steps if arm.steps is None else min(arm.steps, steps)
        arm.verdicts.append(r.verdict)
        if r.status != "completed":
            arm.failed[r.seed] = r.status
            continue
        arm.scores[r.seed] = r.value
        if r.gap is not None:
            arm.gaps[r.seed] = r.gap
    order = ["baseline", *(n for n in arms if n not in ("baseline", "all")), "all"]
    return [arms[n] for n in order if n in arms]


def compare(arms: list[Arm]) -> list[dict]:
    """Each arm's figures, and against the baseline (when there is one) the difference paired by seed
    with its interval, p-value (Holm-adjusted across the arms too) and the seeds it would need, and the
    clean gap's paired difference."""
    base = next((a for a in arms if a.name == "baseline"), None)
    data = []
    for a in arms:
        values = [a.scores[s] for s in sorted(a.scores)]
        gaps = list(a.gaps.values())
        row = {
            "arm": a.name,
            "overrides": " ".join(a.overrides),
            "seeds": len(values),
            "failed": {str(k): v for k, v in sorted(a.failed.items())},
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "ci95_mean": paired_ci(values)[1] if values else None,
            "diff": None,
            "ci95": None,
            "p": None,
            "seeds_needed": None,
            "gap": statistics.fmean(gaps) if gaps else None,
            "gap_ci95_mean": paired_ci(gaps)[1] if gaps else None,
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
            gap_pairs = [a.gaps[s] - base.gaps[s] for s in sorted(a.gaps) if s in base.gaps]
            if gap_pairs:
                row["gap_diff"], row["gap_ci95"] = paired_ci(gap_pairs)
        data.append(row)
    for row, adjusted in zip(data, holm([row["p"] for row in data])):
        row["p_holm"] = adjusted
    return data


def warnings_for(arms: list[Arm], data: list[dict], where: str = "") -> list[str]:
    """What makes a comparison weaker than it looks: few seeds, runs that did not complete, a baseline
    that learned nothing. `where`: the point they are at, said first."""
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
    steps = min((a.steps for a in arms if a.steps is not None), default=None)
    if steps is not None and steps < FEW_STEPS:
        out.append(
            f"runs of only {steps} optimizer steps: too few to judge a regularizer by (under {FEW_STEPS}, a "
            "technique has not had the time to act); train longer, or in smaller batches"
        )
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
    return [f"{where}: {w}" if where else w for w in out]

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
from pathlib import Path

from regx import study
from regx.config import ConfigError
from regx.files import published_together, write_text
from regx.plots import arms_chart

METRICS = study.METRICS


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
        arms["all"] = [*baseline, *_together([o for v in techniques.values() for o in v])]
    return arms


def _together(overrides: list[str]) -> list[str]:
    """The techniques' overrides as one arm: augmentations that several set are merged into one list
    (`aug=[crop_flip,augmix]`, which composes them), where one after another would keep only the last."""
    augs = [o.split("=", 1)[1] for o in overrides if o.startswith("aug=")]
    if len(augs) < 2:
        return overrides
    merged = "aug=[" + ",".join(a.strip("[]") for a in augs) + "]"
    first = next(i for i, o in enumerate(overrides) if o.startswith("aug="))
    rest = [o for o in overrides if not o.startswith("aug=")]
    return [*rest[:first], merged, *rest[first:]]


def varied_keys(arms: dict[str, list[str]]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for overrides in arms.values() for o in overrides}


def _pct(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}")


def table(arms: list[study.Arm], metric: str) -> tuple[list[str], list[list[str]], list[dict], list[str]]:
    """(header, rows shown, rows as data, warnings) with the paired differences against the baseline."""
    header = [
        "arm",
        "overrides",
        "seeds",
        f"{metric.replace('_', ' ')} (mean ± std)" if metric == "test_ece" else f"{metric} acc (mean ± std)",
        "vs baseline (95% CI)",
        "p",
        "p (Holm)",
        "seeds needed",
        "clean gap",
        "gap vs baseline (95% CI)",
        "verdicts",
    ]
    data = study.compare(arms)
    base = next((a for a in arms if a.name == "baseline"), None)
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
                "-" if row["seeds_needed"] is None else str(row["seeds_needed"]),
                "-" if row["gap"] is None else f"{100 * row['gap']:.1f}",
                "-"
                if row["gap_diff"] is None
                else f"{100 * row['gap_diff']:+.1f}"
                + ("" if row["gap_ci95"] is None else f" ± {100 * row['gap_ci95']:.1f}"),
                row["verdicts"] or "-",
            ]
        )
    return header, shown, data, study.warnings_for(arms, data)


@published_together()  # the three files, or none of them
def report(sweep_dir: Path, metric: str = "test") -> tuple[list[str], list[list[str]], list[Path], list[str]]:
    """Write ablation.csv, ablation.md and ablation.png into the sweep directory; (header, rows, files,
    warnings)."""
    arms = study.arms_at(study.collect(sweep_dir, metric), None, study.options_of(sweep_dir, study.ARM))
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
    writer.writerows(  # the overrides as ablation.md spells them: the baseline's, and each arm's own on top
        {**d, "overrides": row[1], "failed": " ".join(f"{k}:{v}" for k, v in d["failed"].items())}
        for d, row in zip(data, shown)
    )
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
    arms_chart(sweep_dir / "ablation.png", data, metric, f"regx ablate: {sweep_dir.name} ({metric} accuracy)")
    return header, shown, [sweep_dir / "ablation.csv", sweep_dir / "ablation.md", sweep_dir / "ablation.png"], warnings

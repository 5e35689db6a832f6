"""`regx report`: many runs and sweeps as one table, one plot and three files (report.csv/md/png)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from regx.files import pid_alive, published_together
from regx.plots import save_figure

COLUMNS = (
    "status",
    "best_val",
    "final_val",
    "test",
    "ece",
    "gap",
    "verdict",
    "done",
    "wall_s",
)  # done: epochs done/planned
METRICS = ("best_val", "final_val", "test", "ece", "gap", "wall_s")  # numeric: averaged by --group-by
HIGHER_IS_BETTER = {"best_val", "final_val", "test"}


class ReportError(ValueError):
    """Bad input to `regx report`: one line naming the path or key."""


def _is_run(path: Path) -> bool:
    return any((path / f).is_file() for f in ("summary.json", "config.yaml", ".hydra/overrides.yaml"))


def _natural(path: Path):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories named by `patterns`: runs, sweep directories (searched recursively) or globs."""
    import glob

    runs: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ReportError(f"{pattern}: matches nothing")
        for m in map(Path, matches):
            if not m.is_dir():
                raise ReportError(f"{m}: no such directory")
            if _is_run(m):
                runs.append(m)
                continue
            found = {
                p.parent for name in ("summary.json", "config.yaml") for p in m.rglob(name) if ".hydra" not in p.parts
            }
            found |= {p.parent.parent for p in m.rglob(".hydra/overrides.yaml")}
            if not found:
                raise ReportError(f"{m}: no regx runs in it (a run directory has summary.json or config.yaml)")
            runs.extend(sorted(found, key=_natural))
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    return unique


def run_record(run: Path) -> dict:
    """What one run directory says: overrides, resolved config, summary and per-epoch metrics."""
    import platform
    import re

    from omegaconf import OmegaConf

    from regx.files import read_config, read_metrics, read_overrides, read_summary

    summary = read_summary(run)  # DamagedFile: build() skips the run with a warning
    cfg = read_config(run) if (run / "config.yaml").is_file() else OmegaConf.create()
    overrides = read_overrides(run)
    metrics = []
    if (run / "metrics.csv").is_file():
        try:
            metrics = read_metrics(run / "metrics.csv")
        except (OSError, ValueError):
            metrics = []
    status = summary.get("status", "not started")
    if (
        status == "running"
        and summary.get("host") == platform.node()
        and summary.get("pid")
        and not pid_alive(summary["pid"])
    ):
        status = "killed"  # its process is gone without saying so (SIGKILL, a crash, the machine)
    epochs = OmegaConf.select(cfg, "epochs")

    def num(key):
        v = summary.get(key)
        return float(v) if isinstance(v, int | float) else None

    job = re.match(r"(\d+)_", run.name)  # a sweep job: its overrides are columns already
    return {
        "run": f"#{job.group(1)}" if job else run.name,
        "path": str(run),
        "overrides": overrides,
        "config": cfg,
        "metrics": metrics,
        "status": status,
        "error": summary.get("error"),
        "best_val": num("best_val_acc"),
        "final_val": num("final_val_acc"),
        "test": num("test_acc"),
        "ece": num("test_ece"),  # the test split's expected calibration error
        "gap": _gap(summary, metrics),
        "verdict": summary.get("verdict") or "-",
        "evidence": summary.get("evidence") or {},  # the verdict's numbers: report.png's bias-variance map
        "done": f"{summary.get('epochs_done', len(metrics))}/{epochs if epochs is not None else '?'}",
        "wall_s": num("wall_s"),
    }


def _gap(summary: dict, metrics: list[dict]) -> float | None:
    """The clean gap the verdict describes (best.pt's epoch, and its averaged weights where they were
    selected), as regx ablate, curve and path tabulate it; a run with no verdict yet: its last epoch's."""
    gap = (summary.get("evidence") or {}).get("gap")
    if isinstance(gap, int | float):
        return float(gap)
    return float(metrics[-1]["gap"]) if metrics and metrics[-1].get("gap") not in (None, "") else None


def _key_of(override: str) -> str | None:
    if "=" not in override:
        return None
    key = override.split("=", 1)[0].lstrip("+~")
    return None if key.startswith("hydra.") or key == "hydra" else key


def _value(record: dict, key: str) -> str:
    from omegaconf import OmegaConf

    from regx.config import GROUPS

    for o in record["overrides"]:
        if _key_of(o) == key:
            return o.split("=", 1)[1]
    cfg = record["config"]
    value = OmegaConf.select(cfg, f"{key}.name" if key in GROUPS else key, default=None)
    return "-" if value is None else str(value)


def varying_keys(records: list[dict]) -> list[str]:
    """Every config value that differs between the runs, wherever it was set (the command line, an
    experiment file, a resume): overridden keys first, in first-seen order, then groups, then other
    keys. A key inside a group whose option differs, and the derived `name`, are that group's."""
    from omegaconf import OmegaConf

    from regx.config import GROUPS, flat_keys

    overridden = list(dict.fromkeys(k for r in records for o in r["overrides"] if (k := _key_of(o))))
    groups = [g for g in GROUPS if any(OmegaConf.select(r["config"], f"{g}.name") is not None for r in records)]
    leaves = dict.fromkeys(
        k for r in records for k in flat_keys(r["config"]) if not OmegaConf.is_dict(OmegaConf.select(r["config"], k))
    )
    found = [k for k in [*groups, *leaves] if k not in overridden and k != "name"]
    varying = [k for k in [*overridden, *found] if len({_value(r, k) for r in records}) > 1]
    changed_groups = [g for g in varying if g in GROUPS]
    return [k for k in varying if k in overridden or not any(k.startswith(g + ".") for g in changed_groups)]


def sort_records(records: list[dict], column: str) -> list[dict]:
    if column in METRICS:
        best_first = column in HIGHER_IS_BETTER
        present = [r for r in records if r[column] is not None]
        return sorted(present, key=lambda r: r[column], reverse=best_first) + [r for r in records if r[column] is None]
    return sorted(records, key=lambda r: _natural(Path(str(r.get(column, _value(r, column))))))


def group_records(records: list[dict], keys: list[str]) -> list[dict]:
    """One row per distinct value of `keys`: mean and std of each metric over its completed runs."""
    import statistics
    from collections import Counter

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(_value(r, k) for k in keys), []).append(r)
    rows = []
    for values, members in groups.items():
        done = [r for r in members if r["status"] == "completed"]
        row = dict(zip(keys, values))
        row["runs"] = f"{len(done)}/{len(members)} completed"
        row["n"] = len(done)
        for m in METRICS:
            xs = [r[m] for r in done if r[m] is not None]
            row[f"{m}_mean"] = statistics.fmean(xs) if xs else None
            row[f"{m}_std"] = statistics.stdev(xs) if len(xs) > 1 else (0.0 if xs else None)
        verdicts = Counter(r["verdict"] for r in done)
        row["verdict"] = ", ".join(f"{v} x{c}" for v, c in verdicts.most_common()) or "-"
        row["members"] = members
        rows.append(row)
    return rows


def _fmt(column: str, value) -> str:
    if value is None:
        return "-"
    if column in ("best_val", "final_val", "test", "ece"):
        return f"{100 * value:.2f}"
    if column == "gap":
        return f"{100 * value:+.1f}"
    if column == "wall_s":
        return f"{value:.0f}"
    return str(value)


def report_table(records: list[dict], keys: list[str], group_by: list[str] | None):
    """(header, rows of strings, rows of raw values for the CSV)."""
    if group_by:
        header = [*group_by, "runs", *METRICS, "verdict"]
        shown, raw = [], []
        for g in group_records(records, group_by):
            cells = [g[k] for k in group_by] + [g["runs"]]
            for m in METRICS:
                mean, std = g[f"{m}_mean"], g[f"{m}_std"]
                cells.append("-" if mean is None else f"{_fmt(m, mean)} ± {_fmt(m, std).lstrip('+')}")
            shown.append([*cells, g["verdict"]])
            raw.append(
                {
                    **{k: g[k] for k in group_by},
                    "completed": g["n"],
                    "runs": len(g["members"]),
                    **{f"{m}_{s}": g[f"{m}_{s}"] for m in METRICS for s in ("mean", "std")},
                    "verdict": g["verdict"],
                }
            )
        return header, shown, raw
    header = ["run", *keys, *COLUMNS]
    shown = [[r["run"], *[_value(r, k) for k in keys], *[_fmt(c, r[c]) for c in COLUMNS]] for r in records]
    raw = [
        {
            "run": r["run"],
            **{k: _value(r, k) for k in keys},
            **{c: r[c] for c in COLUMNS},
            "error": r["error"],
            "path": r["path"],
        }
        for r in records
    ]
    return header, shown, raw


@published_together()  # the three files, or none of them
def write_report(
    out: Path, records: list[dict], keys: list[str], metric: str, group_by: list[str] | None, title: str
) -> list[Path]:
    """report.csv (raw numbers), report.md (the table as shown) and report.png: every run; with
    `group_by` also report_by_<keys>.csv/.md/.png: one row per group. Nothing overwrites the other."""
    runs_title = title.split(", grouped by")[0]
    files = _write_tables(out, "report", records, keys, None, metric, runs_title)
    if group_by:
        files += _write_tables(out, "report_by_" + "_".join(group_by), records, keys, group_by, metric, title)
    return files


def _write_tables(
    out: Path, stem: str, records: list[dict], keys: list[str], group_by: list[str] | None, metric: str, title: str
) -> list[Path]:
    import csv
    import io

    from regx.files import write_text

    header, shown, raw = report_table(records, keys, group_by)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(raw[0]) if raw else header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(raw)
    write_text(out / f"{stem}.csv", buf.getvalue())
    esc = [[str(c).replace("|", "\\|") for c in row] for row in [header, *shown]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in esc[1:]
    ]
    text = f"# {title}\n\n" + "\n".join(lines) + "\n"
    failed = [r for r in records if r["status"] != "completed"]
    if failed:
        text += "\nNot completed:\n\n" + "".join(
            f"- {r['run']}: {r['status']}{': ' + r['error'] if r['error'] else ''}\n" for r in failed
        )
    write_text(out / f"{stem}.md", text)
    report_plot(out / f"{stem}.png", records, keys, metric, group_by, title)
    return [out / f"{stem}.csv", out / f"{stem}.md", out / f"{stem}.png"]


def report_plot(
    path: Path, records: list[dict], keys: list[str], metric: str, group_by: list[str] | None, title: str
) -> Path:
    """Validation accuracy of every run overlaid (one colour per group), each run on the bias-variance map,
    and a bar chart of `metric`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(r):
        return ",".join(f"{k}={_value(r, k)}" for k in (group_by or keys)) or r["run"]

    fig, (ax_c, ax_f, ax_b) = plt.subplots(1, 3, figsize=(18, 4.8), dpi=100, width_ratios=(5, 4, 5))
    colours = _curves_panel(ax_c, records, label, bool(group_by))
    _fit_panel(ax_f, records, label, colours)
    if group_by:
        groups = group_records(records, group_by)
        names = [",".join(f"{k}={g[k]}" for k in group_by) for g in groups]
        means = [g[f"{metric}_mean"] for g in groups]
        stds = [g[f"{metric}_std"] or 0 for g in groups]
    else:
        names = [label(r) if keys else r["run"] for r in records]
        means = [r[metric] for r in records]
        stds = [0] * len(records)
    scale = 100 if metric in ("best_val", "final_val", "test", "ece", "gap") else 1
    bars = ax_b.barh(
        range(len(names)),
        [(m * scale) if m is not None else 0 for m in means],
        xerr=[s * scale for s in stds] if group_by else None,
        color=[colours.get(n, "C0") for n in names] if group_by or keys else "C0",
        alpha=0.8,
        capsize=3,
    )
    for bar, m, sd in zip(bars, means, stds):
        ax_b.text(
            bar.get_width() + (sd * scale if group_by else 0),
            bar.get_y() + bar.get_height() / 2,
            " -" if m is None else f" {m * scale:.2f}",
            va="center",
            fontsize=7,
        )
    ax_b.set_yticks(range(len(names)), names, fontsize=7)
    ax_b.invert_yaxis()
    ax_b.set_xlabel(f"{metric}{' (%)' if scale == 100 else ''}" + (" mean ± std" if group_by else ""))
    ax_b.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _curves_panel(ax, records: list[dict], label, grouped: bool) -> dict[str, str]:
    """Each run's validation accuracy by epoch, one colour per label (grouped: each run thin, its group's
    mean drawn over them); the colours, by label, for the bars beside."""
    from matplotlib.ticker import MaxNLocator

    colours, curves = {}, {}
    for r in records:
        if not r["metrics"]:
            continue
        lab = label(r)
        first = lab not in colours
        colour = colours.setdefault(lab, f"C{len(colours) % 10}")
        epochs, accs = [int(m["epoch"]) for m in r["metrics"]], [100 * float(m["val_acc"]) for m in r["metrics"]]
        curves.setdefault(lab, []).append(dict(zip(epochs, accs)))
        ax.plot(
            epochs,
            accs,
            color=colour,
            lw=0.9 if grouped else 1.4,
            alpha=0.35 if grouped else 0.85,
            label=lab if first and not grouped else None,
            ls="-" if r["status"] == "completed" else "--",
        )
    for lab, runs in curves.items() if grouped else ():
        shared = sorted(set.intersection(*(set(c) for c in runs)))
        ax.plot(
            shared,
            [sum(c[e] for c in runs) / len(runs) for e in shared],
            color=colours[lab],
            lw=2.2,
            label=f"{lab} (mean of {len(runs)})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(
        "validation accuracy (dashed: not completed"
        + ("; thin: each run, thick: the group's mean)" if grouped else ")"),
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    if colours:
        ax.legend(fontsize=7, loc="best", framealpha=0.7)
    return colours


VERDICT_MARKERS = {"good_fit": "o", "overfitting": "^", "underfitting": "v", "both": "D"}


def _fit_panel(ax, records: list[dict], label, colours: dict[str, str]) -> None:
    """Each judged run at its clean gap (x) and validation accuracy (y), where its verdict was read, a
    marker per verdict; the verdict's two lines: right of the variance line the gap is high variance
    (diagnose.variance_gap), below the bias line the clean training accuracy (val + gap) misses the target."""
    import numpy as np

    from regx.diagnose import variance_gap

    judged = [r for r in records if {"gap", "val_acc", "target"} <= set(r["evidence"])]
    for r in judged:
        e = r["evidence"]
        ax.scatter(
            100 * e["gap"],
            100 * e["val_acc"],
            marker=VERDICT_MARKERS.get(r["verdict"], "x"),
            color=colours.get(label(r), "C0"),
            s=36,
            alpha=0.85,
            edgecolors="black",
            linewidths=0.4,
        )
    if not judged:
        ax.text(0.5, 0.5, "no run has a verdict yet", ha="center", va="center", transform=ax.transAxes)
    ax.margins(0.15)
    y0, y1 = ax.get_ylim()
    vals = np.linspace(max(y0, 0), min(y1, 100), 100)
    line = [100 * variance_gap(v / 100) for v in vals]
    x0, x1 = min(ax.get_xlim()[0], 0), max(ax.get_xlim()[1], 1.15 * max(line))  # the variance line in view
    ax.plot(line, vals, color="#aa3333", lw=1, ls="--", label="variance line")
    for target in sorted({r["evidence"]["target"] for r in judged}):
        xs = np.linspace(x0, x1, 2)
        above = 100 * target - x1 > y1  # every run here misses the target: the line is out of view
        ax.plot(
            xs,
            100 * target - xs,
            color="#3355aa",
            lw=1,
            ls=":",
            label=f"bias line (target {100 * target:g}%)" + (": above, out of view" if above else ""),
        )
    for verdict, marker in VERDICT_MARKERS.items():
        if any(r["verdict"] == verdict for r in judged):
            ax.scatter([], [], marker=marker, color="#888888", label=verdict.replace("_", " "))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("clean gap: clean train - val accuracy (points)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("bias and variance (right of the dashed line: overfits; under the dotted: underfits)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.7)


@dataclass
class Report:
    """What `regx report` shows and where it wrote it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str
    notes: list[str]  # lines printed under the table
    files: list[Path]
    out: Path
    skipped: list[str]  # runs left out, each with why (a damaged summary.json or config.yaml)


def build(
    paths: list[str],
    *,
    sort: str | None = None,
    group_by: list[str] | None = None,
    metric: str = "best_val",
    out: str | Path | None = None,
) -> Report:
    """Find the runs under `paths` (run or sweep directories, globs), tabulate them, and write
    report.csv, report.md and report.png into `out` (default: the sweep directory, when all runs
    are of one sweep, else outputs/reports/<stamp>). ReportError on bad input."""
    if not paths:
        raise ReportError("name at least one run or sweep directory")
    from regx.files import DamagedFile

    records, skipped = [], []
    for run in find_runs(paths):
        try:
            records.append(run_record(run))
        except DamagedFile as exc:
            skipped.append(str(exc))
    if not records:
        raise ReportError(f"no readable run: {'; '.join(skipped)}")
    keys = varying_keys(records)
    if metric not in METRICS:
        raise ReportError(f"--metric {metric}: must be one of {', '.join(METRICS)}")
    sortable = ["run", *COLUMNS, *keys]
    if sort is not None and sort not in sortable:
        raise ReportError(f"--sort {sort}: must be one of {', '.join(sortable)}")
    for key in group_by or []:
        if all(_value(r, key) == "-" for r in records):
            raise ReportError(f"--group-by {key}: no run has this key (varying keys: {', '.join(keys) or 'none'})")
    if sort:
        records = sort_records(records, sort)
    out = Path(out) if out is not None else _default_out(paths, records)
    from collections import Counter

    ended = ", ".join(f"{n} {status}" for status, n in Counter(r["status"] for r in records).most_common())
    source = Path(paths[0]).name or paths[0] if len(paths) == 1 else f"{len(paths)} paths"
    title = f"{len(records)} run{'s' * (len(records) != 1)} of {source} ({ended})" + (
        f", grouped by {','.join(group_by)}" if group_by else ""
    )
    header, shown, _ = report_table(records, keys, group_by)
    notes = []
    if group_by:
        averaged = [k for k in keys if k not in group_by]
        notes.append(f"averaged over: {', '.join(averaged) or 'nothing (each group is one run)'}")
    for r in records:  # the path alone on its line (it is copied), the error under it
        if r["status"] != "completed":
            notes += [f"{r['status']}: {r['path']}", *([f"  {r['error']}"] if r["error"] else [])]
    files = write_report(out, records, keys, metric, group_by, title)
    caption = "accuracies and gap in %; " + (
        "mean ± sample std over each group's completed runs"
        if group_by
        else "gap: clean train minus val at the verdict's epoch"
    )
    return Report(title, header, shown, caption, notes, files, out, skipped)


def _default_out(paths: list[str], records: list[dict]) -> Path:
    from datetime import datetime

    if len(paths) == 1 and Path(paths[0]).is_dir() and not _is_run(Path(paths[0])):
        return Path(paths[0])
    parents = {Path(r["path"]).parent for r in records}
    if len(parents) == 1 and (next(iter(parents)) / "multirun.yaml").is_file():
        return next(iter(parents))
    return Path("outputs") / "reports" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")

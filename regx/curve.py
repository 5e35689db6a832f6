"""`regx curve` and `regx path`: the course's lesson as two curves, each a study (regx/study.py).

curve  test accuracy and the clean gap against the number of training images (log x), one line per arm
       (regx ablate's arms: by default the baseline and the course's techniques together), with 95% bands
       over seeds, and each arm's difference from the baseline at every size with its paired interval: where
       a technique stops helping. Each size trains for an equal number of optimizer steps by default (its
       epochs derived from its size and stated), or for equal epochs (budget=epochs).
path   a regularizer's strength (any numeric key) against the clean training, validation and test accuracy
       and the gap, with bands over seeds, each point's verdict, and the best strength marked with its
       interval: the bias-variance U-curve. With several sizes, one path per size in one figure.

The study's plan (kind, sizes, key, values, epochs per point) is written to study.json in its directory;
the report reads it back, checked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from regx import study
from regx.config import ConfigError
from regx.files import published_together, write_text
from regx.stats import mean_ci

PLAN = "study.json"


@dataclass
class Plan:
    """What a study measures: its kind, the points (name -> their overrides and coordinates), the arms."""

    kind: str  # curve or path
    metric: str
    key: str | None  # path: the swept key
    log_x: bool  # the strength axis (path) on a log scale
    budget: str  # steps or epochs
    steps: int | None  # the optimizer steps of every run (budget=steps)
    points: dict[str, dict]  # name -> {"size": int | None, "value": float | None, "epochs": int, "overrides": [...]}


def parse_values(spec: str) -> tuple[list[float], bool]:
    """`V1,V2,...` or a log range `LO:HI:N` (N values, evenly spaced in log and rounded to 3 significant
    digits, the strengths a person would type: 0.00949, not 0.00948683): (values, whether log-spaced)."""
    try:
        if ":" in spec:
            lo, hi, n = spec.split(":")
            lo, hi, n = float(lo), float(hi), int(n)
            if lo <= 0 or hi <= lo or n < 2:
                raise ValueError
            values = [float(f"{lo * (hi / lo) ** (i / (n - 1)):.3g}") for i in range(n)]
            if len(set(values)) < n:
                raise ConfigError(f"'{spec}': {n} values between {lo:g} and {hi:g} are too close to tell apart")
            return values, True
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise ConfigError(
            f"'{spec}': the values are V1,V2,... or a log range LO:HI:N (0 < LO < HI, N >= 2), e.g. wd=1e-6:1e-2:9"
        ) from None
    if len(values) < 2:
        raise ConfigError(f"'{spec}': a path needs at least two values")
    positive = all(v > 0 for v in values)
    return values, positive and max(values) / min(values) >= 100


def parse_sizes(spec: str | None) -> list[int]:
    try:
        sizes = sorted({int(s) for s in spec.split(",")}) if spec else []
    except ValueError:
        raise ConfigError(f"--sizes {spec}: whole numbers of training images, e.g. 250,500,1000") from None
    if any(s < 1 for s in sizes):
        raise ConfigError(f"--sizes {spec}: each size must be at least 1")
    return sizes


def epochs_for(size: int, batch: int, steps: int) -> int:
    """The epochs that give about `steps` optimizer steps on `size` images in batches of `batch`."""
    per_epoch = max(1, math.ceil(size / batch))
    return max(1, round(steps / per_epoch))


def default_steps(cfg, sizes: list[int]) -> int:
    """The run's epochs at the sizes' geometric mean: the budget every size then gets."""
    middle = math.exp(statistics.fmean(math.log(s) for s in sizes))
    return cfg.epochs * max(1, math.ceil(middle / cfg.batch_size))


def plan_points(
    cfg, *, sizes: list[int], key: str | None, values: list[float] | None, budget: str, steps: int | None
) -> dict[str, dict]:
    """The points of a curve (sizes) or a path (values, at each size if any): their names and overrides."""
    out = {}
    for i, size in enumerate(sizes or [None]):
        epochs = cfg.epochs if size is None or budget == "epochs" else epochs_for(size, cfg.batch_size, steps)
        base = [f"data.train_size={size}"] if size is not None else []
        base += [f"epochs={epochs}"] if size is not None and budget == "steps" else []
        for j, value in enumerate(values or [None]):
            name = "_".join(p for p in (f"n{size}" if size else "", f"v{j}" if value is not None else "") if p)
            out[name or f"p{i}"] = {
                "size": size,
                "value": value,
                "epochs": epochs,
                "overrides": [*base, *([f"{key}={value:g}"] if value is not None else [])],
            }
    return out


def write_plan(sweep_dir: Path, plan: Plan) -> None:
    write_text(sweep_dir / PLAN, json.dumps(asdict(plan), indent=1) + "\n")


def read_plan(sweep_dir: Path) -> Plan:
    """study.json, checked against the study's own point files (what a sweep directory says is input)."""
    path = sweep_dir / PLAN
    try:
        plan = Plan(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a regx curve or path study ({' '.join(str(exc).split())[:120]})") from None
    written = study.options_of(sweep_dir, study.POINT)
    if plan.kind not in ("curve", "path") or {n: p["overrides"] for n, p in plan.points.items()} != written:
        raise ConfigError(f"{path} does not match the study's points ({sweep_dir / study.ARMS_DIR / study.POINT})")
    return plan


CSV_FIELDS = [  # curve.csv's and path.csv's columns
    "arm",
    "size",
    "value",
    "epochs",
    "seeds",
    "mean",
    "ci95_mean",
    "diff",
    "ci95",
    "p",
    "p_holm",
    "gap",
    "gap_ci95_mean",
    "clean_train",
    "clean_train_ci95",
    "val",
    "val_ci95",
    "verdicts",
]


@published_together()  # the three files, or none of them
def report(sweep_dir: Path) -> tuple[list[str], list[list[str]], list[Path], list[str], list[str]]:
    """Write curve.* or path.* (csv, md, png) into the study's directory; (header, rows, files, what the
    figures say in words, warnings)."""
    from regx.plots import curve_chart, path_chart

    plan = read_plan(sweep_dir)
    runs = study.collect(sweep_dir, plan.metric)
    if not runs:
        raise ConfigError(f"{sweep_dir}: no job of the study has run")
    rows, warnings = _rows(plan, runs, study.options_of(sweep_dir, study.ARM))
    stem = plan.kind
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / f"{stem}.csv", buf.getvalue())
    header, shown, notes = (_curve_table if plan.kind == "curve" else _path_table)(rows, plan)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in shown]
    write_text(
        sweep_dir / f"{stem}.md",
        "\n".join(md) + "\n\n" + "\n\n".join([*notes, *(f"Warning: {w}" for w in warnings)]) + "\n",
    )
    title = f"regx {plan.kind}: {sweep_dir.name}"
    if plan.kind == "curve":
        curve_chart(sweep_dir / f"{stem}.png", rows, plan.metric, title)
    else:
        path_chart(sweep_dir / f"{stem}.png", rows, plan.key, plan.log_x, plan.metric, title, best=_best(rows))
    return header, shown, [sweep_dir / f"{stem}.{ext}" for ext in ("csv", "md", "png")], notes, warnings


def _rows(plan: Plan, runs, arms) -> tuple[list[dict], list[str]]:
    """A row per point and arm (its figures and its statistics against the baseline), and the warnings
    of every point, each said once."""
    rows, warnings = [], []
    for name, point in plan.points.items():
        at = study.arms_at(runs, name, arms)
        data = study.compare(at)
        where = f"{point['size']} images" if point["size"] else ""
        if point["value"] is not None:
            where = f"{plan.key}={point['value']:g}" + (f" at {where}" if where else "")
        for w in study.warnings_for(at, data, where):
            w = w.split(": ", 1)[1] if "too few for the intervals" in w else w  # said once, not per point
            warnings += [] if w in warnings else [w]
        for a, d in zip(at, data):
            rows.append(
                {
                    **_figures(runs, name, a.name),
                    **d,
                    "point": name,
                    "size": point["size"],
                    "value": point["value"],
                    "epochs": point["epochs"],
                }
            )
    return rows, warnings


def _figures(runs: list[study.Run], point: str, arm: str) -> dict:
    """The clean training and validation accuracy of an arm's completed runs at a point (mean, interval)."""
    mine = [r for r in runs if r.point == point and r.arm == arm]
    done = [r for r in mine if r.status == "completed"]
    clean = [r.summary.get("evidence", {}).get("train_acc") for r in done]
    val = [r.summary.get("evidence", {}).get("val_acc") for r in done]
    c, ch = mean_ci([v for v in clean if v is not None])
    v, vh = mean_ci([v for v in val if v is not None])
    verdict = Counter(r.verdict for r in mine).most_common(1)[0][0] if mine else "-"
    return {"clean_train": c, "clean_train_ci95": ch, "val": v, "val_ci95": vh, "verdict": verdict}


def _pm(mean, half, scale=100.0, signed=False) -> str:
    if mean is None:
        return "-"
    text = f"{scale * mean:+.2f}" if signed else f"{scale * mean:.2f}"
    return text + (f" ± {scale * half:.2f}" if half is not None else "")


def _curve_table(rows: list[dict], plan: Plan):
    header = [
        "arm",
        "images",
        "epochs",
        "seeds",
        f"{plan.metric} acc (95% CI)",
        "clean gap (95% CI)",
        "vs baseline (95% CI)",
        "p (Holm)",
        "verdicts",
    ]
    shown = [
        [
            r["arm"],
            f"{r['size']:,}",
            str(r["epochs"]),
            str(r["seeds"]),
            _pm(r["mean"], r["ci95_mean"]),
            _pm(r["gap"], r["gap_ci95_mean"]),
            _pm(r["diff"], r["ci95"], signed=True),
            "-" if r["p_holm"] is None else f"{r['p_holm']:.3f}",
            r["verdicts"] or "-",
        ]
        for r in rows
    ]
    notes = [
        f"{plan.metric} accuracy and gaps in %, 95% intervals over seeds (Student's t); the difference from the "
        "baseline is paired by seed, its p Holm-adjusted across the arms at each size; "
        + (
            f"every run had about the same number of optimizer steps, {plan.steps}, in the epochs shown"
            if plan.budget == "steps"
            else "every run had the same epochs"
        ),
        *_where_it_stops(rows),
    ]
    return header, shown, notes


def _where_it_stops(rows: list[dict]) -> list[str]:
    """In words, for each arm: the sizes at which it helps, and the first at which its interval contains zero
    or turns negative."""
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != "baseline"):
        mine = sorted((r for r in rows if r["arm"] == arm and r["diff"] is not None), key=lambda r: r["size"])
        if not mine:
            continue
        helps = [r["diff"] - (r["ci95"] or 0) > 0 for r in mine]
        if all(helps):
            out.append(f"{arm} helps at every size measured, {mine[0]['size']:,} to {mine[-1]['size']:,} images.")
            continue
        stop = helps.index(False)
        again = [r for r, h in zip(mine[stop:], helps[stop:]) if h]  # past the first size where it does not
        also = (
            " It helps again at "
            + ", ".join(f"{r['size']:,} ({_pm(r['diff'], r['ci95'], signed=True)})" for r in again)
            + "."
            if again
            else ""
        )
        if stop == 0:
            out.append(
                f"{arm} does not help at {mine[0]['size']:,} images, the smallest size: its interval there "
                f"contains zero or lies below it ({_pm(mine[0]['diff'], mine[0]['ci95'], signed=True)} points).{also}"
            )
        else:
            out.append(
                f"{arm} helps up to {mine[stop - 1]['size']:,} images and stops helping at "
                f"{mine[stop]['size']:,} ({_pm(mine[stop]['diff'], mine[stop]['ci95'], signed=True)} points).{also}"
            )
    return out


def _best(rows: list[dict]) -> dict[int | None, dict]:
    """Per size, the strength with the best mean metric."""
    best = {}
    for r in rows:
        if r["mean"] is not None and (r["size"] not in best or r["mean"] > best[r["size"]]["mean"]):
            best[r["size"]] = r
    return best


def _path_table(rows: list[dict], plan: Plan):
    header = [
        "images",
        plan.key,
        "epochs",
        "seeds",
        "clean train acc",
        "val acc",
        f"{plan.metric} acc (95% CI)",
        "clean gap",
        "verdicts",
    ]
    best = _best(rows)
    shown = []
    for r in rows:
        star = " ★" if best.get(r["size"]) is r else ""
        shown.append(
            [
                f"{r['size']:,}" if r["size"] else "-",
                f"{r['value']:g}",
                str(r["epochs"]),
                str(r["seeds"]),
                _pm(r["clean_train"], r["clean_train_ci95"]),
                _pm(r["val"], r["val_ci95"]),
                _pm(r["mean"], r["ci95_mean"]) + star,
                _pm(r["gap"], r["gap_ci95_mean"]),
                r["verdicts"] or "-",
            ]
        )
    sized = any(r["size"] for r in rows)
    if not sized:  # one path at the config's data: no images column
        header, shown = header[1:], [row[1:] for row in shown]
    notes = [
        f"Accuracies and gaps in %, 95% intervals over seeds (Student's t); ★ the strength with the best mean "
        f"{plan.metric} accuracy" + (" at each size." if sized else ".")
    ]
    for size, r in best.items():
        at = f" at {size:,} images" if size else ""
        notes.append(
            f"Best {plan.key}{at}: {r['value']:g}, {plan.metric} accuracy {_pm(r['mean'], r['ci95_mean'])}%; "
            f"verdicts {r['verdicts']}."
        )
        verdicts = [(x["value"], x["verdict"]) for x in rows if x["size"] == size]
        if verdicts:
            notes.append(
                f"The verdicts{at} from the weakest to the strongest: "
                + ", ".join(f"{v:g}: {k}" for v, k in verdicts)
                + "."
            )
    return header, shown, notes

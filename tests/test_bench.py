"""The benchmark's parts: its report from given figures (fast); its timed parts run at tiny sizes (slow).
The speed figures themselves are `make bench`'s."""

import json

import pytest
import torch

from benchmarks import bench
from benchmarks.aug_profile import ops_per_batch
from tests.conftest import write_mnist_family

CPU = torch.device("cpu")


@pytest.mark.slow  # it times benchmark code: make test-all runs it
def test_the_timed_benchmark_parts_run(tmp_path):
    r = bench.alternate(
        {
            "regx": bench.regx_loop("smallcnn", CPU, "32", 2, 16, "all"),
            "hand": bench.hand_loop("smallcnn", CPU, "32", 2, 16),
        },
        repeats=2,
    )
    assert (
        r["regx"]["n"] == 2 and r["regx"]["median"] > 0 and r["hand"]["min"] <= r["hand"]["median"] <= r["hand"]["max"]
    )
    aug = bench.alternate(bench.aug_alone(CPU, 2, 16), repeats=1, warmup=0)
    assert all(v["median"] > 0 for v in aug.values())
    assert bench.tv_end_to_end("smallcnn", CPU, "32", 2, 16)() == 32
    assert bench.regx_loop("smallcnn", CPU, "32", 2, 16, ema=True)() == 32
    assert bench.regx_loop("smallcnn", CPU, "32", 2, 16, clip=1.0)() == 32
    costs = bench.tracker_cost(repeats=2)
    assert all(c["status"] == "ok" and c["n"] == 2 and c["median"] > 0 for c in costs.values())
    from benchmarks import decode

    source = decode.write_jpegs(tmp_path / "jpegs", 24, side=48)
    assert "Fashion-MNIST" in source or "shapes" in source
    for how in ("pil", "cpu", "device"):
        r = decode.decode_rate(tmp_path / "jpegs", how, CPU, workers=0, batch=8, repeats=1)
        assert r["images"] == 24 and r["img_per_s"] > 0
    m = bench.measurement_cost("cpu", repeats=1)
    assert 0 < m["calibration_s"] < m["val_pass_s"] < m["epoch_s"] and 0 < m["noisy_eval_s"] < m["epoch_s"]
    for row in bench.checkpoint_stall("cpu", repeats=1)["rows"]:  # the copy stops training, not the write
        assert row["background"]["median"] < row["foreground"]["median"] < 2 * row["background_write"]["median"]
    write_mnist_family(tmp_path / "fmnist", compress=True, n_train=200, n_test=40)
    f = bench.fmnist_to_accuracy("cpu", str(tmp_path / "fmnist"), seeds=1, extra=("epochs=1", "batch_size=64"))
    (run,) = f["runs"]
    assert (
        run["epochs"] == 1 and 0 < run["train_s"] < run["run_wall_s"] < run["command_s"] and 0 <= run["test_acc"] <= 1
    )


def test_the_benchmark_report_is_written_from_its_figures(tmp_path):
    t = {
        "target": 0.99,
        "reached": {"epoch": 1, "seconds": 2.0, "wall_s": 3.0},
        "epochs": 1,
        "best_val_acc": 0.995,
        "test_acc": 0.99,
        "wall_s": 4.0,
    }
    stats = {"median": 10.0, "min": 9.0, "max": 11.0, "n": 3}
    result = {
        "machine": bench.machine(CPU),
        "command": "python -m benchmarks.bench",
        "date": "2026-01-01",
        "engine": [
            {
                "model": "smallcnn",
                "precision": "32",
                "aug": "none",
                "batch": 128,
                "regx": stats,
                "hand": stats,
                "ratio": 1.0,
            }
        ],
        "defaults": [
            {"what": "channels_last vs contiguous, smallcnn 32", "ratio": 1.1},
            {"what": "compile=default vs eager, smallcnn 32", "ratio": 1.03, "compile_s": 41.9},
        ],
        "aug_alone": {"regx": stats, "torchvision": stats, "ratio": 1.0},
        "aug_end_to_end": {"regx": stats, "torchvision": stats, "ratio": 1.0},
        "time_to_accuracy": t,
        "recipes": [
            {
                "what": "Fashion-MNIST",
                "command": "regx train experiment=fashion_mnist",
                "machine": "2 cores",
                "runs": [{"seed": 0, "test_acc": 93.55, "best_val_acc": 94.03, "wall_s": 416.2}],
            }
        ],
    }
    result["measurements"] = {
        "setup": "smallcnn",
        "epoch_s": 20.0,
        "val_pass_s": 1.0,
        "calibration_s": 0.01,
        "calibration_pct_of_epoch": 0.05,
        "noisy_eval_s": 0.3,
        "noisy_eval_pct_of_epoch": 1.5,
        "relabel_once_s": 0.002,
        "command": "python -m benchmarks.bench --measurements",
        "date": "2026-01-01",
    }
    result["compile_aug"] = {
        "rows": [
            {"option": "all", "eager_ms": 15.5, "compiled_ms": 19.4, "eager_launches": 199, "compiled_launches": 17}
        ],
        "command": "python -m benchmarks.bench --compile-aug",
        "date": "2026-01-01",
    }
    rows = [
        {"decode": h, "img_per_s": r, "images": 1024} for h, r in (("pil", 1098.2), ("cpu", 1118.0), ("device", 513))
    ]
    decode_run = {"source": "Fashion-MNIST", "side": 256, "workers": 2, "decoder": "torchvision", "rows": rows}
    result["decode"] = {"runs": [decode_run], "command": "python -m benchmarks.bench --decode", "date": "2026-01-01"}
    stall = {"median": 0.032, "min": 0.03, "max": 0.04, "n": 5}
    result["checkpoint"] = {
        "rows": [
            {
                "model": "resnet18",
                "mb": 89.6,
                "foreground": stall | {"median": 0.287},
                "background": stall,
                "background_write": stall | {"median": 0.315},
            }
        ],  # fmt: skip
        "command": "python -m benchmarks.bench --checkpoint",
        "date": "2026-01-01",
    }
    result["fmnist"] = {
        "experiment": "fashion_mnist_fast",
        "target": 0.93,
        "runs": [
            {
                "seed": s,
                "command_s": c,
                "run_wall_s": c - 3,
                "train_s": c - 5,
                "epochs": 8,
                "test_acc": a,
                "best_val_acc": a,
            }
            for s, c, a in ((0, 11.0, 0.9312), (1, 12.5, 0.9288), (2, 11.5, 0.9301))
        ],
        "command": "python -m benchmarks.bench --fmnist",
        "date": "2026-01-01",
    }
    (tmp_path / "bench.json").write_text(json.dumps(result))
    text = bench.write_markdown(tmp_path).read_text()
    assert "seed 1: test 92.88% in 12.5 s (8 epochs 7.5 s, the run 9.5 s)" in text
    assert "2 of 3 seeds reach 93%; median 11.5 s from the command to the summary" in text
    assert "| resnet18 | 90 | 287 | 32 | 315 |" in text
    assert "| 1,024 at 256 px (Fashion-MNIST) | torchvision | 2 | 1,098 | 1,118 | 513 | - |" in text
    assert "| all | 15.50 | 19.40 | x0.80 | 199 | 17 |" in text
    assert "calibration (ECE, MCE, Brier) 10.0 ms per validation pass, 0.05% of an epoch" in text
    assert "| smallcnn | 32 | none | 128 | 10 (9-11) | 10 (9-11) | 1.000 |" in text
    assert "## GPU\n\nPending" in text and "**Time to accuracy**" in text
    assert "compile=default vs eager, smallcnn 32: x1.03 after 42 s of compiling" in text
    assert "seed 0: test 93.55%, best val 94.03% in 416 s of wall time including start-up" in text
    launches = text.split("## Kernel launches per augmented batch")[1]
    assert f"| operators | {ops_per_batch('flip')} | {ops_per_batch('crop_flip')} |" in launches


@pytest.mark.slow
def test_whole_run_benchmarks_run():
    t = bench.time_to_accuracy("cpu", target=0.0, extra=("debug=smoke", "epochs=1"))
    assert t["reached"]["epoch"] == 1 and 0 < t["reached"]["seconds"] <= t["reached"]["wall_s"] and t["epochs"] == 1
    w = bench.whole_epochs("cpu", quick=True, epochs=3, extra=("debug=smoke",))
    assert w["epochs"] == 3 and len(w["epoch_wall_s"]) == 3 and w["whole_epoch_img_per_s"] > 0 and w["ratio"] > 0


@pytest.mark.slow
def test_predict_and_onnx_benchmarks_run_and_leave_nothing_behind(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where they make their runs and files
    p = bench.predict_speed(repeats=1, n=64, size=16)
    assert p["regx"]["median"] > 0 and p["hand"]["median"] > 0 and p["ratio"] > 0 and p["model"]["median"] > 0
    pytest.importorskip("onnxruntime", reason="pip install 'regx[export]'")
    rows = bench.onnx_vs_eager(repeats=1, size=16, batch=8)
    assert [o["model"] for o in rows] == ["smallcnn", "resnet18"] and all(o["ratio"] > 0 for o in rows)
    assert not list(tmp_path.glob("regx-bench-*"))  # main left both folders in /tmp


def test_the_timm_comparison_times_each_epoch_and_tabulates_every_seed(tmp_path):
    """benchmarks/vs_timm.py's parts (the comparison itself needs timm's train.py and the real data):
    `watch` notes when each CSV row appears; the table lists every seed."""
    import sys

    from benchmarks import vs_timm

    rows = tmp_path / "rows.csv"
    script = (
        f"import time\nf = open({str(rows)!r}, 'w'); f.write('epoch\\n'); f.flush()\n"
        "for i in range(3):\n    time.sleep(0.6); f.write(f'{i}\\n'); f.flush()\n"
    )
    code, wall, ends = vs_timm.watch([sys.executable, "-c", script], tmp_path / "log", rows)
    assert code == 0 and len(ends) == 3 and ends == sorted(ends) and ends[-1] <= wall
    runs = [
        {
            "tool": "timm train.py",
            "model": "resnet18",
            "seed": s,
            "exit": 0,
            "wall_s": 10.0 + s,
            "test_acc": [0.5, 0.8 + s / 100],
            "epoch_end_s": [4.0, 9.0],
        }
        for s in (0, 1)
    ]
    runs.append(
        {
            "tool": "regx",
            "model": "smallcnn",
            "seed": 0,
            "exit": 0,
            "wall_s": 5.0,
            "test_acc": [0.81, 0.9],
            "epoch_end_s": [2.0, 4.0],
        }
    )
    table = vs_timm.to_markdown(runs, 1000, 2, [0, 1], 2)
    assert "time to 80% test acc (each seed) |" in table  # the accuracy every tool reached on average
    assert "| timm train.py, resnet18 | 80.00, 81.00 | 80.50 | 10 s, 11 s | 9 s, 9 s |" in table
    assert "| regx, smallcnn | 90.00 | 90.00 | 5 s | 2 s |" in table


def test_a_missing_fashion_mnist_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert bench.main(["--fmnist", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fmnist" in err and "no such folder" in err
    assert not (tmp_path / "bench.json").exists()


def test_a_benchmark_stopped_part_way_keeps_and_reports_its_finished_parts(tmp_path, monkeypatch):
    """A borrowed GPU's time limit can stop the whole benchmark: each part is saved as it finishes, and
    the report shows those parts and says the run stopped."""
    stats = {"median": 10.0, "min": 9.0, "max": 11.0, "n": 3, "rates": [9.0, 10.0, 11.0]}
    row = {"model": "smallcnn", "precision": "32", "aug": "none", "batch": bench.BATCH, "regx": stats, "hand": stats}
    monkeypatch.setattr(bench, "alternate", lambda contenders, repeats, warmup=1: dict.fromkeys(contenders, stats))
    monkeypatch.setattr(bench, "regx_loop", lambda *a, **k: None)
    monkeypatch.setattr(bench, "hand_loop", lambda *a, **k: None)

    def stop(*a, **k):
        raise KeyboardInterrupt  # as a time limit's signal would stop it

    monkeypatch.setattr(bench, "whole_epochs", stop)
    saved = []
    with pytest.raises(KeyboardInterrupt):
        bench.run("cpu", quick=True, save=lambda r: saved.append(json.loads(json.dumps(r))))
    last, n = saved[-1], len(saved[-1]["engine"])
    assert [len(r["engine"]) for r in saved[:n]] == list(range(1, n + 1))  # saved row by row
    assert last["partial"] and n >= 4 and last["engine"][0] == row | {"ratio": 1.0}
    assert "whole_epoch" not in last and "aug_alone" not in last
    (tmp_path / "bench-cuda.json").write_text(json.dumps(last))
    gpu = bench.write_markdown(tmp_path).read_text().split("## GPU")[1]
    assert (
        "**Stopped before its end**" in gpu
        and f"| smallcnn | 32 | none | {bench.BATCH} | 10 (9-11) | 10 (9-11) | 1.000 |" in gpu
    )
    assert "**2. Augmentation**" not in gpu and "**3. Whole epochs" not in gpu


def test_fashion_mnist_seeds_are_saved_one_by_one_when_the_part_is_stopped(tmp_path, monkeypatch):
    """`--fmnist` adds each finished seed to the record, so a time limit mid-way keeps the seeds before it."""
    seed0 = {"seed": 0, "command_s": 11.0, "run_wall_s": 9.0, "train_s": 7.0, "epochs": 15, "test_acc": 0.935}
    seed0["best_val_acc"] = 0.94

    def two_seeds(device, root, partial=None, **kw):
        partial({"experiment": "fashion_mnist_fast", "target": 0.93, "runs": [seed0]})
        raise KeyboardInterrupt  # as a time limit's signal would stop the second seed

    monkeypatch.setattr(bench, "fmnist_to_accuracy", two_seeds)
    (tmp_path / "bench.json").write_text(json.dumps({"machine": bench.machine(CPU), "engine": [], "defaults": []}))
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--out", str(tmp_path), "--fmnist", str(tmp_path)])
    kept = json.loads((tmp_path / "bench.json").read_text())
    assert kept["fmnist"]["runs"] == [seed0] and kept["fmnist"]["partial"] and "engine" in kept
    assert "1 of 1 seeds reach 93% (stopped before its other seeds" in "".join(bench._fmnist_lines(kept))

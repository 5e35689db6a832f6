"""Using a trained run: regx.load(), `regx predict`, preprocessing as the run trained."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import regx
from regx.data import load_config
from regx.train import train
from tests.conftest import regx_here, smoke_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    train(smoke_cfg("epochs=2"), root / "run")
    return root / "run"


def test_load_predicts_what_evaluation_scored(run):
    clf = regx.load(run)
    s = json.loads((run / "summary.json").read_text())
    assert clf.classes[:2] == ["disk", "ring"] and clf.preprocess.size == s["image_size"] == 16
    test = load_config(smoke_cfg().data).test  # the run's own test split, as uint8 tensors
    probs = clf.probabilities(test.x)
    assert probs.shape == (len(test), 10) and torch.allclose(probs.sum(1), torch.ones(len(test)), atol=1e-4)
    accuracy = (probs.argmax(1) == test.y).float().mean().item()
    assert accuracy == pytest.approx(s["test_acc"], abs=1e-6)  # best.pt, the same preprocessing


def test_paths_pil_images_and_tensors_give_the_same_answer(run, tmp_path):
    clf = regx.load(run, device="cpu")
    test = load_config(smoke_cfg().data).test
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(test.x[i].permute(1, 2, 0).numpy()).save(files[-1])  # PNG: lossless
    from_tensors = clf.predict(test.x[:4], top_k=3)
    assert clf.predict([str(f) for f in files], top_k=3) == from_tensors
    assert clf.predict([Image.open(f) for f in files], top_k=3) == from_tensors
    one = clf.predict(files[0], top_k=3)
    assert one == from_tensors[0] and len(one["top"]) == 3 and one["label"] == one["top"][0]["label"]
    other = clf.predict(torch.randint(0, 256, (1, 60, 45), dtype=torch.uint8))  # grey, another size: converted
    assert other["label"] in clf.classes
    assert clf.predict([]) == []


def test_bad_runs_and_inputs_are_one_line(run, tmp_path):
    for call, message in [
        (lambda: regx.load(tmp_path / "nothing"), "no such run directory"),
        (lambda: regx.load(tmp_path), "is not a regx run directory"),
        (lambda: regx.load(run, checkpoint="middle"), "must be best or last"),
        (lambda: regx.load(run).predict(3.5), "cannot predict on float"),
        (lambda: regx.load(run).predict(torch.zeros(2, 8, 8, dtype=torch.uint8)), "an image with 2 channels"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def write_folder(root, n=6):
    test = load_config(smoke_cfg().data).test
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(test.x[i].permute(1, 2, 0).numpy()).resize((40, 30)).save(
            root / ("sub" if i % 2 else ".") / f"{i}.jpg"
        )
    (root / "broken.png").write_bytes(b"not an image")
    return root


def test_predict_writes_a_row_per_image_and_lists_the_unreadable(run, tmp_path):
    write_folder(tmp_path / "imgs")
    res = regx_here(tmp_path, "predict", run, "imgs", "--top-k", "2", "--out", "p.csv", "--workers", "0")
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "path,label_1,prob_1,label_2,prob_2" and len(lines) == 7  # every folder, recursively
    assert "unreadable: imgs/broken.png (not an image Pillow can identify)" in res.stdout  # why, as check-data says
    assert "6 images -> p.csv; 1 unreadable" in res.stdout
    assert "predicted: " in res.stdout  # the class histogram
    res = regx_here(tmp_path, "predict", run, "imgs/sub/*.jpg", "--out", "p.jsonl", "--checkpoint", "last")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["top"][0]["label"] in regx.load(run).classes for r in rows)
    clf = regx.load(run, "last")
    for row in rows:  # a JSON line has the fields regx.load(run).predict gives, and the path (main: only top)
        assert row == {"path": row["path"], **clf.predict(str(tmp_path / row["path"]))}
    res = regx_here(tmp_path, "predict", run, "imgs/0.jpg")  # no --out: CSV on stdout, the summary on stderr
    assert res.stdout.splitlines()[1].startswith("imgs/0.jpg,") and "1 image; predicted:" in res.stderr
    res = regx_here(tmp_path, "predict", run, "imgs/broken.png")  # nothing labelled: exit 1
    assert res.returncode == 1 and "0 images; 1 unreadable, skipped" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere", "imgs"], "no such run directory: nowhere"),
        (["{run}", "empty"], "empty: no images in it"),
        (["{run}", "imgs", "--out", "p.txt"], "--out p.txt: the file name must end in .csv or .jsonl"),
        (["{run}", "imgs", "--out", "no/dir/p.csv"], "no such directory no/dir"),
        (["{run}", "missing.png"], "missing.png: no such file or directory"),
        (["{run}", "imgs", "--checkpoint", "middle"], "invalid choice: 'middle'"),
    ],
)
def test_predict_bad_input_is_one_line_and_writes_nothing(run, tmp_path, args, message):
    write_folder(tmp_path / "imgs")
    (tmp_path / "empty").mkdir()
    res = regx_here(tmp_path, "predict", *[a.format(run=run) for a in args])
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not list(tmp_path.glob("p.*")) and not list(tmp_path.glob(".p.*"))


def test_a_damaged_checkpoint_is_refused(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "r")
    (tmp_path / "r" / "checkpoints" / "best.pt").write_bytes(b"garbage")
    write_folder(tmp_path / "imgs", n=1)
    res = regx_here(tmp_path, "predict", "r", "imgs/0.jpg")
    assert res.returncode == 2 and "best.pt is corrupt" in res.stderr


@pytest.mark.slow
def test_memory_stays_flat_over_20000_files(run, tmp_path):
    """Peak memory of `regx predict` over 20,000 tiny files is that over 2,000, give or take."""
    folder = tmp_path / "many"
    folder.mkdir()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(folder / "0.png")
    data = (folder / "0.png").read_bytes()
    for i in range(1, 20_000):
        (folder / f"{i}.png").write_bytes(data)
    peaks = {}
    for n in (2_000, 20_000):
        files = sorted(folder.iterdir())[:n]
        (tmp_path / f"list{n}").mkdir()
        for f in files:
            (tmp_path / f"list{n}" / f.name).symlink_to(f)
        code = (
            f"import resource, sys; from regx.cli import main; rc = main(['predict', '{run}', '{tmp_path}/list{n}', "
            f"'--out', '{tmp_path}/o{n}.csv', '--workers', '2']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-1000:]
        peaks[n] = int(res.stdout.split()[-1])  # KiB
        assert len((tmp_path / f"o{n}.csv").read_text().splitlines()) == n + 1
    assert peaks[20_000] < peaks[2_000] + 64 * 1024, peaks  # not 10x the images in memory


def test_sigterm_stops_predict_as_ctrl_c_does_and_leaves_no_temporary_file(run, tmp_path, monkeypatch, cli):
    """On main SIGTERM killed it where it stood: exit 143, no message, `.p.csv.tmp-PID` left behind."""
    import os
    import signal

    import regx.predict

    write_folder(tmp_path / "imgs")
    original = regx.predict.predict_files

    def predict_then_stop(clf, paths, out, **kw):
        out.write("path,label_1,prob_1\n")  # half the file written
        os.kill(os.getpid(), signal.SIGTERM)
        return original(clf, paths, out, **kw)

    monkeypatch.setattr(regx.predict, "predict_files", predict_then_stop)
    monkeypatch.chdir(tmp_path)
    res = cli("predict", str(run), "imgs", "--out", "p.csv", "--workers", "0")
    assert res.returncode == 143 and res.stderr.strip() == "regx: stopped by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # no p.csv, no temporary file


def test_the_python_api_takes_a_folder_and_prints_in_one_line(run, tmp_path):
    """On main clf.predict("dir/") raised IsADirectoryError and print(clf) dumped the whole network."""
    write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").unlink()
    clf = regx.load(run)
    rows = clf.predict(str(tmp_path / "imgs"), top_k=2)
    assert [Path(r["path"]).name for r in rows] == ["0.jpg", "2.jpg", "4.jpg", "1.jpg", "3.jpg", "5.jpg"]
    assert rows[0] == {"path": rows[0]["path"], **clf.predict(rows[0]["path"], top_k=2)}
    text = repr(clf)
    assert "\n" not in text and text.startswith(f"Predictor({len(clf.classes)} classes: ") and "params on cpu" in text


def test_eval_takes_the_checkpoint_as_predict_and_export_spell_it(run, tmp_path):
    res = regx_here(tmp_path, "eval", run, "--checkpoint", "last")
    assert res.returncode == 0, res.stderr
    assert (run / "eval_last.json").is_file()

"""Chaos: a streamed-folder run with dropout and a checkpoint after every step, killed once before its first
checkpoint, then stopped 20 times at random steps by SIGKILL (also while a checkpoint is being written,
best.pt's included at epoch ends), SIGTERM to the process and SIGTERM to its whole process group, each time
resumed. It must end exactly where an uninterrupted run ends."""

import json
import random

import pytest

from regx import checkpoint
from regx.checkpoint import newest_intact
from regx.files import read_metrics
from tests.conftest import assert_same_state, metric_rows, run_regx, write_images

KINDS = ("kill", "killsave", "term", "termgroup")
EXIT = {"kill": -9, "killsave": -9, "term": 143, "termgroup": 143}


@pytest.mark.slow
@pytest.mark.parametrize("background", ["false", "true"])  # checkpoint.background: a kill may meet a write in flight
def test_twenty_random_kills_and_stops_end_where_an_uninterrupted_run_ends(tmp_path, background):
    root = tmp_path / "imgs"
    write_images(root, per_class=10, size=(24, 20))
    args = [
        "debug=smoke",
        "data=imagefolder",
        f"data.path={root}",
        "data.image_size=16",
        "data.stream=true",
        "data.workers=2",
        "batch_size=4",
        "epochs=5",
        "checkpoint.every_steps=1",
        "aug=flip_rotate",
        "dropout=fc",  # dropout's masks come from the stream a streamed loader once drew from
        f"checkpoint.background={background}",
    ]
    ref = run_regx(["train", *args, f"hydra.run.dir={tmp_path / 'ref'}"], tmp_path)
    assert ref.returncode == 0, ref.stderr
    total = checkpoint.read(tmp_path / "ref" / "checkpoints" / "last.pt").to_dict()["state"]["step"]
    run, rng, step, log = tmp_path / "run", random.Random(2026), 0, []
    kinds = list(KINDS) * 5  # 20 stops, five of each kind, in a random order
    rng.shuffle(kinds)
    # the first stop comes before any checkpoint exists (regx resume then starts the run again, #28 item 4)
    first = run_regx(["train", *args, f"hydra.run.dir={run}"], tmp_path, fault="kill@0", new_session=True)
    assert first.returncode == -9 and not (run / "checkpoints" / "last.pt").exists()
    for kind in kinds:
        at = max(1, step + rng.randint(0, 2))
        res = run_regx(["resume", str(run)], tmp_path, fault=f"{kind}@{at}", new_session=True)
        log.append((kind, at, res.returncode))
        if at < total:
            assert res.returncode == EXIT[kind], (log, res.stdout[-2000:], res.stderr[-2000:])
        try:
            step = newest_intact(run / "checkpoints")[1].step
        except checkpoint.CorruptCheckpoint:  # none yet (killed while writing the first): it starts again
            step = 0
        if step >= total:
            break
    res = run_regx(["resume", str(run)], tmp_path)
    assert res.returncode == 0, (log, res.stderr)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [str(e) for e in range(1, 6)]
    assert metric_rows(run) == metric_rows(tmp_path / "ref")
    assert_same_state(
        checkpoint.read(run / "checkpoints" / "last.pt").to_dict(),
        checkpoint.read(tmp_path / "ref" / "checkpoints" / "last.pt").to_dict(),
    )
    assert_same_state(  # best.pt too: whatever moment a kill hit, it holds the best epoch (#28 item 2)
        checkpoint.read(run / "checkpoints" / "best.pt").to_dict(),
        checkpoint.read(tmp_path / "ref" / "checkpoints" / "best.pt").to_dict(),
    )
    for ckpt in (run / "checkpoints").glob("*.pt"):
        checkpoint.verify(ckpt)
    json.loads((run / "summary.json").read_text())
    assert not list(run.rglob(".*.tmp-*")) and not (run / ".reserve").exists()
    assert len(log) == 20 and all(code == EXIT[kind] for kind, _, code in log), log  # every round stopped it
    assert {kind for kind, _, _ in log} == set(KINDS), log

"""Test-only fault injection, as a step hook (regx reads no environment variable for it).

    python tests/fault_main.py KIND@STEP <regx arguments>    (also under torchrun, as its script)

runs `regx <arguments>` with the hook `Fault("KIND@STEP")` added to every training run it starts.
STEP is the global optimizer step, counted from 0. KIND:
  kill      SIGKILL before step STEP's update (a crash, an OOM kill)
  nan       step STEP's loss becomes NaN (the weights are poisoned just before it)
  term/int  SIGTERM / SIGINT during step STEP (what SLURM or a user sends)
  int2      two SIGINTs during step STEP (a user pressing Ctrl-C twice)
  killsave  SIGKILL after the first checkpoint at or after step STEP is written to its temporary file,
            before the rename that would publish it
  termgroup SIGTERM to the whole process group during step STEP (SLURM, docker stop, systemd)
  wait      before step STEP, create ./waiting and wait until ./go exists (a run kept alive while a
            test does something beside it)
In-process tests pass `Fault(...)` to `train(..., hooks=[...])` directly.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch

from regx.engine import Hook


class Fault(Hook):
    def __init__(self, spec: str):
        kind, _, step = spec.partition("@")
        if kind not in ("kill", "nan", "term", "int", "int2", "killsave", "termgroup", "wait") or not step.isdigit():
            raise ValueError(f"bad fault {spec!r}: KIND@STEP")
        self.kind, self.at, self.step, self.model = kind, int(step), -1, None

    def start(self, parts) -> None:
        self.model = parts.model  # the nan fault poisons its weights

    def before_step(self, step: int) -> None:
        self.step = step
        if step != self.at:
            return
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind in ("term", "int", "int2"):
            for _ in range(2 if self.kind == "int2" else 1):
                os.kill(os.getpid(), signal.SIGTERM if self.kind == "term" else signal.SIGINT)
        elif self.kind == "termgroup":
            os.killpg(os.getpgrp(), signal.SIGTERM)
        elif self.kind == "wait":
            Path("waiting").touch()
            for _ in range(6000):
                if Path("go").exists():
                    break
                time.sleep(0.02)
        elif self.kind == "nan":
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    def checkpoint_written(self, tmp: str) -> None:
        if self.kind == "killsave" and self.step >= self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    """Add Fault(spec) to every regx.train.train call of this process (the CLI looks train up when it runs)."""
    import regx.train as t

    original = t.train

    def train(cfg, run_dir, **kw):
        return original(cfg, run_dir, hooks=(*kw.pop("hooks", ()), Fault(spec)), **kw)

    t.train = train


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    install(sys.argv[1])
    from regx.cli import main

    sys.exit(main(sys.argv[2:]))

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REGX = [sys.executable, "-m", "regx"]


def run_regx(args, cwd, env=None, timeout=300):
    """Run `regx ARGS` in a subprocess, as a user would; returns CompletedProcess (text)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("REGX_DEBUG", "REGX_FAULT")}
    full_env.update(PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([*REGX, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def regx(tmp_path):
    def call(*args, env=None, cwd=None):
        return run_regx(list(args), cwd or tmp_path, env=env)

    return call


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)

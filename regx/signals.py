"""Stop signals: SIGTERM (SLURM, docker, systemd) and SIGINT (Ctrl-C) caught for a `with` block."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """Catch SIGTERM and SIGINT for the block (in the main thread only: Python allows no other), and
    put the handlers back after it. Subclasses say what a signal does in `_handle`; `signum` is the
    first signal caught, and calling the object says whether one was."""

    def __init__(self):
        self.signum: int | None = None
        self._saved: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is (as Ctrl-C raises KeyboardInterrupt): the `finally` and
    `except BaseException` blocks on the way out run, so no temporary file stays. `code`: 143."""

    code = 128 + signal.SIGTERM


class TermAsInterrupt(StopSignals):
    """For a command's life: SIGTERM stops it as Ctrl-C does (Terminated) instead of killing it where
    it stands. A run's own handling (train.StopRequest) takes over inside it and gives this back."""

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        raise Terminated("SIGTERM")

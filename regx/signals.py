"""Stop signals: SIGTERM (SLURM, docker, systemd) and SIGINT (Ctrl-C) caught for a `with` block."""

from __future__ import annotations

import os
import signal
import threading


class StopSignals:
    """Catch SIGTERM and SIGINT for the block (in the main thread only: Python allows no other), and
    put the handlers back after it. Subclasses say what a signal does in `_handle`; `signum` is the
    first signal caught, and calling the object says whether one was."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._saved: dict = {}
        self._pid = os.getpid()

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        raise NotImplementedError

    def _dispatch(self, signum, frame) -> None:
        """`_handle` in this process; in a process forked from it (a decoding worker before its own
        handlers are set: torch's DataLoader may stop one then), what the signal does without a handler."""
        if os.getpid() != self._pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._handle(signum, frame)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._dispatch)
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

    SIGNALS = (signal.SIGTERM,)

    def _handle(self, signum, frame):
        self.signum = signum
        raise Terminated("SIGTERM")

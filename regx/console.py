"""Terminal output: rich progress bars and tables on a terminal, plain lines elsewhere (CI, logs)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_console = None


def console():
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(highlight=False)
    return _console


def interactive() -> bool:
    return sys.stdout.isatty()


class _LogFile(logging.FileHandler):
    """train.log. A line that cannot be written (a full disk) is lost with one note on stderr, the
    first time, instead of logging's traceback per line; the terminal still shows every line."""

    failed = False

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            sys.stderr.write(
                f"regx: warning: cannot write {self.baseFilename} ({getattr(exc, 'strerror', None) or exc}); "
                "its lines go to the terminal only\n"
            )


def setup_logging(log_file: Path | None = None, quiet: bool = False) -> logging.Logger:
    """The `regx` logger: to the terminal (rich or plain) and, when given, appended to log_file.
    quiet: warnings and errors only (the other ranks of a torchrun job)."""
    log = logging.getLogger("regx")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if interactive():
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        term = RichHandler(
            console=console(),
            show_path=False,
            show_level=False,
            markup=False,
            highlighter=NullHighlighter(),
            log_time_format="[%X]",
        )
    else:
        term = logging.StreamHandler(sys.stdout)
        term.setFormatter(logging.Formatter("%(message)s"))
    if quiet:
        term.setLevel(logging.WARNING)
    log.addHandler(term)
    # "regx.file" reaches the log file only: for what the terminal already shows as a table.
    file_only = logging.getLogger("regx.file")
    file_only.propagate = False
    for h in list(file_only.handlers):
        file_only.removeHandler(h)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = _LogFile(log_file, mode="a", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(fh)
        file_only.addHandler(fh)
    return log


STATS_EXAMPLE = "loss 0.0000  acc 100.00%  lr 0.000123  123,456 img/s"  # the widest stats EpochProgress shows


class EpochProgress:
    """A live bar for one epoch (loss, accuracy, LR, images/s); silent when not on a terminal."""

    def __init__(self, title: str, total: int, show: bool = True):
        self.title, self.total, self._progress, self.show = title, total, None, show

    def __enter__(self):
        if self.show and interactive():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            # the words and numbers first: the bar takes what room is left, and is left out under 10
            # columns of it (at 80 columns rich cut the step count short: "294/4…")
            words = len(self.title) + 2 * len(str(self.total)) + 1 + len(STATS_EXAMPLE) + len("0:00:00") + 4
            bar = console().width - words - 1
            self._progress = Progress(
                TextColumn("{task.description}"),
                *([BarColumn(bar_width=min(40, bar))] if bar >= 10 else []),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=console(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total, stats="")
        return self

    @property
    def active(self) -> bool:
        return self._progress is not None

    def update(self, done: int, loss: float, acc: float, lr: float, img_per_s: float) -> None:
        if self._progress is not None:
            stats = f"loss {loss:.4f}  acc {acc:6.2%}  lr {lr:.3g}  {img_per_s:,.0f} img/s"
            self._progress.update(self._task, completed=done, stats=stats)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


def print_table(
    title: str, header: list[str], rows: list[list[str]], *, caption: str = "", right: set[str] = frozenset()
) -> None:
    """A table that survives any width: columns are never wrapped (a number or a path split over two
    lines reads wrong); when it does not fit the terminal (80 columns in a log), each row becomes a
    block of `key value` fields packed into lines instead."""
    con = console()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    if sum(widths) + 3 * len(widths) + 1 <= con.width:
        from rich.table import Table

        table = Table(title=title, caption=caption or None)
        for h in header:
            table.add_column(h, no_wrap=True, justify="right" if h in right else "left")
        for row in rows:
            table.add_row(*row)
        con.print(table)
        return
    print(title)
    for row in rows:
        print(f"{header[0]} {row[0]}")
        line = " "
        for h, v in zip(header[1:], row[1:]):
            field = f" {h}={v}"
            if len(line) + len(field) > con.width and line.strip():
                print(line)
                line = " "
            line += field
        print(line)
    if caption:
        print(caption)

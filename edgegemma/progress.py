"""Progress on stderr for the long steps of `edgegemma pull`: tqdm bars that keep ticking while
nothing advances, so a user never faces a silent terminal.

On a terminal a bar redraws in place. When stderr is a file or a pipe (a CI log), each redraw
becomes one plain line instead of tqdm's carriage returns, at most one every LOG_INTERVAL seconds.
Either way a bar whose count does not move (a download that stalls, a compile) is redrawn every
few seconds so its clock shows the step is alive.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

from tqdm import tqdm

TTY_INTERVAL = 0.2  # seconds between redraws on a terminal
LOG_INTERVAL = 2.0  # seconds between lines in a log: well inside the 5 s a user should ever wait, with room
TTY_TICK = 1.0  # an idle bar is redrawn this often on a terminal (its clock moves)...
LOG_TICK = 2.0  # ...and in a log (a busy 2-core machine delays the redraw by a second or more)
TICK_POLL = 0.25  # how often the ticker looks


class _Lines:
    """A stream for tqdm that turns each redraw ('\\r' + status + padding) into one line of its own; the cursor
    moves tqdm makes to stack bars one above another are dropped."""

    _CURSOR = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = self._CURSOR.sub("", text).replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def write(message: str) -> None:
    """Print a line to stderr above any bar that is running (the bar is redrawn below it)."""
    tqdm.write(message, file=sys.stderr)


@contextmanager
def bar(desc: str, total: float | None = None, unit: str = "it", *, unit_scale: bool = False,
        bar_format: str | None = None) -> Iterator[tqdm]:
    """A tqdm bar on stderr for the block's duration, redrawn at least every few seconds.

    total=None gives a counter without a bar: the step's elapsed time and whatever it counts."""
    tty = is_terminal()
    stream = sys.stderr if tty else _Lines(sys.stderr)
    progress = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=stream,
                    mininterval=TTY_INTERVAL if tty else LOG_INTERVAL, dynamic_ncols=tty,
                    bar_format=bar_format, leave=True, smoothing=0.1)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(progress, stop, TTY_TICK if tty else LOG_TICK), daemon=True)
    ticker.start()
    try:
        yield progress
    finally:
        stop.set()
        ticker.join()
        progress.close()


def _tick(progress: tqdm, stop: threading.Event, every: float) -> None:
    """Redraw `progress` whenever it has shown nothing for `every` seconds. Its own last_print_t is left alone:
    tqdm measures the rate (and so the time left) from it."""
    ticked = 0.0
    while not stop.wait(TICK_POLL):
        now = time.time()
        if now - max(progress.last_print_t, ticked) >= every:
            progress.refresh()
            ticked = now

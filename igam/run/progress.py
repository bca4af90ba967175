"""Progress of long loops: a tqdm bar on a terminal, a plain line now and then in a log file.

With stderr a log file (CI, ``nohup``, a cluster job's output) a tqdm bar writes a carriage
return per update, and the log fills with one endless line. :func:`progress` gives the bar only
when stderr is a terminal; otherwise it prints ``<desc>: <done>/<total> (<seconds> s)`` when the
loop starts, then at most every ``every`` seconds, and once at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm


def interactive() -> bool:
    """Progress bars only on a terminal: with stderr a log file, CI or a cluster job's output
    the bars stay off (no carriage-return floods) and the plain log lines remain."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class LogProgress:
    """What :func:`progress` returns without a terminal: iterates ``iterable`` and writes one
    line to stderr when the loop starts, then at most every ``every`` seconds, and when it
    ends. ``n`` counts the items done (as tqdm's); ``update`` / ``set_postfix_str`` / ``close``
    mirror tqdm's."""

    def __init__(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None,
                 every: float = 60.0, unit: str = "it"):
        self.iterable, self.desc, self.total, self.every, self.unit = (iterable, desc, total,
                                                                      every, unit)
        self.n, self.postfix, self.closed = 0, "", False
        self.t0 = self.last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        if self.desc:
            self._line()  # the loop has started: a log says what runs before its first result
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _line(self) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.postfix}" if self.postfix else ""
        sys.stderr.write(f"{self.desc}: {self.n}{total} {self.unit} "
                         f"({time.monotonic() - self.t0:.0f} s{extra})\n")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.closed and self.desc:
            self._line()
        self.closed = True


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
             show: bool = True, every: float = 60.0, unit: str = "it", **tqdm_kwargs):
    """A tqdm bar over ``iterable`` on a terminal, a :class:`LogProgress` otherwise (``show``
    False: a silent one). Extra keyword arguments go to tqdm."""
    if show and interactive():
        return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True,
                    **tqdm_kwargs)
    return LogProgress(iterable, desc if show else "", total, every if show else float("inf"),
                       unit)

"""Progress bars that suit where they are written: tqdm's bar on a terminal or in a
notebook; in a log file or a pipe, a plain line now and then.

A tqdm bar redraws one line with carriage returns, ten times a second: in a log that is
one huge line, or a line per redraw once `\\r` becomes a newline. `PlainProgress` writes

    generate: 128/512 samples (25%), 00:41 elapsed, ~02:03 left, 3.12 samples/s

at each further tenth of the total, at least every `every_s` seconds (a stage that is
slow or has no total still says it is alive), and once at the end. Call sites import
`tqdm` from here instead of from tqdm; it takes tqdm's arguments.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm.std import tqdm as _std_tqdm

_bars = True


def show_bars(on: bool) -> None:
    """Turn alignloop's progress bars on or off (off: `alignloop -q`)."""
    global _bars
    _bars = on


def tqdm(*args, **kwargs):
    """`tqdm.auto.tqdm(*args, **kwargs)` when its stream (`file`, default stderr) is a
    terminal or in a notebook; a `PlainProgress` otherwise. Disabled by `show_bars(False)`."""
    from tqdm.asyncio import tqdm as console_tqdm
    from tqdm.auto import tqdm as auto_tqdm

    if not _bars:
        kwargs["disable"] = True
    stream = kwargs.get("file") or sys.stderr
    if auto_tqdm is not console_tqdm or _is_terminal(stream):  # a notebook widget, or a terminal
        return auto_tqdm(*args, **kwargs)
    return PlainProgress(*args, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or closed
        return False


class PlainProgress:
    """The part of tqdm's interface that alignloop uses (update, set_postfix, refresh,
    close, iteration, `with`, `n` and `total`), writing plain lines; other tqdm keyword
    arguments (ncols, leave, mininterval, ...) are accepted and ignored."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None,
                 total: float | None = None, *, unit: str = "it", initial: float = 0,
                 disable: bool = False, file=None, every_s: float = 30.0, **_ignored):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "", total, unit
        self.n = self.initial = initial
        self.disable, self.file, self.every_s = disable, file, every_s
        self.postfix = ""
        self.start_t = self._line_t = time.monotonic()
        self._line_n, self._line_tenth, self._closed = initial, self._tenth(), False

    # ------------------------------------------------------------------ tqdm's interface

    def update(self, n: float = 1) -> None:
        self.n += n
        self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        done = self.total is not None and self.n >= self.total  # close() writes that line
        if not done and (self._tenth() > self._line_tenth or now - self._line_t >= self.every_s):
            self._write_line(now)

    def write_now(self) -> None:
        """Write the line at once (a wait for people should show in a log when it starts)."""
        self._write_line(time.monotonic())

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    @property
    def format_dict(self) -> dict:
        """tqdm's counters (vLLM's bar reads `elapsed` for its token rates)."""
        return {"n": self.n, "total": self.total, "elapsed": time.monotonic() - self.start_t}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if not self._closed and self.n != self._line_n:
            self._write_line(time.monotonic())
        self._closed = True

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the line

    def _tenth(self) -> int:
        return int(10 * self.n / self.total) if self.total else 0

    def _write_line(self, now: float) -> None:
        self._line_t, self._line_n, self._line_tenth = now, self.n, self._tenth()
        if not self.disable:
            stream = self.file or sys.stderr
            stream.write(self.line(now - self.start_t) + "\n")
            stream.flush()

    def line(self, elapsed: float) -> str:
        """e.g. `train: 120/400 steps (30%), 05:12 elapsed, ~12:08 left, 2.60 s/step, loss=0.69`"""
        n, total = _number(self.n), _number(self.total)
        units = self.unit if self.unit == "it" or self.unit.endswith("s") else self.unit + "s"
        head = (f"{n}/{total} {units} ({int(100 * self.n / self.total)}%)" if self.total
                else f"{n} {units}")
        parts = [f"{self.desc}: {head}" if self.desc else head,
                 f"{_std_tqdm.format_interval(elapsed)} elapsed"]
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if rate > 0 and self.total and self.n < self.total:
            parts.append(f"~{_std_tqdm.format_interval((self.total - self.n) / rate)} left")
        if rate >= 1:
            parts.append(f"{rate:.3g} {units}/s" if rate < 100 else f"{rate:.0f} {units}/s")
        elif rate > 0:
            parts.append(f"{1 / rate:.3g} s/{self.unit}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)


def _number(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)

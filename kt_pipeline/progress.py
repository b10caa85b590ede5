"""A tiny progress counter for long loops: prints to stderr, throttled, no TTY needed.

On a terminal it redraws one line (``\\r``); in a log file (no TTY) it prints a full
line at most every ``log_interval`` seconds, so CI logs stay short.

Example:

>>> from kt_pipeline.progress import Progress
>>> with Progress("tokenize", total=3, unit="rows", enabled=False) as bar:
...     for _ in range(3):
...         bar.update(1)
>>> bar.count
3
"""

from __future__ import annotations

import sys
import time


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000.0
    return f"{n:.1f}T"


class Progress:
    """Count work done and show ``desc: n/total unit (pct, rate/s)`` on stderr.

    Args:
        desc: what is being counted, e.g. ``"pass 1: parse"``.
        total: the expected count, or None when unknown.
        unit: shown after the numbers (``"rows"``, ``"B"``).
        enabled: False silences it (the count is still kept).
        stream: where to write; defaults to ``sys.stderr``.
        interval: minimum seconds between redraws on a TTY.
        log_interval: minimum seconds between lines when not a TTY.
    """

    def __init__(
        self,
        desc: str,
        total: float | None = None,
        unit: str = "rows",
        enabled: bool = True,
        stream=None,
        interval: float = 0.2,
        log_interval: float = 10.0,
    ):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.count = 0
        self.start = time.monotonic()
        self._last = self.start
        self._drawn = False

    def update(self, n: float = 1) -> None:
        """Add `n` to the count; redraw when enough time has passed."""
        self.count += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._draw(final=False)

    def set(self, value: float) -> None:
        """Set the count to `value` (for byte offsets and similar)."""
        self.update(value - self.count)

    @property
    def rate(self) -> float:
        return self.count / max(time.monotonic() - self.start, 1e-9)

    def _line(self) -> str:
        done = _human(self.count)
        if self.total:
            pct = 100.0 * self.count / self.total
            done = f"{done}/{_human(self.total)} {self.unit} ({pct:.0f}%"
        else:
            done = f"{done} {self.unit} ("
        return f"{self.desc}: {done}, {_human(self.rate)} {self.unit}/s)"

    def _draw(self, final: bool) -> None:
        if self.tty:
            end = "\n" if final else ""
            self.stream.write("\r" + self._line().ljust(70) + end)
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Print the final count (once)."""
        if self.enabled:
            self._draw(final=True)
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

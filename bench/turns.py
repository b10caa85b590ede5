"""Training steps in child processes that take turns: A/B timing on a drifting machine.

Each side of a comparison runs in its own process with all the cores. The parent tells
one side to run some steps while the other waits blocked on its pipe, then the other,
so both see the same phases of the machine's speed (on the 2-core CI kind it drifts by
up to 25% within minutes, which moves two runs made minutes apart further apart than
the difference being measured).

A child calls :func:`serve` with its step function; the parent starts it with
:class:`Side` and calls ``run(k)``, which returns the k steps' times in ms and what
each step returned (any JSON value: a loss, counts of rows and tokens), or lets
:func:`alternate` run two sides in turn. ``Side.cores_busy()`` is the side's CPU time
over the wall time of its steps (threads that spin or wait count only while they use a
core): near 2.0 on two cores when the side leaves none idle.

Example (a child and its parent are the same script, as in ``train_ab.py``)::

    if args.child:
        turns.serve(make_step(args.child))   # prints "ready", then serves "run k"
    else:
        sides = {s: turns.Side(s, [sys.executable, __file__, "--child", s]) for s in "ab"}
        got = turns.alternate(sides, steps=300, chunk=10)   # {"a": (ms, outs), "b": ...}
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

_REPLY = "turns:"  # a reply line starts with this; any other stdout line is a library's


def serve(step, warmup: int = 0) -> None:
    """Run ``warmup`` untimed steps, print "ready", then for each stdin line "run k" run
    ``k`` steps and print their times (ms) and return values on one line (JSON). Any
    other line ends it."""
    for _ in range(warmup):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 2 or parts[0] != "run":
            break
        times, outs, cpu = [], [], []
        for _ in range(int(parts[1])):
            c, t = time.process_time(), time.perf_counter()  # CPU time: all its threads
            outs.append(step())
            times.append(1000 * (time.perf_counter() - t))
            cpu.append(1000 * (time.process_time() - c))
        print(_REPLY, json.dumps({"ms": times, "out": outs, "cpu_ms": cpu}), flush=True)


class Side:
    """A child process running :func:`serve`; started (and ready) on construction."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        self.name = name
        self.ms, self.cpu_ms = [], []  # each step's wall and CPU time: see `cores_busy`
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        for line in self.proc.stdout:  # what a library prints before "ready" is skipped
            if line.strip() == "ready":
                return
        sys.exit(f"the {name} side failed to start (its error is above)")

    def run(self, k: int) -> tuple[list[float], list]:
        """Run ``k`` steps on this side: their times in ms and what they returned."""
        self.proc.stdin.write(f"run {k}\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                reply = json.loads(line[len(_REPLY):])
                self.ms.extend(reply["ms"])
                self.cpu_ms.extend(reply["cpu_ms"])
                return reply["ms"], reply["out"]
        sys.exit(f"the {self.name} side stopped (its error is above)")

    def cores_busy(self, steps=None) -> float:
        """CPU time over wall time of the steps run so far (or of those numbered in
        ``steps``): how many cores the side kept busy while it ran (2.0 on two cores: none
        left idle)."""
        picked = range(len(self.ms)) if steps is None else steps
        wall = sum(self.ms[i] for i in picked)
        return round(sum(self.cpu_ms[i] for i in picked) / wall, 2) if wall else 0.0

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def alternate(sides: dict[str, Side], steps: int, chunk: int) -> dict[str, tuple[list, list]]:
    """Run ``steps`` steps on each of two sides, ``chunk`` at a time in turn, the first to
    go alternating; then close them. Returns each side's step times (ms) and outputs."""
    first, second = sides
    got = {s: ([], []) for s in sides}
    for i in range(0, steps, chunk):
        for s in ((first, second) if (i // chunk) % 2 == 0 else (second, first)):
            ms, out = sides[s].run(min(chunk, steps - i))
            got[s][0].extend(ms)
            got[s][1].extend(out)
    for side in sides.values():
        side.close()
    return got

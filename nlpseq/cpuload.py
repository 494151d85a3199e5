"""How much CPU other processes take while nlpseq runs: for a warning, not for tuning.

On a small machine a second job changes everything: with every core given to torch's
threads, each parallel section ends at a barrier that waits for a thread whose core the other
job holds. On 2 cores, one busy loop beside `nlpseq bench` cut 2-thread training to about a
quarter of its quiet speed and half of what 1 thread reached beside the same loop (README).
Choosing the thread count from the load would make a run's numbers depend on its neighbours
(a seeded run must repeat exactly), so nlpseq only measures and says so.
"""

from __future__ import annotations

import os
import time

BUSY = 0.5  # cores other processes must keep busy, on average, before nlpseq says so


def _sample() -> tuple[float, float, float] | None:
    """(CPU seconds all processes spent busy, CPU seconds of this process, wall seconds), or
    None where /proc/stat cannot be read (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: idle, iowait and steal (another
    # VM's) are not this machine's processes at work
    busy = sum(fields[:3]) + sum(fields[5:7])
    own = os.times()
    return busy / ticks, own.user + own.system, time.monotonic()


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OtherLoad:
    """Cores that other processes kept busy, on average, between calls of :meth:`cores`."""

    def __init__(self) -> None:
        self._last = _sample()

    def cores(self) -> float | None:
        """Average number of cores other processes used since the last call (or creation);
        None where it cannot be measured."""
        now = _sample()
        last, self._last = self._last, now
        if now is None or last is None or now[2] - last[2] <= 0:
            return None
        busy, own, wall = (a - b for a, b in zip(now, last))
        return max(0.0, (busy - own) / wall)


def contention_warning(others: float | None, threads: int, cores: int) -> str | None:
    """A warning when other processes took at least :data:`BUSY` cores while this process's
    ``threads`` wanted every core; None otherwise."""
    if others is None or threads <= 1 or others < BUSY:
        return None
    if threads + others <= cores:
        return None
    return (f"other processes kept {others:.1f} of {cores} CPU cores busy while training with "
            f"{threads} threads: each step then waits for a shared core, which on 2 cores "
            f"ran about half as fast as 1 thread; set train.threads=1 (or fewer threads) "
            f"while they run")

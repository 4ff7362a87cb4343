"""CPU time and memory of processes, from /proc (Linux only; the bench runs on Linux).

CPU time is the stable figure on a noisy box: wall-clock throughput moves with hypervisor steal,
CPU seconds per request much less. A process tree is counted whole (a `tokenbook serve
--workers N` supervisor and its workers), since children's time only reaches the parent's
``cutime`` after they exit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in task.read_text().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def rss_bytes(pid: int) -> int:
    try:
        parts = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(parts[1]) * _PAGE


def tree_rss_bytes(pid: int) -> int:
    return sum(rss_bytes(p) for p in tree(pid))


@dataclass(frozen=True, slots=True)
class SystemCpu:
    """Whole-machine jiffies, to report steal (time the hypervisor gave to someone else)."""

    busy: int
    steal: int
    total: int

    @staticmethod
    def read() -> SystemCpu:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        total = sum(fields[:8])
        return SystemCpu(user + nice + system + irq + softirq, steal, total)

    def steal_share(self, later: SystemCpu) -> float:
        total = later.total - self.total
        return (later.steal - self.steal) / total if total > 0 else 0.0

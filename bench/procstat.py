"""CPU and memory accounting from the kernel's own per-process counters (proc(5)).

``/proc/<pid>/stat`` gives ``utime``/``stime`` (this process) and ``cutime``/``cstime`` (its
children that have exited and been reaped). Summing all four over a process tree before and
after a load phase gives that tree's CPU for the phase, whatever else the machine was doing:
a steadier figure than throughput on a shared 2-core machine, and independent of the load
generator's own appetite, which is accounted separately.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    ticks: int  # utime + stime + cutime + cstime
    system_ticks: int  # stime + cstime: time in the kernel (syscalls, fsync, network)


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses; it ends at the last ')'.
    close = text.rfind(")")
    comm = text[text.find("(") + 1 : close]
    fields = text[close + 2 :].split()
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    system_ticks = int(fields[12]) + int(fields[14])
    return ProcStat(pid=pid, ppid=int(fields[1]), comm=comm, ticks=ticks, system_ticks=system_ticks)


def all_stats() -> list[ProcStat]:
    stats = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def tree(root: int, stats: list[ProcStat] | None = None) -> list[ProcStat]:
    """``root`` and all its live descendants."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[ProcStat]] = {}
    by_pid = {s.pid: s for s in stats}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    if root not in by_pid:
        return []
    out = [by_pid[root]]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i].pid, ()))
        i += 1
    return out


def tree_cpu_seconds(root: int) -> float:
    return sum(s.ticks for s in tree(root)) / CLOCK_TICKS


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(total, kernel) CPU seconds of ``root`` and its live descendants."""
    procs = tree(root)
    return sum(s.ticks for s in procs) / CLOCK_TICKS, sum(s.system_ticks for s in procs) / CLOCK_TICKS


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL server process (postmaster, backends, writers).

    Backends that exit are reaped by the postmaster, so their time survives in its ``cutime``.
    Other clients of the same server are counted too; the bench is meant to run alone.
    """
    return sum(s.ticks for s in all_stats() if s.comm.startswith("postgres")) / CLOCK_TICKS


def postgres_running() -> bool:
    return any(s.comm.startswith("postgres") for s in all_stats())


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def worker_pids(root: int) -> list[int]:
    """The processes that serve requests: uvicorn's worker children, or the root itself when it
    serves alone. Helper processes of ``multiprocessing`` are not workers."""
    procs = [s for s in tree(root) if s.pid != root and "resource_tracker" not in cmdline(s.pid)]
    return [s.pid for s in procs] or [root]


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from the ``cpu`` line of
    ``/proc/stat``. Busy excludes idle and iowait; steal is time a hypervisor gave elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    fields += [0] * (8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS

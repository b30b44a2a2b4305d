"""CPU accounting for the benchmarks, read from /proc (Linux): the whole machine's busy time from /proc/stat, and
per process (or group of processes) ``utime + stime`` from /proc/<pid>/stat, plus ``cutime + cstime`` (the time of
children it reaped) where asked, so a PostgreSQL backend that ends inside the window is still counted (its time
moves to the postmaster's reaped children).

    before = Snapshot.take()
    ...  # the run
    used = Usage(before, Snapshot.take())
    used.machine_seconds(), used.group(lambda p: p.comm == "postgres"), used.of_pids({1234}), used.per_pid({1234})
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    ppid: int
    own: int  # utime + stime, jiffies (every thread of the process)
    reaped: int  # cutime + cstime: children it waited for
    args: str = ""  # the command line, read for PostgreSQL and Redis processes only (their title names the db/port)


def _read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()  # rest[0] is field 3 (state)
    args = ""
    if comm.startswith(("postgres", "postmaster", "redis-server")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return Proc(pid, comm, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]), args)


def processes() -> dict[int, Proc]:
    table: dict[int, Proc] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := _read_proc(int(name))) is not None:
            table[proc.pid] = proc
    return table


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot: busy is everything but idle and iowait."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    busy: int
    total: int
    procs: dict[int, Proc]

    @classmethod
    def take(cls) -> Snapshot:
        busy, total = _machine()
        return cls(time.monotonic(), busy, total, processes())


def descendants(root: int, procs: dict[int, Proc] | None = None) -> set[int]:
    """``root`` and every process below it."""
    table = procs if procs is not None else processes()
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


@dataclass(frozen=True)
class Usage:
    before: Snapshot
    after: Snapshot

    @property
    def wall(self) -> float:
        return self.after.at - self.before.at

    def machine_seconds(self) -> float:
        return (self.after.busy - self.before.busy) / TICK

    def machine_share(self) -> float:
        """Busy share of every core over the window (1.0 = every core busy all the time)."""
        total = self.after.total - self.before.total
        return (self.after.busy - self.before.busy) / total if total else 0.0

    def _delta(self, pids: Iterable[int], *, reaped: bool) -> float:
        jiffies = 0
        for pid in pids:
            old, new = self.before.procs.get(pid), self.after.procs.get(pid)
            if old is not None and new is not None and old.comm != new.comm:
                old = None  # not the same process (pid reused)
            for proc, sign in ((new, 1), (old, -1)):
                if proc is not None:
                    jiffies += sign * (proc.own + (proc.reaped if reaped else 0))
        return jiffies / TICK

    def group(self, member: Callable[[Proc], bool], *, reaped: bool = True) -> float:
        """CPU seconds in the window of every process (alive at either end) that ``member`` picks."""
        both = {**self.before.procs, **self.after.procs}
        return self._delta([pid for pid, proc in both.items() if member(proc)], reaped=reaped)

    def of_pids(self, pids: Iterable[int], *, reaped: bool = False) -> float:
        return self._delta(pids, reaped=reaped)

    def per_pid(self, pids: Iterable[int]) -> dict[int, float]:
        return {pid: self._delta([pid], reaped=False) for pid in sorted(pids)}


def is_postgres(proc: Proc) -> bool:
    """Every PostgreSQL process (whoever's: other sessions on this machine included)."""
    return proc.comm.startswith(("postgres", "postmaster"))


def postgres_of(database: str) -> Callable[[Proc], bool]:
    """PostgreSQL's share of one benchmark: the backends connected to ``database`` and the server's own background
    processes (WAL writer, checkpointer, autovacuum...), not other databases' backends. A backend of ``database``
    that ends inside the window is lost (its time goes to the postmaster's reaped children, which are everybody's):
    the benchmarks keep their connections pooled for the whole window."""

    def member(proc: Proc) -> bool:
        if not is_postgres(proc):
            return False
        title = proc.args.removeprefix("postgres:").split()
        if not proc.args.startswith("postgres:"):
            return False  # the postmaster: its reaped children are every database's
        # "postgres: 15/main: <user> <database> <client> <state>" for a backend; else a background process
        backend = any("(" in part or part == "[local]" for part in title)
        return database in title if backend else True

    return member


def is_redis(proc: Proc) -> bool:
    return proc.comm.startswith("redis-server")


def redis_on(port: int) -> Callable[[Proc], bool]:
    """The Redis server listening on ``port`` (fault tests start their own on other ports)."""
    return lambda proc: is_redis(proc) and f":{port}" in proc.args


def ms(seconds: float, per: int) -> float:
    """CPU milliseconds per item."""
    return seconds * 1000 / per if per else 0.0

"""What the benchmarks read of processes and the machine from /proc (CPU time, RSS, UDP
sockets and drops, load average)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def kernel_seconds(pid: int) -> float | None:
    """stime alone (system calls: for the relay mostly sendto), in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw.rsplit(")", 1)[1].split()[12]) / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return total - idle, total


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return inodes


def udp_rows(pids: list[int]) -> list[list[str]]:
    """The ``/proc/net/udp`` (and udp6) rows of the UDP sockets of ``pids``, split in fields."""
    owned: set[int] = set()
    for pid in pids:
        owned |= _socket_inodes(pid)
    rows = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 13 and int(parts[9]) in owned:
                    rows.append(parts)
    return rows


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped (full receive buffer) on the UDP sockets of ``pids``."""
    return sum(int(parts[12]) for parts in udp_rows(pids))


def udp_errors() -> dict[str, int]:
    """Machine-wide UDP error counters (/proc/net/snmp): other work on the machine counts too."""
    lines = [
        x.split() for x in Path("/proc/net/snmp").read_text().splitlines() if x.startswith("Udp:")
    ]
    if len(lines) < 2:
        return {}
    table = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=False))
    return {k: table.get(k, 0) for k in ("InErrors", "RcvbufErrors", "SndbufErrors")}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])

"""Load viewers' video frames counted by the kernel, before their sockets (nftables, root).

Even a sweep that reads every socket with ``recvmmsg`` costs ~0.25 ms of CPU per viewer-second,
most of it the kernel's receive path run for the load process; on a machine the relay shares
with its load, that is CPU taken from the relay under test. A ``NetfilterTally`` makes one
nftables table per load process that, for the UDP ports of the viewers it is given, counts the
video packets ending a frame (RTP version 2, a video payload type, the marker bit) per port and
drops every RTP packet to those ports at the input hook, before any socket queue. STUN, DTLS and
RTCP still reach the sockets: consent checks are answered, sender reports arrive and the viewers
go on sending receiver reports.

What is counted is what the relay delivered to this machine for each viewer, which is what a
capacity measurement needs; payloads, sequence gaps and audio are not seen. The table is removed
by ``close()``; ``remove_stale()`` removes those of load processes that died without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable

TABLE_PREFIX = "studycast_load_"
NFT_TIMEOUT_S = 10.0
RTCP_SECOND_BYTES = "192-208"  # RFC 7983's RTCP range for the second byte: never dropped


class TallyError(RuntimeError):
    """nft refused a command (the message says which and why)."""


def unavailable() -> str | None:
    """Why a tally cannot be used on this machine, or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "counting in the kernel needs root (nftables)"
    if shutil.which("nft") is None:
        return "nft is not installed (Debian: apt-get install nftables)"
    return None


def _nft(script: str | None = None, *args: str) -> str:
    command = ["nft", *args] if script is None else ["nft", "-f", "-"]
    try:
        done = subprocess.run(  # noqa: S603 (a fixed program, arguments built here)
            command,
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TallyError(f"nft could not run: {exc}") from exc
    if done.returncode != 0:
        what = (script or " ".join(args)).strip().splitlines()[0]
        raise TallyError(f"nft refused {what!r}: {done.stderr.strip()}")
    return done.stdout


def remove_stale() -> list[str]:
    """Delete the tables of load processes that are gone; returns their names."""
    listing = json.loads(_nft(None, "-j", "list", "tables"))
    removed = []
    for item in listing.get("nftables", []):
        table = item.get("table")
        if not table or not str(table.get("name", "")).startswith(TABLE_PREFIX):
            continue
        name = table["name"]
        pid = name[len(TABLE_PREFIX) :]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue
        _nft(None, "delete", "table", "inet", name)
        removed.append(name)
    return removed


class NetfilterTally:
    """Per-port video frame counts of this process's load viewers, kept by the kernel."""

    def __init__(self, table: str | None = None) -> None:
        self.table = table or f"{TABLE_PREFIX}{os.getpid()}"
        self.frames: dict[int, int] = {}  # port → frames, as of the last ``refresh()``
        # Monotonic times just before and just after the kernel's counters were listed: the
        # counts are as of some moment between the two (a starved process widens the gap).
        self.read_between: tuple[float, float] | None = None
        self._video_types: set[int] = set()
        self._adding: set[int] = set()
        self._removing: set[int] = set()
        self._open = False

    def open(self) -> None:
        t = self.table
        _nft(
            f"add table inet {t}\n"
            f"add set inet {t} ports {{ type inet_service; }}\n"
            f"add set inet {t} frames "
            "{ type inet_service; size 65535; flags dynamic; counter; }\n"
            f"add chain inet {t} input {{ type filter hook input priority raw; policy accept; }}\n"
            f"add rule inet {t} input udp dport @ports @th,64,2 2 "
            f"@th,72,8 != {RTCP_SECOND_BYTES} drop\n"
        )
        self._open = True

    def watch(self, port: int, video_types: Iterable[int]) -> None:
        """Count and drop the RTP to ``port`` from the next ``sync()`` on."""
        if not self._open:
            raise TallyError("the tally is not open")
        for payload_type in sorted(set(video_types) - self._video_types):
            if not 0 <= payload_type < 128:
                raise ValueError(f"an RTP payload type is 0-127, not {payload_type}")
            # Before the rule that drops the rest: a frame's last packet is counted, then dropped.
            _nft(
                f"insert rule inet {self.table} input udp dport @ports @th,64,2 2 "
                f"@th,73,7 {payload_type} @th,72,1 1 update @frames {{ udp dport }} drop\n"
            )
            self._video_types.add(payload_type)
        self._removing.discard(port)
        self._adding.add(port)

    def forget(self, port: int) -> None:
        """Stop counting ``port`` (its socket is closing) at the next ``sync()``."""
        self._adding.discard(port)
        self._removing.add(port)

    def sync(self) -> None:
        """Apply the ports watched and forgotten since the last call, in one nft command."""
        if not self._open or not (self._adding or self._removing):
            return
        t, lines = self.table, []
        if self._adding:
            lines.append(f"add element inet {t} ports {{ {_ports(self._adding)} }}")
        for port in sorted(self._removing):
            lines.append(f"delete element inet {t} ports {{ {port} }}")
            if port in self.frames:
                lines.append(f"delete element inet {t} frames {{ {port} }}")
                del self.frames[port]
        self._adding.clear()
        self._removing.clear()
        _nft("\n".join(lines) + "\n")

    def refresh(self) -> dict[int, int]:
        """Read every port's frame count from the kernel (one nft command)."""
        if not self._open:
            return self.frames
        self.sync()
        before = time.monotonic()
        text = _nft(None, "-j", "list", "set", "inet", self.table, "frames")
        self.read_between = (before, time.monotonic())
        listing = json.loads(text)
        frames = {}
        for item in listing.get("nftables", []):
            for element in (item.get("set") or {}).get("elem", []):
                entry = element.get("elem", {})
                if isinstance(entry.get("val"), int):
                    frames[entry["val"]] = int(entry.get("counter", {}).get("packets", 0))
        self.frames = frames
        return frames

    def close(self) -> None:
        if self._open:
            self._open = False
            _nft(None, "delete", "table", "inet", self.table)


def _ports(ports: Iterable[int]) -> str:
    checked = sorted(int(p) for p in ports)
    if any(not 0 < p < 65536 for p in checked):
        raise ValueError(f"a UDP port is 1-65535: {checked}")
    return ", ".join(map(str, checked))

"""How much more relay-like work this machine's cores do together than one alone.

``serve --workers N`` can scale no better than the machine does: when cores share caches and
memory bandwidth with each other (and, on a virtual machine, with other guests), N busy cores do
less than N times the work of one. This probe measures that ceiling for the relay's kind of work,
with no studycast code in the loop: per packet, SRTP-protect a 1,100-byte RTP packet with the
viewer's own libsrtp session (as aiortc does), send it to the viewer's loopback UDP socket, and
read it back there later (the viewer's side), for 200 viewers in turn. It runs ``--seconds`` in
one process, then in one process per core at once, and prints packets per second and the ratio
(all processes together / one alone). A pure-Python arithmetic loop is measured the same way,
as the contrast without memory traffic. ``bench_scale.py`` runs it before and after its
capacity runs, so its ratio can be read against the machine's own in the same run.

    .venv/bin/python bench/core_scaling.py [--seconds 5] [--procs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import struct
import sys
import time
from typing import Any

PAYLOAD = 1100
VIEWERS = 200
ROUNDS_PER_DRAIN = 8  # ~8 datagrams queue per socket between reads


def relay_like_work(seconds: float, viewers: int = VIEWERS) -> int:
    """Packets protected, sent and read back within ``seconds``: one SRTP session and one
    receiving socket per viewer, ``VIEWERS`` of them served in turn (a relay's fan-out), every
    socket read empty once per ``ROUNDS_PER_DRAIN`` rounds (a load viewer's sweep)."""
    from pylibsrtp import Policy, Session

    sessions, receivers = [], []
    for n in range(viewers):
        key = bytes((n + i) & 0xFF for i in range(30))
        sessions.append(Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        receivers.append(receiver)
    addresses = [r.getsockname() for r in receivers]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    buffer = bytearray(2048)
    payload = os.urandom(PAYLOAD)
    packets = rounds = 0
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            header = struct.pack("!BBHII", 0x80, 96, rounds & 0xFFFF, rounds * 90, 1234)
            packet = header + payload
            for session, address in zip(sessions, addresses, strict=True):
                sender.sendto(session.protect(packet), address)
            packets += viewers
            rounds += 1
            if rounds % ROUNDS_PER_DRAIN == 0:
                for receiver in receivers:
                    while True:
                        try:
                            receiver.recv_into(buffer)
                        except BlockingIOError:
                            break
    finally:
        sender.close()
        for receiver in receivers:
            receiver.close()
    return packets


def arithmetic_work(seconds: float, viewers: int = VIEWERS) -> int:
    """Rounds of a small pure-Python loop within ``seconds`` (no memory traffic to speak of)."""
    rounds = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        total = 0
        for i in range(1000):
            total += i * i
        rounds += 1
    return rounds


WORKS = {"relay_like": relay_like_work, "arithmetic": arithmetic_work}


def _worker(name: str, seconds: float, viewers: int, start: Any, results: Any) -> None:
    start.wait()
    results.put(WORKS[name](seconds, viewers))


def measure(name: str, procs: int, seconds: float, viewers: int = VIEWERS) -> list[int]:
    """Run ``procs`` processes of one work at the same time; each one's count."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    children = [
        context.Process(target=_worker, args=(name, seconds, viewers, start, results), daemon=True)
        for _ in range(procs)
    ]
    for child in children:
        child.start()
    time.sleep(1.0)  # every child has imported what it needs
    start.set()
    try:
        counts = [results.get(timeout=seconds + 30) for _ in children]
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    return counts


def core_scaling(
    seconds: float = 5.0, procs: int | None = None, viewers: int = VIEWERS
) -> dict[str, Any]:
    """Per work: rate alone, rate of ``procs`` at once, and the ratio."""
    procs = procs or os.cpu_count() or 1
    report: dict[str, Any] = {"procs": procs, "seconds": seconds, "viewers": viewers}
    for name in WORKS:
        (alone,) = measure(name, 1, seconds, viewers)
        together = measure(name, procs, seconds, viewers)
        report[name] = {
            "alone_per_s": round(alone / seconds),
            "together_per_s": round(sum(together) / seconds),
            "each_per_s": [round(c / seconds) for c in together],
            "ratio": round(sum(together) / alone, 2) if alone else None,
        }
    return report


def describe(report: dict[str, Any]) -> str:
    lines = []
    for name in WORKS:
        r = report[name]
        lines.append(
            f"{name}: one process {r['alone_per_s']:,}/s, {report['procs']} at once "
            f"{r['together_per_s']:,}/s = {r['ratio']}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument("--procs", type=int, default=None, help="at once (the core count)")
    parser.add_argument(
        "--viewers", type=int, default=VIEWERS, help=f"SRTP sessions and sockets ({VIEWERS})"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 60 or (args.procs is not None and not 1 <= args.procs <= 64):
        parser.error("--seconds 1..60, --procs 1..64")
    if not 1 <= args.viewers <= 5000:
        parser.error("--viewers 1..5000")
    report = core_scaling(args.seconds, args.procs, args.viewers)
    print(f"nproc {os.cpu_count()}, Python {sys.version.split()[0]}")
    print(describe(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()

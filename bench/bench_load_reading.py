"""What a load viewer's media costs the load process, per datagram, three ways in one run.

``bench_scale.py`` runs its load viewers on the machine whose cores it measures, so every
microsecond they spend is taken from the relay under test. This measures the three ways a
``HeaderCountingViewer`` process can count its viewers' frames, on the same traffic:

1. **one by one**: ``recv_into`` per datagram and ``HeaderCounter.count`` on it (the sweep
   without a table, and what it does off Linux);
2. **table**: one ``recvmmsg`` per socket into a ``DatagramTable`` (12-byte headers), counted
   with numpy once per pass (``Sweep``'s default on Linux);
3. **kernel**: a ``NetfilterTally`` counts frames per port at the input hook and drops the RTP
   before the sockets (root and nftables only; otherwise skipped with the reason).

Each round sends ``--per-socket`` RTP datagrams (video with a marker every third packet, audio
between; ~1,100 and ~100 bytes) to each of ``--sockets`` loopback sockets, then the way under
test counts them; only the counting is timed (user and system CPU of this process, from
``getrusage``). In the kernel way the sending already did the work on loopback (the receive
path runs in the sender's system call), so its figure is the time to read the counters, and
the sending is timed too, for all three, to show where the kernel's share went.

    .venv/bin/python bench/bench_load_reading.py [--sockets 400] [--per-socket 12] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import struct
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from client import netfilter_tally  # noqa: E402 (after the path set-up)
from client.header_batch import DatagramTable  # noqa: E402
from client.header_viewer import HeaderCounter  # noqa: E402

HEADER = struct.Struct("!BBHII")
VIDEO, AUDIO = 96, 111


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Traffic:
    """Loopback sockets and a sender that queues the same mix of datagrams on each."""

    def __init__(self, sockets: int, per_socket: int) -> None:
        self.receivers = []
        for _ in range(sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.receivers.append(s)
        self.addresses = [s.getsockname() for s in self.receivers]
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.per_socket = per_socket
        self.sequence = 0
        self.counters = [self.counter() for _ in self.receivers]

    @staticmethod
    def counter() -> HeaderCounter:
        made = HeaderCounter()
        made.kinds.update({VIDEO: "video", AUDIO: "audio"})
        return made

    def send(self) -> None:
        for address in self.addresses:
            for i in range(self.per_socket):
                self.sequence += 1
                video = i % 3 != 1
                second = (0x80 if i % 3 == 2 else 0) | (VIDEO if video else AUDIO)
                head = HEADER.pack(0x90, second, self.sequence & 0xFFFF, self.sequence // 3, 5)
                self.sender.sendto(head + bytes(1088 if video else 88), address)

    def close(self) -> None:
        for s in (*self.receivers, self.sender):
            s.close()


def one_by_one(traffic: Traffic) -> Callable[[], None]:
    buffer = bytearray(2048)

    def read() -> None:
        for s, c in zip(traffic.receivers, traffic.counters, strict=True):
            recv_into, count = s.recv_into, c.count
            while True:
                try:
                    size = recv_into(buffer)
                except BlockingIOError:
                    break
                count(buffer, size)

    return read


def table(traffic: Traffic) -> Callable[[], None]:
    made = DatagramTable()

    def read() -> None:
        for s, c in zip(traffic.receivers, traffic.counters, strict=True):
            made.read(s.fileno(), c, None, lambda data: None, lambda error: None)
        made.flush()

    return read


def measure(traffic: Traffic, read: Callable[[], object], rounds: int) -> dict[str, float]:
    sent_cpu = counted_cpu = (0.0, 0.0)
    for _ in range(rounds):
        a = cpu()
        traffic.send()
        b = cpu()
        read()
        c = cpu()
        sent_cpu = (sent_cpu[0] + b[0] - a[0], sent_cpu[1] + b[1] - a[1])
        counted_cpu = (counted_cpu[0] + c[0] - b[0], counted_cpu[1] + c[1] - b[1])
    n = rounds * len(traffic.receivers) * traffic.per_socket
    return {
        "count_user_us": 1e6 * counted_cpu[0] / n,
        "count_sys_us": 1e6 * counted_cpu[1] / n,
        "send_us": 1e6 * (sent_cpu[0] + sent_cpu[1]) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=400, help="receiving sockets (400)")
    parser.add_argument("--per-socket", type=int, default=12, help="datagrams a round (12)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds per way and pass (30)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the ways (3)")
    args = parser.parse_args()
    if not (1 <= args.sockets <= 2000 and 1 <= args.per_socket <= 64):
        parser.error("--sockets 1..2000, --per-socket 1..64")
    if not (1 <= args.rounds <= 500 and 1 <= args.passes <= 10):
        parser.error("--rounds 1..500, --passes 1..10")
    print(
        f"load reading benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: nproc "
        f"{os.cpu_count()}, Python {platform.python_version()}; "
        f"{args.sockets} sockets x {args.per_socket} datagrams x {args.rounds} rounds"
    )
    traffic = Traffic(args.sockets, args.per_socket)
    tally = None
    why_not = netfilter_tally.unavailable()
    if why_not is None:
        tally = netfilter_tally.NetfilterTally()
        tally.open()
    ports = [address[1] for address in traffic.addresses]
    try:
        ways: dict[str, Callable[[], None]] = {"one by one": one_by_one(traffic)}
        if DatagramTable.available():
            ways["table"] = table(traffic)
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.passes):
            for name, read in ways.items():
                results.setdefault(name, []).append(measure(traffic, read, args.rounds))
            if tally is not None:
                for port in ports:  # RTP to them is counted and dropped from the sync on
                    tally.watch(port, [VIDEO])
                tally.sync()
                results.setdefault("kernel", []).append(
                    measure(traffic, tally.refresh, args.rounds)
                )
                for port in ports:
                    tally.forget(port)
                tally.sync()
    finally:
        if tally is not None:
            tally.close()
        traffic.close()
    print("| way | count: user us / datagram | count: system us | count: total us | send us |")
    print("|---|---:|---:|---:|---:|")
    totals = {}
    for name, runs in results.items():
        user = min(r["count_user_us"] for r in runs)
        system = min(r["count_sys_us"] for r in runs)
        send = min(r["send_us"] for r in runs)
        totals[name] = user + system
        print(f"| {name} | {user:.2f} | {system:.2f} | {user + system:.2f} | {send:.2f} |")
    print("(the lowest of the passes; CPU time is counted in ticks, so small figures are coarse)")
    base = totals["one by one"]
    for name, total in totals.items():
        if name != "one by one":
            print(f"{name}: {total / base:.2f} of one by one's counting CPU per datagram")
    if why_not is not None:
        print(f"kernel: not measured ({why_not})")


if __name__ == "__main__":
    main()

"""Batched header counting: the vectorised pass against the per-datagram one, and recvmmsg
reading from real loopback sockets."""

from __future__ import annotations

import random
import socket
import struct
from typing import TypeVar

import numpy as np
import pytest

from client.header_batch import DatagramTable, count_rows
from client.header_viewer import HeaderCounter

T = TypeVar("T")
HEADER = struct.Struct("!BBHII")
VIDEO, AUDIO, RTX = 96, 111, 97
FIELDS = ("packets", "bytes", "frames", "expected", "lost", "late", "highest", "last_sequence")

needs_recvmmsg = pytest.mark.skipif(
    not DatagramTable.available(), reason="recvmmsg(2) is Linux only"
)


def counter() -> HeaderCounter:
    made = HeaderCounter(clock=lambda: 1.0)
    made.kinds.update({VIDEO: "video", AUDIO: "audio", RTX: "rtx"})
    return made


def stream_of(rng: random.Random, ssrc: int, payload_type: int, n: int) -> list[bytes]:
    """``n`` packets of one SSRC with what a network does to them: loss, duplicates,
    reordering, a sequence wrap, several packets per video frame."""
    sequence, timestamp = rng.randrange(0x10000 - n // 2, 0x10000), rng.randrange(1 << 32)
    packets = []
    for i in range(n):
        end_of_frame = payload_type != VIDEO or rng.random() < 0.4
        size = rng.choice((60, 200, 1100, 1200))
        packets.append(
            HEADER.pack(
                0x80,
                (0x80 if end_of_frame else 0) | payload_type,
                sequence & 0xFFFF,
                timestamp & 0xFFFFFFFF,
                ssrc,
            )
            + bytes(size - 12)
        )
        sequence += 1
        if end_of_frame:
            timestamp += 3000 if i % 50 else 0xFFFFFFFF  # and once across the wrap
    out: list[bytes] = []
    for packet in packets:
        roll = rng.random()
        if roll < 0.05:
            continue  # lost
        out.append(packet)
        if roll > 0.97:
            out.append(packet)  # duplicated
    for _ in range(n // 20):  # a few swapped neighbours
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def interleave(rng: random.Random, streams: list[list[T]]) -> list[T]:
    """The lists' items mixed at random, each list's in its own order."""
    pending = [list(s) for s in streams if s]
    out: list[T] = []
    while pending:
        source = rng.choice(pending)
        out.append(source.pop(0))
        if not source:
            pending.remove(source)
    return out


def as_table(datagrams: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    headers = np.zeros((len(datagrams), 12), np.uint8)
    for row, (_, data) in enumerate(datagrams):
        head = data[:12]
        headers[row, : len(head)] = np.frombuffer(head, np.uint8)
    sizes = np.array([len(d) for _, d in datagrams], np.int64)
    owners = np.array([o for o, _ in datagrams], np.int64)
    return headers, sizes, owners


def snapshot(c: HeaderCounter) -> dict[int, tuple[object, ...]]:
    return {
        ssrc: (s.kind, s.last_timestamp, *(getattr(s, f) for f in FIELDS))
        for ssrc, s in c.streams.items()
    }


@pytest.mark.parametrize("seed", range(8))
def test_the_vectorised_count_equals_counting_each_datagram_in_turn(seed: int) -> None:
    rng = random.Random(seed)
    viewers = 5
    per_viewer = []
    for owner in range(viewers):
        streams = [
            stream_of(rng, 1000 + owner, VIDEO, 400),
            stream_of(rng, 2000 + owner, AUDIO, 250),
            stream_of(rng, 3000 + owner, RTX, 20),
        ]
        sender_report = HEADER.pack(0x80, 200, 6, 0, 1000 + owner)[:8] + bytes(20)
        streams.append([sender_report] * 3)
        per_viewer.append([(owner, d) for d in interleave(rng, streams)])
    traffic = interleave(rng, per_viewer)  # viewers mixed, each stream in its own order
    one_by_one = [counter() for _ in range(viewers)]
    for owner, data in traffic:
        one_by_one[owner].datagram(data)
    batched = [counter() for _ in range(viewers)]
    cut = rng.randrange(1, len(traffic))  # two passes: state carries from one to the next
    for part in (traffic[:cut], traffic[cut:]):
        count_rows(*as_table(part), batched)
    for expected, got in zip(one_by_one, batched, strict=True):
        assert snapshot(got) == snapshot(expected)
        assert got.rtcp == expected.rtcp == 3
        assert got.total("video", "frames") > 100


def test_rows_that_are_not_media_are_not_counted() -> None:
    c = counter()
    stun = bytes([0, 1, 0, 0]) + bytes(16)
    short = bytes([0x80, VIDEO, 0, 1])
    media = HEADER.pack(0x80, 0x80 | VIDEO, 7, 90000, 42) + bytes(100)
    count_rows(*as_table([(0, stun), (0, short), (0, media)]), [c])
    assert list(c.streams) == [42]
    stream = c.streams[42]
    assert (stream.packets, stream.frames, stream.bytes, stream.highest) == (1, 1, 112, 7)


@needs_recvmmsg
def test_a_table_reads_a_socket_empty_counts_rtp_and_hands_on_the_rest() -> None:
    rng = random.Random(7)
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for r in receivers:
            r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            r.bind(("127.0.0.1", 0))
            r.setblocking(False)
        stun = bytes([0, 1, 0, 8]) + bytes(range(16)) + b"username"
        sent: list[list[bytes]] = []
        for i, r in enumerate(receivers):
            datagrams = interleave(
                rng, [stream_of(rng, 10 + i, VIDEO, 50), stream_of(rng, 20 + i, AUDIO, 30)]
            )
            datagrams.insert(len(datagrams) // 2, stun)
            for data in datagrams:
                sender.sendto(data, r.getsockname())
            sent.append(datagrams)
        # A small table: it fills and is counted in the middle of the pass.
        table = DatagramTable(rows=64, per_call=16)
        batched = [counter() for _ in receivers]
        handed: list[tuple[int, bytes]] = []
        errors: list[OSError] = []
        for i, r in enumerate(receivers):
            assert table.read(
                r.fileno(), batched[i], None, lambda d, i=i: handed.append((i, d)), errors.append
            )
        table.flush()
        assert errors == []
        assert handed == [(i, stun) for i in range(3)]
        for i, datagrams in enumerate(sent):
            expected = counter()
            for data in datagrams:
                expected.datagram(data)
            assert snapshot(batched[i]) == snapshot(expected)
            with pytest.raises(BlockingIOError):
                receivers[i].recv(2048)  # read empty
        # A limit leaves the rest queued; a closed socket says so.
        for _ in range(10):
            sender.sendto(sent[0][0], receivers[0].getsockname())
        assert table.read(receivers[0].fileno(), batched[0], 4, handed.append, errors.append)
        assert table.rows == 4
        table.flush()
        assert len(receivers[0].recv(2048)) == len(sent[0][0])
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fd = closed.fileno()
        closed.close()
        assert not table.read(fd, batched[0], None, handed.append, errors.append)
    finally:
        sender.close()
        for r in receivers:
            r.close()

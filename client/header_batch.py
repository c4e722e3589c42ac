"""Many load viewers' datagrams read with few system calls and counted in one vectorised pass.

``HeaderCounter.count`` costs a Python call, a ``recv_into`` system call and a dozen attribute
updates per datagram; at a few hundred viewers of a 0.6 Mbit/s stream that is ~100,000
datagrams a second, and the load generator then takes from the relay under test the core time
it spends. Here a sweep reads each socket with one ``recvmmsg(2)`` call (every datagram queued
on it, up to a limit), which copies each datagram's 12-byte RTP header into one row of a shared
table and the rest into a scratch slot that the next call overwrites; at the end of the pass
``count_rows`` does for the whole table, with numpy, what ``HeaderCounter.count`` would have
done datagram by datagram, and leaves the same counts in the same ``HeaderStream`` objects.

STUN and DTLS (first byte outside RFC 7983's RTP range) are rare after the handshake: they are
rebuilt from their row and scratch slot right after the call that read them and handed on.

``DatagramTable.available()`` is False off Linux (no ``recvmmsg``): callers then read per
datagram as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from client.header_viewer import HeaderCounter, HeaderStream

PER_CALL = 64  # datagrams one recvmmsg call may read (a sweep's ~12 per socket fit in one)
TABLE_ROWS = 8192  # rows counted per pass before the table is counted and refilled
SCRATCH = 2048  # bytes after the header kept per datagram (STUN/DTLS/RTP are < 1500 here)
_MSG_DONTWAIT = 0x40
_RTP_FIRST_BYTES = bytes(range(128, 192))  # RFC 7983: RTP and RTCP
_GROUP_SPAN = 1 << 45  # keeps groups apart in one running maximum (extended sequences < 2^44)


# --- counting a table of headers --------------------------------------------------------------


def count_rows(
    headers: np.ndarray,
    sizes: np.ndarray,
    owners: np.ndarray,
    counters: Sequence[HeaderCounter],
) -> None:
    """Count ``headers`` (rows of 12 bytes, in arrival order) as ``counters[owner].count`` would
    count each datagram in turn: the same packets, bytes, frames, expected, lost and late
    figures, the same highest sequence and last frame timestamp, for sequence jumps of less than
    32,768 (any real stream's). ``sizes`` are the datagrams' lengths; rows shorter than a header
    or outside the RTP range are not counted (they are not media)."""
    if len(headers) == 0:
        return
    first, second = headers[:, 0], headers[:, 1]
    rtp = (first > 127) & (first < 192) & (sizes >= 12)
    rtcp = rtp & (second > 191) & (second < 209)
    if rtcp.any():
        for index, n in _counts(owners[rtcp]):
            counters[index].rtcp += n
    rows = np.flatnonzero(rtp & ~rtcp)
    if rows.size == 0:
        return
    header = headers[rows]
    owner = owners[rows].astype(np.int64)
    ssrc = _big_endian_u32(header, 8)
    sequence = (header[:, 2].astype(np.int64) << 8) | header[:, 3]
    timestamp = _big_endian_u32(header, 4)
    keys, first_rows, group = np.unique(
        (owner << 32) | ssrc, return_index=True, return_inverse=True
    )
    group = group.ravel()
    streams = _streams(keys, first_rows, header, sequence, counters)
    seed_highest = np.fromiter((s.highest for s in streams), np.int64, len(streams))
    seed_timestamp = np.fromiter((s.last_timestamp for s in streams), np.int64, len(streams))
    video = np.fromiter((s.video for s in streams), np.bool_, len(streams))

    # Each stream's rows together, in arrival order.
    order = np.argsort(group, kind="stable")
    g, seq, ts = group[order], sequence[order], timestamp[order]
    marker = (header[order, 1] & 0x80) != 0
    size = sizes[rows][order].astype(np.int64)
    start = np.empty(len(g), np.bool_)
    start[0] = True
    np.not_equal(g[1:], g[:-1], out=start[1:])
    starts = np.flatnonzero(start)
    ends = np.append(starts[1:], len(g)) - 1

    # Extended sequence numbers: each row's signed step from the row before (the first from
    # the stream's highest so far), summed up; a row is accepted when it passes every earlier.
    previous = np.empty_like(seq)
    previous[1:] = seq[:-1]
    previous[starts] = seed_highest & 0xFFFF
    step = (seq - previous) & 0xFFFF
    step = np.where(step >= 0x8000, step - 0x10000, step)
    summed = np.cumsum(step)
    before = summed[starts] - step[starts]
    extended = seed_highest[g] + summed - before[g]
    offset = g * _GROUP_SPAN
    running = np.maximum.accumulate(extended + offset) - offset
    passed = np.empty_like(running)
    passed[1:] = running[:-1]
    passed[starts] = seed_highest
    passed = np.maximum(passed, seed_highest[g])
    accepted = extended > passed
    highest = np.maximum(running[ends], seed_highest)

    # Frames: a new timestamp among the accepted rows that end a frame (the marker bit for
    # video, every audio packet); comparing with the previous such row is the same as comparing
    # with the last frame counted, since a row not counted repeats that frame's timestamp.
    ends_frame = np.flatnonzero(accepted & (marker | ~video[g]))
    frame_group, frame_ts = g[ends_frame], ts[ends_frame]
    last = np.empty_like(frame_ts)
    if len(frame_ts):
        last[1:] = frame_ts[:-1]
        new_group = np.empty(len(frame_group), np.bool_)
        new_group[0] = True
        np.not_equal(frame_group[1:], frame_group[:-1], out=new_group[1:])
        last[new_group] = seed_timestamp[frame_group[new_group]]
    counted = frame_ts != last
    counted_group, counted_ts = frame_group[counted], frame_ts[counted]
    last_timestamp = seed_timestamp.copy()
    if len(counted_group):
        final = np.append(counted_group[1:] != counted_group[:-1], True)
        last_timestamp[counted_group[final]] = counted_ts[final]

    n = len(streams)
    packets = np.bincount(g, minlength=n)
    accepted_n = np.bincount(g[accepted], minlength=n)
    expected = highest - seed_highest
    results = zip(
        streams,
        packets.tolist(),
        np.bincount(g, weights=size, minlength=n).astype(np.int64).tolist(),
        np.bincount(counted_group, minlength=n).tolist(),
        expected.tolist(),
        (expected - accepted_n).tolist(),
        (packets - accepted_n).tolist(),
        highest.tolist(),
        last_timestamp.tolist(),
        strict=True,
    )
    for stream, p, b, f, e, lost, late, high, stamp in results:
        stream.packets += p
        stream.bytes += b
        stream.frames += f
        stream.expected += e
        stream.lost += lost
        stream.late += late
        stream.highest = high
        stream.last_sequence = high & 0xFFFF
        stream.last_timestamp = stamp


def _counts(values: np.ndarray) -> list[tuple[int, int]]:
    found, n = np.unique(values, return_counts=True)
    return list(zip(found.tolist(), n.tolist(), strict=True))


def _big_endian_u32(header: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(header[:, at : at + 4]).view(">u4").ravel().astype(np.int64)


def _streams(
    keys: np.ndarray,
    first_rows: np.ndarray,
    header: np.ndarray,
    sequence: np.ndarray,
    counters: Sequence[HeaderCounter],
) -> list[HeaderStream]:
    """Each (owner, SSRC)'s stream, made from its first row as ``count`` would make it."""
    streams = []
    for key, row in zip(keys.tolist(), first_rows.tolist(), strict=True):
        counter, ssrc = counters[key >> 32], key & 0xFFFFFFFF
        stream = counter.streams.get(ssrc)
        if stream is None:
            stream = counter.new_stream(ssrc, int(header[row, 1]) & 0x7F, int(sequence[row]))
        streams.append(stream)
    return streams


# --- reading sockets into the table -----------------------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def _load_recvmmsg() -> Any:
    if not sys.platform.startswith("linux"):  # recvmmsg(2) is Linux's
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    function.restype = ctypes.c_int
    return function


_recvmmsg = _load_recvmmsg()


class DatagramTable:
    """One sweep's datagrams: headers in rows, counted by ``flush()`` (and whenever full)."""

    def __init__(self, rows: int = TABLE_ROWS, per_call: int = PER_CALL) -> None:
        if _recvmmsg is None:
            raise OSError("recvmmsg is not available on this system")
        if not 0 < per_call <= rows:
            raise ValueError("a table holds at least one call's datagrams")
        self.capacity = rows
        self.per_call = per_call
        self.headers = np.zeros((rows, 12), np.uint8)
        self.owners = np.zeros(rows, np.int64)
        self._flat = self.headers.reshape(-1)
        self._scratch = np.zeros(per_call * SCRATCH, np.uint8)
        self._iov = (_Iovec * (2 * rows))()
        self._messages = (_Mmsghdr * rows)()
        head, scratch = self.headers.ctypes.data, self._scratch.ctypes.data
        iov_at, iov_size = ctypes.addressof(self._iov), ctypes.sizeof(_Iovec)
        for row in range(rows):
            self._iov[2 * row].base = head + 12 * row
            self._iov[2 * row].len = 12
            self._iov[2 * row + 1].base = scratch + SCRATCH * (row % per_call)
            self._iov[2 * row + 1].len = SCRATCH
            self._messages[row].hdr.iov = iov_at + 2 * row * iov_size
            self._messages[row].hdr.iovlen = 2
        stride = ctypes.sizeof(_Mmsghdr) // 4
        words = (ctypes.c_uint32 * (rows * stride)).from_buffer(self._messages)
        self.sizes = np.ctypeslib.as_array(words).reshape(rows, stride)[:, _Mmsghdr.len.offset // 4]
        self._messages_at = ctypes.addressof(self._messages)
        self._message_size = ctypes.sizeof(_Mmsghdr)
        self.rows = 0
        self.counters: list[HeaderCounter] = []

    @staticmethod
    def available() -> bool:
        return _recvmmsg is not None

    def read(
        self,
        fd: int,
        counter: HeaderCounter,
        limit: int | None,
        other: Callable[[bytes], None],
        error: Callable[[OSError], None],
    ) -> bool:
        """Read what is queued on ``fd`` (at most ``limit`` datagrams) into the table for
        ``counter``; STUN and DTLS go to ``other`` at once, a socket error to ``error``.
        False once the socket is closed."""
        left = limit
        owner = -1
        while left is None or left > 0:
            if self.rows + self.per_call > self.capacity:
                self.flush()
                owner = -1
            if owner < 0:
                owner = len(self.counters)
                self.counters.append(counter)
            wanted = self.per_call if left is None else min(self.per_call, left)
            at = self.rows
            got = _recvmmsg(
                fd, self._messages_at + at * self._message_size, wanted, _MSG_DONTWAIT, None
            )
            if got < 0:
                code = ctypes.get_errno()
                if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return True
                if code == errno.EBADF:
                    return False
                error(OSError(code, os.strerror(code)))
                return True
            self.owners[at : at + got] = owner
            if (
                self._flat[12 * at : 12 * (at + got) : 12]
                .tobytes()
                .translate(None, _RTP_FIRST_BYTES)
            ):
                self._hand_on(at, got, other)
            self.rows += got
            if left is not None:
                left -= got
            if got < wanted:
                return True
        return True

    def _hand_on(self, at: int, got: int, other: Callable[[bytes], None]) -> None:
        """The rows of one call that are not RTP: rebuilt and handed on, then left uncounted."""
        for row in range(at, at + got):
            if 127 < self._flat[12 * row] < 192:
                continue
            size = int(self.sizes[row])
            slot = SCRATCH * (row % self.per_call)
            data = self.headers[row, : min(size, 12)].tobytes()
            data += self._scratch[slot : slot + max(0, size - 12)].tobytes()
            self._flat[12 * row] = 0  # not RTP: count_rows skips it
            other(data)

    def flush(self) -> None:
        """Count every row read since the last flush into its counter; empty the table."""
        n = self.rows
        if n:
            count_rows(
                self.headers[:n], self.sizes[:n].astype(np.int64), self.owners[:n], self.counters
            )
        self.rows = 0
        self.counters = []

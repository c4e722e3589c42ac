"""A session's source falling behind live on this node: refuse new viewers, then shed some.

A relay short of CPU reads its source (the broadcaster, or an edge's or worker's upstream) later
and later; the packets wait in the socket's receive buffer. Viewers still get every frame, later.
But the ICE consent answers (RFC 7675) wait in the same queue: aioice sends a check about every
5 s, counts it failed if no answer is read within 0.5 s, and closes the connection after six
failures in a row. So a node that stays over half a second behind for about 30 s loses the
broadcaster, for everyone. Before that, this node stops taking viewers (HTTP 503 with
``Retry-After``: the pages wait and try again, and with ``--workers`` or edges they can land
elsewhere), and if it stays behind it closes its newest viewers until it keeps up.

``receive_queue`` reads a socket's queue with ``SO_MEMINFO``: the memory the kernel holds for
its unread datagrams (each one's payload plus its buffer overhead, about 2 KB for a full-size
packet; the kernel may hold up to a quarter of the buffer more than ``/proc/net/udp`` shows,
which it frees lazily) and the buffer's size; and, when something waits, how long the oldest
datagram has waited (its kernel receive time, ``SO_TIMESTAMPNS``, read with ``MSG_PEEK``). The
wait is what the consent checks suffer, whatever the stream's bitrate: a 0.7 Mbit/s broadcast
half a second behind queues only ~100 KB. ``OverloadGuard`` is the pure policy.
"""

from __future__ import annotations

import math
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from asyncio.trsock import TransportSocket

# Linux's SO_MEMINFO (include/uapi/asm-generic/socket.h); it fills u32 values, of which the
# first two are sk_rmem_alloc (held for unread datagrams) and sk_rcvbuf (the buffer's size).
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO_SIZE = 4 * 9  # the nine values of SK_MEMINFO_VARS
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # SCM_TIMESTAMPNS has the same value
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0x40)

# A source whose oldest unread datagram has waited longer than this at LATE_TICKS watch ticks
# in a row (1.5 s and more) is behind, whatever is queued: aioice fails a consent check that is
# not answered within 0.5 s (its STUN timeout, sent once), and ends the connection after six in
# a row (~30 s); half of 0.5 s leaves room for the answer's own way. A moment late is not
# behind: fanning a keyframe's burst out to hundreds of viewers delays the packets after it by
# up to ~0.6 s on a process near its capacity, which then catches up (two ticks in a row
# refused viewers there, at 90-95 % of a core).
BEHIND_S = 0.25
LATE_TICKS = 4

# Behind for this long in a row sheds viewers, and again each time as long again.
SHED_AFTER_S = 2.0
# The share of the session's viewers closed each time (at least one), newest first.
SHED_SHARE = 0.05
# Behind never waits for more than this share of the buffer (past it the kernel drops).
BUFFER_SHARE = 4


class SocketQueue(NamedTuple):
    """What the kernel holds for a socket's unread datagrams, and its buffer size, in bytes;
    how long the oldest of them has waited, in seconds (0.0: none, or not known)."""

    queued: int
    buffer: int
    oldest_s: float = 0.0


def receive_queue(sock: socket.socket | TransportSocket) -> SocketQueue | None:
    """``sock``'s receive queue; None where it cannot be read (not Linux, closed socket)."""
    if sys.platform != "linux":
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_SIZE)
        # From now on the kernel notes when each datagram arrives (for ``oldest_wait``).
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return None
    if len(raw) < 8:
        return None
    queued, buffer = struct.unpack_from("=II", raw)
    return SocketQueue(int(queued), int(buffer), oldest_wait(sock) if queued else 0.0)


def oldest_wait(sock: socket.socket | TransportSocket) -> float:
    """How long the datagram at the head of ``sock``'s queue has waited: now less its kernel
    receive time, peeked (the reader still gets it). 0.0 when nothing waits, or when it came
    before ``SO_TIMESTAMPNS`` was turned on (``receive_queue`` does)."""
    try:
        # asyncio lends its sockets out without recvmsg: peek through a duplicate descriptor.
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as same:
            _, ancillary, _, _ = same.recvmsg(1, socket.CMSG_SPACE(_TIMESPEC.size), _PEEK)
    except OSError:  # nothing queued (EAGAIN), or a closed socket
        return 0.0
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return max(0.0, time.time() - (int(seconds) + int(nanoseconds) / 1e9))
    return 0.0


class Sheddable(Protocol):
    kind: str
    created_at: float


V = TypeVar("V", bound=Sheddable)


def newest_first(viewers: Iterable[V]) -> list[V]:
    """The order viewers are shed in: newest first, edges (each serving many) last."""
    return sorted(viewers, key=lambda v: (v.kind == "edge", -v.created_at))


@dataclass
class OverloadGuard:
    """One session's source queue, observed every watch tick.

    ``behind`` (refuse new viewers) while more than ``limit`` is queued (``behind_bytes``, or a
    quarter of the socket's buffer if that is less) or the oldest datagram queued has waited
    more than ``BEHIND_S`` at ``LATE_TICKS`` observations in a row. ``observe`` returns how
    many viewers to close once the source has been behind for ``SHED_AFTER_S``, and again each
    ``SHED_AFTER_S`` it stays so. ``behind_bytes`` 0: off.
    """

    behind_bytes: int
    backlog: int | None = None
    waited_s: float | None = None  # how long the oldest datagram queued has waited
    limit: int | None = None
    behind: bool = False
    refused: int = 0
    shed: int = 0
    _behind_since: float | None = field(default=None, repr=False)
    _late: int = field(default=0, repr=False)  # observations in a row over BEHIND_S

    def refuse(self) -> None:
        """A viewer turned away while behind live (counted for the metrics and stats)."""
        self.refused += 1

    def observe(self, queue: SocketQueue | None, now: float, viewers: int) -> int:
        self.backlog = None if queue is None else queue.queued
        self.waited_s = None if queue is None else round(queue.oldest_s, 3)
        if not self.behind_bytes or queue is None:
            self.behind, self.limit, self._behind_since, self._late = False, None, None, 0
            return 0
        self.limit = min(self.behind_bytes, queue.buffer // BUFFER_SHARE)
        self._late = self._late + 1 if queue.oldest_s > BEHIND_S else 0
        self.behind = queue.queued > self.limit or self._late >= LATE_TICKS
        if not self.behind:
            self._behind_since = None
            return 0
        if self._behind_since is None:
            self._behind_since = now
            return 0
        if now - self._behind_since < SHED_AFTER_S or viewers <= 0:
            return 0
        self._behind_since = now
        count = min(viewers, max(1, math.ceil(viewers * SHED_SHARE)))
        self.shed += count
        return count

"""A session's source falling behind live on this node: refuse new viewers, then shed some.

A relay short of CPU reads its source (the broadcaster, or an edge's or worker's upstream) later
and later; the packets wait in the socket's receive buffer, several MB deep. Viewers still get
every frame, later. But the ICE consent answers (RFC 7675) wait in the same queue: aioice gives
each check 0.5 s and closes the connection after six misses, so half a minute behind live the
broadcast ends for everyone. Before that, this node stops taking viewers (HTTP 503 with
``Retry-After``: the pages wait and try again, and with ``--workers`` or edges they can land
elsewhere), and if the queue keeps growing it closes its newest viewers until it keeps up.

``receive_backlog`` reads a socket's queue (``SO_MEMINFO``: the bytes the kernel has queued for
the socket, as ``/proc/net/udp``'s rx_queue counts them); ``OverloadGuard`` is the pure policy.
"""

from __future__ import annotations

import math
import socket
import struct
import sys
from dataclasses import dataclass, field

# Linux's SO_MEMINFO (include/uapi/asm-generic/socket.h) and the index of sk_rmem_alloc.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO_BYTES = 4 * 9

# A queue this many times ``behind_bytes``, for ``SHED_AFTER_S``, sheds viewers.
SHED_FACTOR = 4
SHED_AFTER_S = 2.0
# The share of the session's viewers closed each time (at least one), newest first.
SHED_SHARE = 0.05


def receive_backlog(sock: socket.socket) -> int | None:
    """Bytes queued unread on ``sock`` (kernel accounting); None where it cannot be read."""
    if sys.platform != "linux":
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_BYTES)
    except OSError:
        return None
    if len(raw) < 4:
        return None
    return int(struct.unpack_from("=I", raw)[0])


@dataclass
class OverloadGuard:
    """One session's source queue, observed every watch tick.

    ``behind`` (refuse new viewers) while more than ``behind_bytes`` are queued; ``observe``
    returns how many viewers to close once more than ``SHED_FACTOR`` times that has been queued
    for ``SHED_AFTER_S``, and again each ``SHED_AFTER_S`` it stays so. ``behind_bytes`` 0: off.
    """

    behind_bytes: int
    backlog: int | None = None
    behind: bool = False
    refused: int = 0
    shed: int = 0
    _over_since: float | None = field(default=None, repr=False)

    def observe(self, backlog: int | None, now: float, viewers: int) -> int:
        self.backlog = backlog
        if not self.behind_bytes or backlog is None:
            self.behind, self._over_since = False, None
            return 0
        self.behind = backlog > self.behind_bytes
        if backlog <= SHED_FACTOR * self.behind_bytes:
            self._over_since = None
            return 0
        if self._over_since is None:
            self._over_since = now
            return 0
        if now - self._over_since < SHED_AFTER_S or viewers == 0:
            return 0
        self._over_since = now
        count = min(viewers, max(1, math.ceil(viewers * SHED_SHARE)))
        self.shed += count
        return count

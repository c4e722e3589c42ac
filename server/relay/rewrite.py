"""Per-viewer RTP rewriting: SSRC, payload type, sequence numbers and timestamps.

Sequence numbers and timestamps are mapped by an offset per source "epoch" (one broadcaster
connection, one source SSRC). A viewer that follows a new broadcaster therefore sees one
continuous stream: the first packet of the new epoch continues right after the last one sent,
with the wall-clock gap reflected in the timestamp. Within an epoch gaps and reordering of the
source are preserved, so the viewer's NACKs and jitter buffer keep working.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")
RTP_VERSION_BITS = 0x80
EXTENSION_BIT = 0x10
ONE_BYTE_PROFILE = 0xBEDE


def one_byte_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 one-byte header-extension block (profile, length, elements, padding)."""
    body = b"".join(bytes([(ext_id << 4) | (len(value) - 1)]) + value for ext_id, value in elements)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", ONE_BYTE_PROFILE, len(body) // 4) + body


@dataclass
class OutboundStream:
    """One viewer's outgoing stream of one kind."""

    ssrc: int
    payload_type: int
    clock_rate: int
    seq: int  # the last sequence number sent
    timestamp: int  # the last timestamp sent
    extensions: bytes = b""  # prebuilt block, e.g. the viewer's MID
    epoch: object = None
    seq_offset: int = 0
    ts_offset: int = 0
    last_sent_at: float | None = None
    packets: int = 0
    octets: int = 0

    def rebase(self, src_seq: int, src_ts: int, now: float, epoch: object) -> None:
        """Start mapping a new epoch so that it continues right after what was sent."""
        if self.last_sent_at is None:
            elapsed = 0
        else:
            elapsed = max(1, int((now - self.last_sent_at) * self.clock_rate))
        self.seq_offset = (self.seq + 1 - src_seq) & 0xFFFF
        self.ts_offset = (self.timestamp + elapsed - src_ts) & 0xFFFFFFFF
        self.epoch = epoch

    def header(self, src_seq: int, src_ts: int, marker: bool, now: float) -> tuple[bytes, int]:
        """The rewritten RTP header (with extensions) for a source packet, and its sequence."""
        seq = (src_seq + self.seq_offset) & 0xFFFF
        ts = (src_ts + self.ts_offset) & 0xFFFFFFFF
        # Track the newest packet (not a late retransmission) for the next rebase.
        if ((seq - self.seq) & 0xFFFF) < 0x8000:
            self.seq = seq
            self.timestamp = ts
            self.last_sent_at = now
        first = RTP_VERSION_BITS | (EXTENSION_BIT if self.extensions else 0)
        second = (0x80 if marker else 0) | self.payload_type
        return _HEADER.pack(first, second, seq, ts, self.ssrc) + self.extensions, seq

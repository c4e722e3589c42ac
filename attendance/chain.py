"""The audit hash chain, pure: ``hash = SHA-256(previous hash || canonical bytes of the event)``.

Canonical bytes are compact JSON with sorted keys, UTF-8, times as ISO 8601 UTC with
microseconds and UUIDs as lowercase strings, so the same event always hashes the same on any
store and any platform.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attendance.clock import as_utc

GENESIS = "0" * 64


def _default(value: Any) -> str:
    if isinstance(value, datetime):
        return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} has no canonical form in the audit chain")


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(
        fields, default=_default, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def link(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """The hash of an event that follows ``prev_hash``."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes(fields)).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    """The first position (0-based, in chain order) where the stored chain stops holding."""

    position: int
    reason: str


def verify(rows: Iterable[tuple[str, str, Mapping[str, Any]]]) -> ChainBreak | None:
    """Check ``(prev_hash, hash, fields)`` rows in chain order; None when the chain holds."""
    expected_prev = GENESIS
    for position, (prev_hash, stored_hash, fields) in enumerate(rows):
        if prev_hash != expected_prev:
            return ChainBreak(position, "previous hash does not match (row removed or reordered)")
        if link(prev_hash, fields) != stored_hash:
            return ChainBreak(position, "hash does not match the row's content (row edited)")
        expected_prev = stored_hash
    return None

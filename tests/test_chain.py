"""The audit hash chain, pure: canonical bytes and verification against fixed data."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from attendance.chain import GENESIS, ChainBreak, canonical_bytes, link, verify

Row = tuple[str, str, Mapping[str, Any]]

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)

REMOVED = "previous hash does not match (row removed or reordered)"
EDITED = "hash does not match the row's content (row edited)"


def event(n: int) -> dict[str, Any]:
    """A fixed attendance-like event; every field differs between events."""
    return {
        "session_id": 7,
        "event_uuid": uuid.UUID(int=n + 1),
        "kind": "heartbeat" if n % 2 else "check_in",
        "member_id": 1000 + n,
        "venue_id": None,
        "source": f"member:{1000 + n}",
        "client_time": T0 + timedelta(seconds=n),
        "server_time": T0 + timedelta(seconds=n, microseconds=250),
        "late": False,
        "payload": {"note": f"第{n}条", "visible": True},
    }


def build_chain(events: list[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    prev = GENESIS
    for fields in events:
        digest = link(prev, fields)
        rows.append((prev, digest, fields))
        prev = digest
    return rows


@pytest.fixture
def chain() -> list[Row]:
    return build_chain([event(n) for n in range(6)])


# -- canonical bytes --------------------------------------------------------------------------


def test_canonical_bytes_exact_form() -> None:
    fields = {
        "b": 1,
        "a": "北京/朝阳办公区",
        "t": datetime(2026, 11, 24, 16, 0, 0, 5, tzinfo=timezone(timedelta(hours=8))),
        "u": uuid.UUID("12345678-ABCD-4EF0-8123-456789ABCDEF"),
        "n": None,
        "nested": {"z": [1, 2], "y": True},
    }
    expected = (
        '{"a":"北京/朝阳办公区","b":1,"n":null,"nested":{"y":true,"z":[1,2]},'
        '"t":"2026-11-24T08:00:00.000005Z","u":"12345678-abcd-4ef0-8123-456789abcdef"}'
    ).encode()
    assert canonical_bytes(fields) == expected
    # Non-ASCII is kept as UTF-8, not \u-escaped.
    assert "北京".encode() in canonical_bytes(fields)
    assert b"\\u" not in canonical_bytes(fields)


def test_canonical_bytes_ignore_insertion_order() -> None:
    a = event(3)
    b = dict(reversed(list(a.items())))
    assert list(a) != list(b)
    assert canonical_bytes(a) == canonical_bytes(b)
    assert link(GENESIS, a) == link(GENESIS, b)


def test_times_always_utc_with_microseconds() -> None:
    aware_utc = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    shanghai = aware_utc.astimezone(timezone(timedelta(hours=8)))
    naive = datetime(2026, 11, 24, 8, 0)
    encoded = [canonical_bytes({"t": t}) for t in (aware_utc, shanghai, naive)]
    assert encoded == [b'{"t":"2026-11-24T08:00:00.000000Z"}'] * 3


def test_naive_datetime_is_treated_as_utc_in_the_hash() -> None:
    aware = event(2)
    naive = {
        **aware,
        "client_time": aware["client_time"].replace(tzinfo=None),
        "server_time": aware["server_time"].replace(tzinfo=None),
    }
    assert link(GENESIS, naive) == link(GENESIS, aware)


def test_link_is_sha256_of_previous_hash_and_canonical_bytes() -> None:
    fields = {"a": "北京", "b": 1}
    body = '{"a":"北京","b":1}'.encode()
    assert link(GENESIS, fields) == hashlib.sha256(bytes(32) + body).hexdigest()
    # Pinned, so a change of the canonical form (which would break every stored chain) shows.
    assert (
        link(GENESIS, fields)
        == hashlib.sha256(
            bytes.fromhex("00" * 32) + b'{"a":"\xe5\x8c\x97\xe4\xba\xac","b":1}'
        ).hexdigest()
    )
    second = link(link(GENESIS, fields), fields)
    assert second != link(GENESIS, fields)


def test_known_digest_is_stable() -> None:
    fields = {
        "b": 1,
        "a": "北京",
        "t": datetime(2026, 11, 24, 16, 0, 0, 5, tzinfo=timezone(timedelta(hours=8))),
        "u": uuid.UUID("12345678-ABCD-4ef0-8123-456789ABCDEF"),
    }
    assert link(GENESIS, fields) == (
        "d43c5856439d9c580a91197b70607b38099887e3fcf5e1e4e197aeef7ad0a7d3"
    )


def test_values_without_canonical_form_are_refused() -> None:
    with pytest.raises(TypeError, match="set has no canonical form"):
        canonical_bytes({"x": {1, 2}})
    with pytest.raises(TypeError, match="bytes has no canonical form"):
        link(GENESIS, {"x": b"raw"})


# -- verify -----------------------------------------------------------------------------------


def test_intact_chain_verifies(chain: list[Row]) -> None:
    assert verify(chain) is None
    assert verify([]) is None
    assert verify(iter(chain)) is None
    assert chain[0][0] == GENESIS
    assert all(chain[i][1] == chain[i + 1][0] for i in range(len(chain) - 1))


def test_edited_row(chain: list[Row]) -> None:
    prev, digest, fields = chain[3]
    chain[3] = (prev, digest, {**fields, "late": True})
    assert verify(chain) == ChainBreak(3, EDITED)


def test_edited_time_by_one_microsecond(chain: list[Row]) -> None:
    prev, digest, fields = chain[1]
    chain[1] = (
        prev,
        digest,
        {**fields, "server_time": fields["server_time"] + timedelta(microseconds=1)},
    )
    assert verify(chain) == ChainBreak(1, EDITED)


def test_edited_and_rehashed_row_breaks_the_next_link(chain: list[Row]) -> None:
    prev, _digest, fields = chain[2]
    forged = {**fields, "member_id": 9999}
    chain[2] = (prev, link(prev, forged), forged)
    assert verify(chain) == ChainBreak(3, REMOVED)


def test_edited_first_row(chain: list[Row]) -> None:
    prev, digest, fields = chain[0]
    chain[0] = (prev, digest, {**fields, "kind": "quiz_answer"})
    assert verify(chain) == ChainBreak(0, EDITED)


def test_deleted_row(chain: list[Row]) -> None:
    del chain[2]
    assert verify(chain) == ChainBreak(2, REMOVED)


def test_deleted_first_row(chain: list[Row]) -> None:
    del chain[0]
    assert verify(chain) == ChainBreak(0, REMOVED)


def test_deleting_the_tail_needs_a_checkpoint(chain: list[Row]) -> None:
    """The chain alone cannot show a truncated tail: that is what auditors' checkpoints are for."""
    assert verify(chain[:-2]) is None


def test_inserted_row_with_wrong_previous_hash(chain: list[Row]) -> None:
    foreign = event(99)
    chain.insert(2, (GENESIS, link(GENESIS, foreign), foreign))
    assert verify(chain) == ChainBreak(2, REMOVED)


def test_inserted_row_linked_properly_breaks_the_following_row(chain: list[Row]) -> None:
    foreign = event(99)
    prev = chain[1][1]
    chain.insert(2, (prev, link(prev, foreign), foreign))
    assert verify(chain) == ChainBreak(3, REMOVED)


def test_reordered_pair(chain: list[Row]) -> None:
    chain[3], chain[4] = chain[4], chain[3]
    assert verify(chain) == ChainBreak(3, REMOVED)


def test_reordered_first_pair(chain: list[Row]) -> None:
    chain[0], chain[1] = chain[1], chain[0]
    assert verify(chain) == ChainBreak(0, REMOVED)


def test_forged_stored_hash(chain: list[Row]) -> None:
    prev, _digest, fields = chain[5]
    chain[5] = (prev, "f" * 64, fields)
    assert verify(chain) == ChainBreak(5, EDITED)


def test_only_the_first_break_is_reported(chain: list[Row]) -> None:
    prev, digest, fields = chain[4]
    chain[4] = (prev, digest, {**fields, "kind": "x"})
    del chain[1]
    assert verify(chain) == ChainBreak(1, REMOVED)


def test_chain_break_is_a_frozen_value() -> None:
    brk = ChainBreak(2, EDITED)
    with pytest.raises(AttributeError):
        brk.position = 3  # type: ignore[misc]
    assert brk == ChainBreak(2, EDITED)

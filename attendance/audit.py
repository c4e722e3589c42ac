"""Auditing the two hash-chained logs: verification, and signed checkpoints of them.

``ChainWalker`` is the pure part: fed rows in chain order, it recomputes every hash with
``attendance.chain.link`` and remembers the first position where the chain stops holding.
``verify_chains`` streams both logs out of the store into walkers, in keyset pages of plain
columns (no ORM objects), so a million events verify in seconds.

A checkpoint is a count and head hash per chain at a time, signed with the server's Ed25519 key
(``data/audit_key``). Auditors keep it with the public key; ``verify_chains(checkpoint=...)``
then proves that the current log extends it unchanged: same hash at the checkpoint's count, a
chain that holds up to there and beyond.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import String, literal, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.chain import GENESIS, canonical_bytes, link
from attendance.clock import as_utc
from attendance.errors import InvalidInput, StoreError
from attendance.journal import record_admin_event
from attendance.models import AdminEvent, AttendanceEvent
from attendance.retention import RAW_KINDS
from attendance.store import Store

ATTENDANCE = "attendance"
ADMIN = "admin"
CHAINS = (ATTENDANCE, ADMIN)

# Why a chain stops holding (``ChainFault.reason``), with the words a reader sees.
EDITED = "content_edited"
LINK_BROKEN = "link_broken"
TRUNCATED = "truncated"
DIVERGED = "diverged"
UNLOGGED_PRUNE = "unlogged_prune"
REASONS = {
    EDITED: "the row's content does not match its hash (row edited)",
    LINK_BROKEN: "the row does not link to the previous one (row removed, inserted or reordered)",
    TRUNCATED: "the log ends before the checkpoint's count (rows removed from the end)",
    DIVERGED: "the chain holds but its hash here is not the checkpoint's head "
    "(history before this point was rewritten and rehashed)",
    UNLOGGED_PRUNE: "the row's content was removed, but no logged retention run removed it "
    "(raw evidence of its session was never pruned, or it is not raw evidence)",
}

KEY_FILE = "audit_key"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Pruned:
    """A row whose content retention removed: its hash can only be followed, not recomputed;
    what is left says which session and kind it was, to check against the retention log."""

    session_id: int
    kind: str


# One stored row as the walker sees it: id, prev_hash, hash, and the hashed fields (or Pruned).
ChainRow = tuple[int, str, str, "Mapping[str, Any] | Pruned"]


class CheckpointRefused(InvalidInput):
    """A checkpoint that cannot be trusted: malformed, signed by another key, or forged."""

    code = "checkpoint_refused"


@dataclass(frozen=True)
class ChainFault:
    """The first position (0-based, chain order) where a chain stops holding."""

    position: int
    row_id: int | None  # None when the row is missing (truncation)
    reason: str

    @property
    def explanation(self) -> str:
        return REASONS[self.reason]

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "row_id": self.row_id,
            "reason": self.reason,
            "explanation": self.explanation,
        }


@dataclass(frozen=True)
class ChainResult:
    """What verifying one chain found."""

    chain: str
    rows: int
    pruned_followed: int
    head: str
    fault: ChainFault | None
    # Checked against a checkpoint: its count and head for this chain.
    checkpoint_count: int | None = None
    checkpoint_head: str | None = None

    @property
    def ok(self) -> bool:
        return self.fault is None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": self.ok,
            "rows": self.rows,
            "pruned_followed": self.pruned_followed,
            "head": self.head,
            "fault": self.fault.as_json() if self.fault else None,
        }
        if self.checkpoint_count is not None:
            body["checkpoint"] = {"count": self.checkpoint_count, "head": self.checkpoint_head}
        return body


@dataclass(frozen=True)
class ChainReport:
    """Both chains, verified at ``checked_at``."""

    chains: dict[str, ChainResult]
    checked_at: datetime

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chains": {name: c.as_json() for name, c in self.chains.items()},
            "checked_at": _iso(self.checked_at),
        }


class ChainWalker:
    """Follows one chain, row by row in chain order, without I/O.

    Feed it rows with ``feed`` (as many batches as needed), then ``finish``. After the first
    fault it ignores further rows except to count them. ``expect`` (count, head) is a
    checkpoint: the hash of row ``count`` (1-based) must be ``head``.
    """

    def __init__(
        self,
        chain: str,
        expect: tuple[int, str] | None = None,
        pruned_sessions: frozenset[int] = frozenset(),
    ) -> None:
        self.chain = chain
        self.expect = expect
        # Sessions whose raw evidence a logged retention run removed.
        self.pruned_sessions = pruned_sessions
        self.rows = 0
        self.pruned_followed = 0
        self.head = GENESIS
        self.fault: ChainFault | None = None

    def feed(self, rows: Iterable[ChainRow]) -> None:
        if self.fault is not None:
            self.rows += sum(1 for _ in rows)
            return
        position = self.rows
        expected_prev = self.head
        mark, mark_head = (self.expect[0] - 1, self.expect[1]) if self.expect else (-1, "")
        pruned = 0
        fault: ChainFault | None = None
        for row_id, prev_hash, stored_hash, fields in rows:
            if fault is not None:
                position += 1
                continue
            if prev_hash != expected_prev:
                fault = ChainFault(position, row_id, LINK_BROKEN)
            elif isinstance(fields, Pruned):
                if fields.session_id in self.pruned_sessions and fields.kind in RAW_KINDS:
                    pruned += 1  # content gone: the link is all that can be checked
                else:
                    fault = ChainFault(position, row_id, UNLOGGED_PRUNE)
            elif link(prev_hash, fields) != stored_hash:
                fault = ChainFault(position, row_id, EDITED)
            if fault is None and position == mark and stored_hash != mark_head:
                fault = ChainFault(position, row_id, DIVERGED)
            if fault is None:
                expected_prev = stored_hash
            position += 1
        self.rows = position
        self.pruned_followed += pruned
        self.fault = fault
        if fault is None:
            self.head = expected_prev

    def finish(self) -> ChainResult:
        fault = self.fault
        if fault is None and self.expect is not None and self.rows < self.expect[0]:
            fault = ChainFault(self.rows, None, TRUNCATED)
        return ChainResult(
            chain=self.chain,
            rows=self.rows,
            pruned_followed=self.pruned_followed,
            head=self.head,
            fault=fault,
            checkpoint_count=self.expect[0] if self.expect else None,
            checkpoint_head=self.expect[1] if self.expect else None,
        )


# -- reading the chains out of the store -------------------------------------------------------


def _time_text(value: Any) -> str:
    """A stored time in the chain's canonical form (as ``chain.canonical_bytes`` writes it),
    straight from SQLite's text when it has the form SQLAlchemy stores."""
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " ":
            return f"{value[:10]}T{value[11:]}Z"
        value = datetime.fromisoformat(value)
    utc = as_utc(value)
    if utc.year < 1000:  # isoformat pads the year, strftime does not
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _uuid_text(value: Any) -> str:
    """A stored UUID in canonical form (lowercase, dashed); SQLite keeps 32 hex digits."""
    if isinstance(value, str) and len(value) == 32:
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return str(value)


# Columns read per chain: id, prev_hash, hash, pruned?, then the hashed fields. Times and UUIDs
# are read as stored (no per-row type processing) and put in the exact text the chain hashes,
# so ``link`` never needs its fallback for them; that halves the time per row.
def _event_fields(r: Sequence[Any]) -> dict[str, Any]:
    return {
        "session_id": r[4],
        "event_uuid": _uuid_text(r[5]),
        "kind": r[6],
        "member_id": r[7],
        "venue_id": r[8],
        "source": r[9],
        "client_time": _time_text(r[10]),
        "server_time": _time_text(r[11]),
        "late": r[12],
        "payload": r[13],
    }


def _admin_fields(r: Sequence[Any]) -> dict[str, Any]:
    return {"at": _time_text(r[4]), "actor": r[5], "action": r[6], "target": r[7], "detail": r[8]}


def _raw(column: Any) -> Any:
    return type_coerce(column, String)


def _query(chain: str) -> tuple[Any, Any, Callable[[Sequence[Any]], dict[str, Any]]]:
    if chain == ATTENDANCE:
        e = AttendanceEvent
        cols = [
            e.session_id,
            _raw(e.event_uuid),
            e.kind,
            e.member_id,
            e.venue_id,
            e.source,
            _raw(e.client_time),
            _raw(e.server_time),
            e.late,
            e.payload,
        ]
        return e, [e.id, e.prev_hash, e.hash, e.pruned_at.is_not(None), *cols], _event_fields
    a = AdminEvent
    cols = [_raw(a.at), a.actor, a.action, a.target, a.detail]
    # The admin trail is never pruned.
    return a, [a.id, a.prev_hash, a.hash, literal(False), *cols], _admin_fields


async def _walk(db: AsyncSession, walker: ChainWalker, batch: int) -> None:
    """Stream one chain into ``walker`` in pages of ``batch`` rows, keyset on id."""
    model, cols, fields = _query(walker.chain)
    query = select(*cols).order_by(model.id).limit(batch)
    conn = await db.connection()  # Core rows: no ORM loading per row
    after: int | None = None
    while True:
        page = query if after is None else query.where(model.id > after)
        rows = (await conn.execute(page)).all()
        if not rows:
            return
        # Hashing a page is CPU work: a worker thread keeps a serving event loop responsive.
        await asyncio.to_thread(
            walker.feed,
            [(r[0], r[1], r[2], Pruned(r[4], r[6]) if r[3] else fields(r)) for r in rows],
        )
        after = rows[-1][0]
        if len(rows) < batch:
            return


async def verify_chains(
    store: Store,
    *,
    now: datetime,
    checkpoint: Checkpoint | None = None,
    batch: int = 10_000,
) -> ChainReport:
    """Recompute both chains from the store; with ``checkpoint``, also prove that each chain
    extends it unchanged."""
    results: dict[str, ChainResult] = {}
    async with store.read() as db:
        pruned_sessions = frozenset(
            int(target.removeprefix("session:"))
            for target in await db.scalars(
                select(AdminEvent.target).where(AdminEvent.action == "retention_pruned_events")
            )
            if target and target.startswith("session:") and target[8:].isdigit()
        )
        for chain in CHAINS:
            expect = None
            if checkpoint is not None:
                mark = checkpoint.chains[chain]
                expect = (mark.count, mark.head)
            walker = ChainWalker(chain, expect, pruned_sessions)
            await _walk(db, walker, batch)
            results[chain] = walker.finish()
    return ChainReport(results, now)


# -- checkpoints --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainMark:
    count: int
    head: str


@dataclass(frozen=True)
class Checkpoint:
    """Where both chains stood at ``made_at``, as signed by the key ``key_id``."""

    chains: dict[str, ChainMark]
    made_at: datetime
    key_id: str
    version: int = CHECKPOINT_VERSION
    signature: str = field(default="", compare=False)

    def body(self) -> dict[str, Any]:
        """The signed part."""
        return {
            "version": self.version,
            "chains": {
                name: {"count": m.count, "head": m.head} for name, m in sorted(self.chains.items())
            },
            "made_at": _iso(self.made_at),
            "key_id": self.key_id,
        }

    def document(self) -> str:
        """The JSON text auditors keep: the signed body and its Ed25519 signature (base64)."""
        return json.dumps(
            {"checkpoint": self.body(), "signature": self.signature},
            ensure_ascii=False,
            indent=2,
            sort_keys=True,
        )


def _iso(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_checkpoint(report: ChainReport, key: Ed25519PrivateKey) -> Checkpoint:
    """A signed checkpoint of chains that hold. A broken chain is not vouched for."""
    broken = [c for c in report.chains.values() if not c.ok]
    if broken:
        raise InvalidInput(
            "no checkpoint of a broken chain: " + "; ".join(describe_fault(c) for c in broken)
        )
    unsigned = Checkpoint(
        chains={n: ChainMark(c.rows, c.head) for n, c in report.chains.items()},
        made_at=report.checked_at,
        key_id=key_id(key.public_key()),
    )
    signature = key.sign(canonical_bytes(unsigned.body()))
    return Checkpoint(
        chains=unsigned.chains,
        made_at=unsigned.made_at,
        key_id=unsigned.key_id,
        signature=base64.b64encode(signature).decode("ascii"),
    )


def read_checkpoint(text: str, public_key_pem: str | bytes) -> Checkpoint:
    """Parse a checkpoint document and check its signature with the given public key."""
    public_key = load_public_key(public_key_pem)
    try:
        doc = json.loads(text)
        body = doc["checkpoint"]
        signature = base64.b64decode(doc["signature"], validate=True)
        chains = {
            name: ChainMark(int(body["chains"][name]["count"]), str(body["chains"][name]["head"]))
            for name in CHAINS
        }
        made_at = datetime.fromisoformat(body["made_at"])
        version, signer = int(body["version"]), str(body["key_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointRefused(f"not a studycast checkpoint document: {exc!s}") from exc
    if version != CHECKPOINT_VERSION:
        raise CheckpointRefused(f"checkpoint version {version} is not supported")
    if signer != key_id(public_key):
        raise CheckpointRefused(
            f"the checkpoint was signed by key {signer}, not by the given key {key_id(public_key)}"
        )
    try:
        public_key.verify(signature, canonical_bytes(body))
    except InvalidSignature:
        raise CheckpointRefused(
            "the checkpoint's signature does not verify: it was altered or forged"
        ) from None
    if any(m.count < 0 for m in chains.values()):
        raise CheckpointRefused("the checkpoint has a negative count")
    return Checkpoint(chains, made_at, signer, version, doc["signature"])


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise CheckpointRefused(f"the public key is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointRefused("the public key is not an Ed25519 key")
    return key


def describe_fault(result: ChainResult) -> str:
    """One line naming the chain, position, row and reason of a fault."""
    fault = result.fault
    if fault is None:
        return f"{result.chain} chain holds ({result.rows} rows)"
    row = f"row id {fault.row_id}" if fault.row_id is not None else "no row"
    return f"{result.chain} chain broken at position {fault.position} ({row}): {fault.explanation}"


# -- the server's signing key ---------------------------------------------------------------------


class HasDataDir(Protocol):
    def ensure_data_dir(self) -> Path: ...


def audit_key(settings: HasDataDir) -> Ed25519PrivateKey:
    """The server's checkpoint signing key, made on first use under the data dir (mode 0600)."""
    path = settings.ensure_data_dir() / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    if data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise StoreError(f"{path} is not a PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise StoreError(f"{path} does not hold an Ed25519 key")
        return key
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # As for the secret key: a private temporary file moved into place, never half-written, and
    # link() refuses to replace a key another process made meanwhile (then theirs is used).
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if path.exists():
            os.replace(tmp, path)  # an empty file left by a crash
        else:
            os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return audit_key(settings)


def public_key_pem(settings: HasDataDir) -> str:
    """The public half of the signing key, PEM: what auditors export and keep."""
    return (
        audit_key(settings)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


async def make_checkpoint(
    store: Store, settings: HasDataDir, *, now: datetime, actor: str
) -> Checkpoint:
    """Verify both chains, sign a checkpoint of them, and record it in the admin trail (that
    entry comes after the checkpoint, which covers what came before)."""
    report = await verify_chains(store, now=now)
    checkpoint = sign_checkpoint(report, audit_key(settings))
    async with store.write() as db:
        await record_admin_event(
            db,
            now=now,
            actor=actor,
            action="audit_checkpoint",
            target=f"key:{checkpoint.key_id}",
            detail=checkpoint.body()["chains"],
        )
    return checkpoint


async def verify_against(
    store: Store, checkpoint_text: str, public_key: str | bytes, *, now: datetime
) -> ChainReport:
    """Check the checkpoint's signature, then that the current log extends it unchanged."""
    checkpoint = read_checkpoint(checkpoint_text, public_key)
    return await verify_chains(store, now=now, checkpoint=checkpoint)

"""Auditing the hash-chained logs on real stores: tampering of every kind found at the right
position, pruned rows followed, signed checkpoints, the CLI and the API."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from support import Client, FakeClock, make_settings

from attendance.audit import (
    DIVERGED,
    EDITED,
    LINK_BROKEN,
    TRUNCATED,
    UNLOGGED_PRUNE,
    ChainFault,
    CheckpointRefused,
    audit_key,
    make_checkpoint,
    public_key_pem,
    read_checkpoint,
    sign_checkpoint,
    verify_against,
    verify_chains,
)
from attendance.chain import GENESIS, link
from attendance.journal import NewAttendanceEvent, append_attendance_events, record_admin_event
from attendance.migrate import upgrade
from attendance.models import AdminEvent, AttendanceEvent, Role, StudySession
from attendance.store import Store
from attendance.users import add_user
from server.app import create_app
from server.cli import main
from server.settings import Settings

EVENTS = 12
MUTATIONS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PASSWORD = "correct horse battery staple"
EVENT_COLUMNS = [c.key for c in AttendanceEvent.__table__.columns]


# -- building and tampering with a real log ----------------------------------------------------


async def write_log(store: Store, now: datetime, events: int = EVENTS) -> list[int]:
    """A session, ``events`` attendance events in three batches and three admin entries; the
    ids of the attendance events in chain order."""
    async with store.write() as db:
        session = StudySession(
            title="学习会",
            scheduled_start=now,
            scheduled_end=now + timedelta(hours=2),
            created_at=now,
        )
        db.add(session)
        await db.flush()
        session_id = session.id
        await record_admin_event(
            db,
            now=now,
            actor="cli",
            action="session_created",
            target=f"session:{session_id}",
            detail={"title": "学习会"},
        )
    for first in range(0, events, 5):
        batch = [
            NewAttendanceEvent(
                session_id=session_id,
                event_uuid=uuid.UUID(int=i + 1),
                kind="heartbeat" if i % 3 else "check_in",
                source=f"member:{1000 + i}",
                client_time=now + timedelta(seconds=i, microseconds=i),
                payload={"visible": True, "note": f"第{i}条", "ratio": i / 7},
            )
            for i in range(first, min(events, first + 5))
        ]
        async with store.write() as db:
            await append_attendance_events(db, batch, now=now + timedelta(seconds=first))
            await record_admin_event(
                db, now=now, actor="system", action="batch", detail={"first": first}
            )
    async with store.read() as db:
        return list(await db.scalars(select(AttendanceEvent.id).order_by(AttendanceEvent.id)))


async def snapshot(store: Store) -> list[dict[str, Any]]:
    async with store.read() as db:
        rows = (
            (await db.execute(select(AttendanceEvent.__table__).order_by(AttendanceEvent.id)))
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


async def restore(store: Store, rows: list[dict[str, Any]]) -> None:
    async with store.write() as db:
        await db.execute(delete(AttendanceEvent))
        await db.execute(insert(AttendanceEvent), rows)


async def attendance_fault(store: Store, now: datetime) -> ChainFault | None:
    report = await verify_chains(store, now=now, batch=4)  # small pages: crosses page edges
    assert report.chains["admin"].ok
    return report.chains["attendance"].fault


async def update_row(db: AsyncSession, row_id: int, **values: Any) -> None:
    await db.execute(update(AttendanceEvent).where(AttendanceEvent.id == row_id).values(**values))


@pytest.fixture
async def log(store: Store, now: datetime) -> list[int]:
    return await write_log(store, now)


# -- a clean log ---------------------------------------------------------------------------------


async def test_a_clean_log_verifies(store: Store, log: list[int], now: datetime) -> None:
    for batch in (1, 5, 10_000):
        report = await verify_chains(store, now=now, batch=batch)
        assert report.ok
        assert report.as_json()["chains"]["attendance"] == {
            "ok": True,
            "rows": EVENTS,
            "pruned_followed": 0,
            "head": (await snapshot(store))[-1]["hash"],
            "fault": None,
        }
        assert report.chains["admin"].rows == 4


async def test_an_empty_store_verifies(store: Store, now: datetime) -> None:
    report = await verify_chains(store, now=now)
    assert report.ok
    assert [(c.rows, c.head) for c in report.chains.values()] == [(0, GENESIS), (0, GENESIS)]


# -- tampering, found at the right position ------------------------------------------------------

edits = st.sampled_from(["payload", "kind", "server_time", "client_time", "late", "source"])


@MUTATIONS
@given(position=st.integers(0, EVENTS - 1), what=edits)
async def test_an_edited_row_is_found(
    store: Store, log: list[int], now: datetime, position: int, what: str
) -> None:
    saved = await snapshot(store)
    row = saved[position]
    changed = {
        "payload": {**row["payload"], "visible": False},
        "kind": "check_out",
        "server_time": row["server_time"] + timedelta(microseconds=1),
        "client_time": row["client_time"] - timedelta(seconds=30),
        "late": True,
        "source": "member:9999",
    }[what]
    async with store.write() as db:
        await update_row(db, log[position], **{what: changed})
    try:
        assert await attendance_fault(store, now) == ChainFault(position, log[position], EDITED)
    finally:
        await restore(store, saved)


@MUTATIONS
@given(position=st.integers(0, EVENTS - 2))
async def test_a_removed_row_is_found(
    store: Store, log: list[int], now: datetime, position: int
) -> None:
    saved = await snapshot(store)
    async with store.write() as db:
        await db.execute(delete(AttendanceEvent).where(AttendanceEvent.id == log[position]))
    try:
        # The row now at that position is the removed one's successor, linking to it.
        assert await attendance_fault(store, now) == ChainFault(
            position, log[position + 1], LINK_BROKEN
        )
    finally:
        await restore(store, saved)


@MUTATIONS
@given(
    position=st.integers(0, EVENTS),
    forgery=st.sampled_from(["garbage", "wrong_hash", "well_formed"]),
    salt=st.binary(min_size=4, max_size=4),
)
async def test_an_inserted_row_is_found(
    store: Store, log: list[int], now: datetime, position: int, forgery: str, salt: bytes
) -> None:
    saved = await snapshot(store)
    prev = saved[position - 1]["hash"] if position else GENESIS
    template = saved[min(position, EVENTS - 1)]
    fields = {
        k: template[k]
        for k in (
            "session_id",
            "kind",
            "member_id",
            "venue_id",
            "source",
            "client_time",
            "server_time",
            "late",
        )
    }
    fields["event_uuid"] = uuid.UUID(bytes=salt * 4)
    fields["payload"] = {"forged": True}
    junk = ("e" + salt.hex()[:7]) * 8  # never the genesis hash, never a stored one
    prev_hash, digest = {
        "garbage": (junk, junk[::-1]),
        "wrong_hash": (prev, junk),
        "well_formed": (prev, link(prev, fields)),
    }[forgery]
    new_id = log[position] if position < EVENTS else log[-1] + 1
    async with store.write() as db:
        # Make room in the id order: everything from the position on moves up.
        await db.execute(
            update(AttendanceEvent)
            .where(AttendanceEvent.id >= new_id)
            .values(id=AttendanceEvent.id + 10_000)
        )
        await db.execute(
            insert(AttendanceEvent),
            [{**fields, "id": new_id, "prev_hash": prev_hash, "hash": digest, "pruned_at": None}],
        )
    try:
        fault = await attendance_fault(store, now)
        if forgery == "well_formed":
            if position == EVENTS:
                assert fault is None  # a correct append at the end is just an append
            else:  # the forged row holds; the row after it no longer links
                assert fault == ChainFault(position + 1, log[position] + 10_000, LINK_BROKEN)
        else:
            reason = LINK_BROKEN if forgery == "garbage" else EDITED
            assert fault == ChainFault(position, new_id, reason)
    finally:
        await restore(store, saved)


@MUTATIONS
@given(data=st.data())
async def test_reordered_rows_are_found(
    store: Store, log: list[int], now: datetime, data: st.DataObject
) -> None:
    first = data.draw(st.integers(0, EVENTS - 2), label="first")
    second = data.draw(st.integers(first + 1, EVENTS - 1), label="second")
    saved = await snapshot(store)
    content = [c for c in EVENT_COLUMNS if c != "id"]
    a, b = ({c: saved[p][c] for c in content} for p in (first, second))
    async with store.write() as db:
        # Through placeholders, so the unique hash and (session, uuid) never collide.
        await update_row(db, log[first], hash="f" * 64, event_uuid=uuid.uuid4())
        await update_row(db, log[second], **a)
        await update_row(db, log[first], **b)
    try:
        assert await attendance_fault(store, now) == ChainFault(first, log[first], LINK_BROKEN)
    finally:
        await restore(store, saved)


async def test_an_edited_admin_entry_is_found(store: Store, log: list[int], now: datetime) -> None:
    async with store.read() as db:
        ids = list(await db.scalars(select(AdminEvent.id).order_by(AdminEvent.id)))
    async with store.write() as db:
        await db.execute(
            update(AdminEvent).where(AdminEvent.id == ids[2]).values(actor="user:mallory")
        )
    report = await verify_chains(store, now=now)
    assert report.chains["attendance"].ok
    assert report.chains["admin"].fault == ChainFault(2, ids[2], EDITED)
    assert not report.ok


# -- pruned rows -----------------------------------------------------------------------------------


async def test_pruned_rows_are_followed_by_their_links(
    store: Store, log: list[int], now: datetime
) -> None:
    # Heartbeats (every row but each third) are raw evidence that retention may prune.
    pruned = [log[1], log[4], log[5], log[-2]]
    async with store.write() as db:
        session_id = (await db.scalars(select(AttendanceEvent.session_id))).first()
        await db.execute(
            update(AttendanceEvent)
            .where(AttendanceEvent.id.in_(pruned))
            .values(payload={}, pruned_at=now + timedelta(days=400))
        )
    # Content removed without a logged retention run: that is tampering, not retention.
    assert await attendance_fault(store, now) == ChainFault(1, log[1], UNLOGGED_PRUNE)
    async with store.write() as db:
        await record_admin_event(
            db,
            now=now + timedelta(days=400),
            actor="retention",
            action="retention_pruned_events",
            target=f"session:{session_id}",
            detail={"kinds": ["heartbeat", "media"], "rows": 4, "days": 30},
        )
    report = await verify_chains(store, now=now, batch=3)
    assert report.ok
    assert (report.chains["attendance"].rows, report.chains["attendance"].pruned_followed) == (
        EVENTS,
        4,
    )
    # A pruned row's link is still checked.
    async with store.write() as db:
        prev = (await db.get(AttendanceEvent, log[5])).prev_hash  # type: ignore[union-attr]
        await update_row(db, log[5], prev_hash="0" * 63 + "1")
    assert await attendance_fault(store, now) == ChainFault(5, log[5], LINK_BROKEN)
    async with store.write() as db:
        await update_row(db, log[5], prev_hash=prev)
    assert await attendance_fault(store, now) is None
    # Retention never removes a check-in: one emptied is found.
    async with store.write() as db:
        await update_row(db, log[3], payload={}, pruned_at=now)
    assert await attendance_fault(store, now) == ChainFault(3, log[3], UNLOGGED_PRUNE)
    async with store.write() as db:
        await update_row(db, log[3], pruned_at=None)
    assert await attendance_fault(store, now) == ChainFault(3, log[3], EDITED)


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pem_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def checkpoint_of(store: Store, key: Ed25519PrivateKey, now: datetime) -> str:
    return sign_checkpoint(await verify_chains(store, now=now), key).document()


@MUTATIONS
@given(keep=st.integers(0, EVENTS))
async def test_a_truncated_log_is_found_against_a_checkpoint(
    store: Store, log: list[int], now: datetime, key: Ed25519PrivateKey, keep: int
) -> None:
    saved = await snapshot(store)
    document = await checkpoint_of(store, key, now)
    async with store.write() as db:
        await db.execute(delete(AttendanceEvent).where(AttendanceEvent.id.in_(log[keep:])))
    try:
        plain = await verify_chains(store, now=now)
        assert plain.ok, "a shorter chain still holds on its own"
        report = await verify_against(store, document, pem_of(key), now=now)
        expected = None if keep == EVENTS else ChainFault(keep, None, TRUNCATED)
        assert report.chains["attendance"].fault == expected
        assert report.chains["admin"].ok
    finally:
        await restore(store, saved)


async def test_a_log_that_grew_extends_its_checkpoint(
    store: Store, log: list[int], now: datetime, key: Ed25519PrivateKey
) -> None:
    document = await checkpoint_of(store, key, now)
    more = await write_log(store, now + timedelta(hours=1), events=3)  # a new session
    report = await verify_against(store, document, pem_of(key), now=now)
    assert report.ok
    attendance = report.chains["attendance"]
    assert (attendance.rows, attendance.checkpoint_count) == (EVENTS + 3, EVENTS)
    assert len(more) == EVENTS + 3


async def test_rewritten_and_rehashed_history_diverges_from_the_checkpoint(
    store: Store, log: list[int], now: datetime, key: Ed25519PrivateKey
) -> None:
    document = await checkpoint_of(store, key, now)
    rows = await snapshot(store)
    rows[3]["payload"] = {"rewritten": True}
    prev = GENESIS
    for row in rows:  # a forger with database access recomputes every hash
        fields = {
            k: row[k]
            for k in (
                "session_id",
                "event_uuid",
                "kind",
                "member_id",
                "venue_id",
                "source",
                "client_time",
                "server_time",
                "late",
                "payload",
            )
        }
        row["prev_hash"], row["hash"] = prev, link(prev, fields)
        prev = row["hash"]
    await restore(store, rows)
    assert (await verify_chains(store, now=now)).ok
    report = await verify_against(store, document, pem_of(key), now=now)
    assert report.chains["attendance"].fault == ChainFault(EVENTS - 1, log[-1], DIVERGED)


async def test_forged_or_altered_checkpoints_are_refused(
    store: Store, log: list[int], now: datetime, key: Ed25519PrivateKey
) -> None:
    document = await checkpoint_of(store, key, now)
    assert read_checkpoint(document, pem_of(key)).chains["attendance"].count == EVENTS

    altered = json.loads(document)
    altered["checkpoint"]["chains"]["attendance"]["count"] = EVENTS - 2
    with pytest.raises(CheckpointRefused, match="signature does not verify"):
        read_checkpoint(json.dumps(altered), pem_of(key))

    forger = Ed25519PrivateKey.generate()
    forged = json.loads(document)
    forged["signature"] = base64.b64encode(
        forger.sign(json.dumps(forged["checkpoint"]).encode())
    ).decode()
    with pytest.raises(CheckpointRefused, match="signature does not verify"):
        read_checkpoint(json.dumps(forged), pem_of(key))
    with pytest.raises(CheckpointRefused, match=r"signed by key \w+, not by the given key"):
        read_checkpoint(document, pem_of(forger))
    with pytest.raises(CheckpointRefused, match="not a studycast checkpoint"):
        read_checkpoint("{}", pem_of(key))
    with pytest.raises(CheckpointRefused, match="not a PEM public key"):
        read_checkpoint(document, b"nonsense")


async def test_no_checkpoint_of_a_broken_chain(
    store: Store, log: list[int], now: datetime, key: Ed25519PrivateKey
) -> None:
    async with store.write() as db:
        await update_row(db, log[2], kind="check_out")
    with pytest.raises(Exception, match="attendance chain broken at position 2"):
        await checkpoint_of(store, key, now)


def test_the_audit_key_is_private_and_made_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = public_key_pem(settings)
    path = tmp_path / "data" / "audit_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_pem(settings) == first
    assert isinstance(audit_key(settings), Ed25519PrivateKey)
    assert [p.name for p in path.parent.iterdir()] == ["audit_key"]  # no temporary left


async def test_make_checkpoint_is_recorded_in_the_admin_trail(
    store: Store, log: list[int], now: datetime, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    made = await make_checkpoint(store, settings, now=now, actor="user:olga")
    async with store.read() as db:
        last = await db.scalar(select(AdminEvent).order_by(AdminEvent.id.desc()).limit(1))
    assert last is not None
    assert (last.actor, last.action, last.detail) == (
        "user:olga",
        "audit_checkpoint",
        made.body()["chains"],
    )
    # The entry comes after the checkpoint, which still holds for the grown trail.
    report = await verify_against(store, made.document(), public_key_pem(settings), now=now)
    assert report.ok and report.chains["admin"].rows == 5


# -- the CLI -------------------------------------------------------------------------------------


def studycast(url: str, data_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["--database-url", url, "--data-dir", str(data_dir), "audit", *args],
        prog_name="studycast",
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"STUDYCAST_{name.upper()}", raising=False)
    monkeypatch.chdir(tmp_path)


def test_cli_end_to_end(database_url: str, tmp_path: Path, now: datetime, clean_env: None) -> None:
    async def prepare() -> list[int]:
        store = Store(database_url)
        try:
            await upgrade(store)
            return await write_log(store, now)
        finally:
            await store.close()

    async def tamper(*statements: Any) -> None:
        store = Store(database_url)
        try:
            async with store.write() as db:
                for statement in statements:
                    await db.execute(statement)
        finally:
            await store.close()

    log = asyncio.run(prepare())
    data = tmp_path / "data"

    verified = studycast(database_url, data, "verify")
    assert verified.exit_code == 0, verified.output
    assert "both chains hold" in verified.stdout

    made = studycast(database_url, data, "checkpoint")
    assert made.exit_code == 0, made.output
    (tmp_path / "cp.json").write_text(made.stdout)
    assert json.loads(made.stdout)["checkpoint"]["chains"]["attendance"]["count"] == EVENTS
    key = studycast(database_url, data, "public-key")
    assert key.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "key.pem").write_text(key.stdout)
    assert stat.S_IMODE(os.stat(data / "audit_key").st_mode) == 0o600

    against = ["--against", str(tmp_path / "cp.json"), "--public-key", str(tmp_path / "key.pem")]
    ok = studycast(database_url, data, "verify", *against, "--json")
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.stdout)
    assert body["ok"] is True
    assert body["chains"]["admin"]["rows"] == 5  # the checkpoint's own entry came after it
    assert body["chains"]["attendance"]["checkpoint"]["count"] == EVENTS

    asyncio.run(
        tamper(
            update(AttendanceEvent)
            .where(AttendanceEvent.id == log[3])
            .values(payload={"visible": False})
        )
    )
    broken = studycast(database_url, data, "verify")
    assert broken.exit_code == 1
    assert (
        f"attendance chain broken at position 3 (row id {log[3]}): the row's content does "
        "not match its hash (row edited)"
    ) in broken.stderr
    refused = studycast(database_url, data, "checkpoint")
    assert refused.exit_code == 1
    assert "no checkpoint of a broken chain" in refused.stderr

    asyncio.run(tamper(delete(AttendanceEvent).where(AttendanceEvent.id.in_(log[3:]))))
    truncated = studycast(database_url, data, "verify", *against)
    assert truncated.exit_code == 1
    assert "attendance chain broken at position 3 (no row): the log ends before" in (
        truncated.stderr
    )

    (tmp_path / "cp.json").write_text(made.stdout.replace(f'"count": {EVENTS}', '"count": 3'))
    forged = studycast(database_url, data, "verify", *against)
    assert forged.exit_code == 1
    assert "signature does not verify" in forged.stderr
    assert "Traceback" not in forged.output


# -- the API ---------------------------------------------------------------------------------------


@pytest.fixture
async def client(
    store: Store, clock: FakeClock, tmp_path: Path, now: datetime
) -> AsyncIterator[Client]:
    async with store.write() as db:
        for username, role in [("olga", Role.ORGANISER), ("aldo", Role.AUDITOR)]:
            await add_user(
                db, username=username, role=role, password=PASSWORD, now=now, actor="test"
            )
    app = create_app(make_settings(tmp_path), store, clock=clock)
    async with TestClient(TestServer(app)) as c:
        yield c


async def log_in(client: Client, username: str) -> str:
    r = await client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert r.status == 200, await r.text()
    return str((await r.json())["csrf_token"])


async def test_api_for_auditors_and_organisers(
    client: Client, store: Store, log: list[int], now: datetime
) -> None:
    assert (await client.get("/api/audit/status")).status == 401

    await log_in(client, "aldo")
    r = await client.get("/api/audit/status")
    assert r.status == 200
    body = await r.json()
    assert (body["ok"], body["checked_at"]) == (True, "2026-11-24T08:00:00.000000Z")
    assert body["chains"]["attendance"]["rows"] == EVENTS
    r = await client.get("/api/audit/public-key")
    assert (r.status, r.content_type) == (200, "text/plain")
    pem = await r.text()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    csrf = (await (await client.get("/api/me")).json())["csrf_token"]
    r = await client.post("/api/audit/checkpoints", headers={"X-CSRF-Token": csrf})
    assert r.status == 403

    csrf = await log_in(client, "olga")
    r = await client.post("/api/audit/checkpoints", headers={"X-CSRF-Token": csrf})
    assert r.status == 201
    document = await r.text()
    checkpoint = read_checkpoint(document, pem)
    assert checkpoint.chains["attendance"].count == EVENTS
    async with store.read() as db:
        actions = list(await db.scalars(select(AdminEvent.action).order_by(AdminEvent.id)))
    assert actions[-1] == "audit_checkpoint"

    async with store.write() as db:
        await update_row(db, log[7], kind="check_out")
    body = await (await client.get("/api/audit/status")).json()
    assert body["ok"] is False
    assert body["chains"]["attendance"]["fault"] == {
        "position": 7,
        "row_id": log[7],
        "reason": "content_edited",
        "explanation": "the row's content does not match its hash (row edited)",
    }
    assert body["chains"]["admin"]["ok"] is True


async def test_concurrent_status_requests_share_one_scan(
    client: Client, store: Store, log: list[int]
) -> None:
    await log_in(client, "aldo")
    answers = await asyncio.gather(*(client.get("/api/audit/status") for _ in range(5)))
    bodies = [await r.json() for r in answers]
    assert all(b == bodies[0] and b["ok"] for b in bodies)

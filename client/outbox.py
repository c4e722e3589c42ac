"""A local SQLite outbox of record events for the Python clients (``studycast publish`` and
``studycast watch``): nothing the client reports is lost to a network or server failure.

Events are written to the outbox file the moment they are added, then sent in batches to the
session's ``POST /api/sessions/{id}/events`` until the server has given each a final answer
(accepted, refused, duplicate or invalid). Network failures and 5xx answers are retried with
backoff (1 s doubling to 30 s); a retried event keeps its id, so the server stores it once. A
client restarted with the same outbox file resends what it had not got answered.

The file holds one table; each row belongs to a *scope* (events URL and sender), so one file can
serve several sessions or tokens without mixing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

FINAL = frozenset({"accepted", "refused", "duplicate", "invalid"})
MAX_BATCH = 100
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0
# Answered events are kept this long in the file (for the user to look at), then dropped.
KEEP_ANSWERED = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    body TEXT NOT NULL,
    added_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT,
    answered_at TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (scope, status, added_at);
"""


def default_outbox_path() -> Path:
    """``~/.local/state/studycast/outbox.db`` (or under ``$XDG_STATE_HOME``)."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return root / "studycast" / "outbox.db"


@dataclass(frozen=True)
class FlushResult:
    """What one flush did: events answered, still pending, and why it stopped early (if so)."""

    answered: int
    pending: int
    error: str | None = None  # network | server | unauthorized | None
    detail: str = ""


class Outbox:
    """Events for one session's events URL, kept in ``path`` until answered."""

    def __init__(
        self,
        path: Path,
        *,
        events_url: str,
        token: str,
        owner: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
        request_timeout: float = 10.0,
    ) -> None:
        self.path = path
        self.events_url = events_url
        self.scope = f"{events_url} {owner}"
        self._token = token
        self._clock = clock
        self._new_id = new_id
        self._timeout = request_timeout
        self._wake = asyncio.Event()
        self.state = "idle"  # idle | sending | retrying | unauthorized
        self.last_error = ""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    # -- storage ------------------------------------------------------------------------------

    def add(self, kind: str, **fields: Any) -> str:
        """Store an event of type ``kind`` (stamped now, with a fresh id); it is sent soon."""
        event_id = str(self._new_id())
        at = self._clock().isoformat()
        body = {"id": event_id, "type": kind, "at": at, **fields}
        self._db.execute(
            "INSERT INTO outbox (id, scope, body, added_at) VALUES (?, ?, ?, ?)",
            (event_id, self.scope, json.dumps(body, ensure_ascii=False), at),
        )
        self._wake.set()
        return event_id

    def pending(self, limit: int = MAX_BATCH) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT body FROM outbox WHERE scope = ? AND status IS NULL "
            "ORDER BY added_at, rowid LIMIT ?",
            (self.scope, limit),
        ).fetchall()
        return [json.loads(body) for (body,) in rows]

    @property
    def pending_count(self) -> int:
        (count,) = self._db.execute(
            "SELECT count(*) FROM outbox WHERE scope = ? AND status IS NULL", (self.scope,)
        ).fetchone()
        return int(count)

    def answered(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Answered events of this scope: id -> (status, the server's result or error)."""
        rows = self._db.execute(
            "SELECT id, status, result FROM outbox WHERE scope = ? AND status IS NOT NULL",
            (self.scope,),
        ).fetchall()
        return {i: (status, json.loads(result or "{}")) for i, status, result in rows}

    def _settle(self, results: list[dict[str, Any]]) -> int:
        now = self._clock().isoformat()
        settled = 0
        with contextlib.closing(self._db.cursor()) as cur:
            cur.execute("BEGIN IMMEDIATE")
            for r in results:
                status = r.get("status")
                if status not in FINAL or not isinstance(r.get("id"), str):
                    continue
                detail = r.get("result") if r.get("result") is not None else r.get("error")
                cur.execute(
                    "UPDATE outbox SET status = ?, answered_at = ?, result = ? "
                    "WHERE id = ? AND scope = ? AND status IS NULL",
                    (
                        status,
                        now,
                        json.dumps(detail or {}, ensure_ascii=False),
                        r["id"],
                        self.scope,
                    ),
                )
                settled += cur.rowcount
            # Keep the newest answered rows only.
            cur.execute(
                "DELETE FROM outbox WHERE scope = ? AND status IS NOT NULL AND rowid NOT IN ("
                "SELECT rowid FROM outbox WHERE scope = ? AND status IS NOT NULL "
                "ORDER BY answered_at DESC, rowid DESC LIMIT ?)",
                (self.scope, self.scope, KEEP_ANSWERED),
            )
            cur.execute("COMMIT")
        return settled

    def _count_attempt(self, ids: list[str]) -> None:
        self._db.executemany(
            "UPDATE outbox SET attempts = attempts + 1 WHERE id = ? AND scope = ?",
            [(i, self.scope) for i in ids],
        )

    # -- sending ------------------------------------------------------------------------------

    async def flush(self, http: aiohttp.ClientSession) -> FlushResult:
        """Send what is pending, batch by batch, until nothing is left or a batch fails."""
        answered = 0
        while True:
            batch = self.pending()
            if not batch:
                return FlushResult(answered, 0)
            ids = [e["id"] for e in batch]
            self._count_attempt(ids)
            body = {"events": batch, "sent_at": self._clock().isoformat()}
            try:
                async with http.post(
                    self.events_url,
                    json=body,
                    headers={"Authorization": f"Bearer {self._token}"},
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as r:
                    text = await r.text()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return FlushResult(
                    answered, self.pending_count, "network", str(exc) or type(exc).__name__
                )
            if status in (401, 403):
                return FlushResult(answered, self.pending_count, "unauthorized", _detail(text))
            if status >= 500 or status == 429:
                return FlushResult(answered, self.pending_count, "server", f"HTTP {status}")
            if status != 200:
                # The batch as a whole was refused (a client bug): answer each event with it,
                # so one bad batch cannot block the outbox for ever.
                detail = {"code": "batch_refused", "detail": f"HTTP {status}: {_detail(text)}"}
                answered += self._settle(
                    [{"id": i, "status": "invalid", "error": detail} for i in ids]
                )
                continue
            try:
                results = json.loads(text)["results"]
            except (ValueError, KeyError, TypeError):
                return FlushResult(answered, self.pending_count, "server", "unreadable answer")
            answered += self._settle(results)

    async def run(self, http: aiohttp.ClientSession, *, every_s: float = 5.0) -> None:
        """Flush now, whenever an event is added, every ``every_s`` and, after a failure, with
        backoff; until cancelled."""
        delay = FIRST_RETRY_S
        while True:
            self._wake.clear()
            self.state = "sending"
            result = await self.flush(http)
            if result.error is None:
                self.state, self.last_error = "idle", ""
                delay = FIRST_RETRY_S
                wait = every_s
            else:
                self.state = "unauthorized" if result.error == "unauthorized" else "retrying"
                self.last_error = f"{result.error}: {result.detail}"
                log.warning("outbox: %s (%d pending)", self.last_error, result.pending)
                wait = delay
                delay = min(MAX_RETRY_S, delay * 2)
            if result.error is not None:
                # Events added during a backoff wait for it: a failing server is not hammered.
                await asyncio.sleep(wait)
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancel that comes
            # just as the event is set (the last event added while the client stops).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def close(self) -> None:
        """Close the file (idempotent); pending events stay in it for the next run."""
        with contextlib.suppress(sqlite3.ProgrammingError):
            self._db.close()


def _detail(text: str) -> str:
    try:
        body = json.loads(text)
        return str(body.get("detail") or body.get("error") or text)[:300]
    except (ValueError, AttributeError):
        return text[:300]

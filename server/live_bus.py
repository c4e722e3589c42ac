"""Live events shared by every node (and worker process) on one PostgreSQL: LISTEN/NOTIFY.

Each node's ``LiveHub`` serves its own SSE clients. An event published on one node (a quiz opened
on the origin, a presence check due) must reach members connected to every node, so the bus
sends each locally published event as a ``NOTIFY`` on one channel and publishes what the other
nodes sent into the local hub. PostgreSQL is already what every node shares (the record store),
so no other service is needed; NOTIFY is delivered to every listening connection in commit
order, and the bus sends from one task, so a node's events arrive everywhere in the order it
published them.

A payload is at most ``MAX_PAYLOAD`` bytes (PostgreSQL's limit is 8000): a larger event is kept
local and logged (live events are small: a question with its choices, a code, counts). When the
listening connection is lost, the bus connects again with backoff; events published elsewhere
meanwhile are not replayed (a client that reconnects its stream gets a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from server.live import LiveHub

log = logging.getLogger(__name__)

CHANNEL = "studycast_live"
MAX_PAYLOAD = 7900
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0
QUEUE_SIZE = 10_000


def asyncpg_dsn(database_url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes, from a SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class LiveBus:
    """Shares a hub's events with the other nodes. ``start()`` once, ``close()`` idempotent."""

    def __init__(self, database_url: str, hub: LiveHub, node: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._hub = hub
        self.node = node
        self._outbox: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self._conn: asyncpg.Connection | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0
        self.received = 0
        self.dropped = 0

    async def start(self) -> None:
        """Connect (waiting for the first connection, so a node does not serve without its
        share of events) and keep connected in the background."""
        await self._connect()
        self._hub.on_publish = self._publish_elsewhere
        self._task = asyncio.create_task(self._run())

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._received)
        conn.add_termination_listener(lambda _conn: self._connected.clear())
        self._conn = conn
        self._connected.set()
        log.info("live bus: node %s listening on %s", self.node, CHANNEL)

    def _publish_elsewhere(
        self, session_id: int, type: str, data: dict[str, Any], audience: Iterable[str]
    ) -> None:
        """Called by the hub for every event published on this node."""
        payload = json.dumps(
            {"n": self.node, "s": session_id, "t": type, "d": data, "a": sorted(audience)},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        if len(payload.encode()) > MAX_PAYLOAD:
            self.dropped += 1
            log.warning(
                "live bus: %s of session %s is too large to share (%d bytes)",
                type,
                session_id,
                len(payload.encode()),
            )
            return
        try:
            self._outbox.put_nowait(payload)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "live bus: the send queue is full; %s of session %s not shared", type, session_id
            )

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message["n"] == self.node:
                return
            self.received += 1
            self._hub.publish(
                int(message["s"]),
                str(message["t"]),
                dict(message["d"]),
                audience=list(message["a"]),
                forwarded=True,
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("live bus: unreadable event from another node: %s", exc)

    async def _run(self) -> None:
        """Send queued events in order; connect again when the connection is lost."""
        delay = FIRST_RETRY_S
        while not self._closed:
            if not self._connected.is_set() or self._conn is None or self._conn.is_closed():
                try:
                    await self._connect()
                    delay = FIRST_RETRY_S
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("live bus: cannot connect (%s); again in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(MAX_RETRY_S, delay * 2)
                    continue
            payload = await self._outbox.get()
            try:
                assert self._conn is not None
                await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                self.sent += 1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.dropped += 1
                self._connected.clear()
                log.warning("live bus: could not share an event: %s", exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.on_publish = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)

"""The nodes serving a deployment (the origin, its edges, their workers), as each reports itself.

Every node writes its own row of ``nodes`` every ``REPORT_S`` seconds: its role and public URL,
the sessions it serves with their viewers by kind, its CPU load, its event loop's worst lag since
the last report and its capacity. ``GET /api/nodes`` lists the rows (staff only), with whether
each was heard from lately; the organiser's live counts add the viewers of every node. Nothing
here is needed for media or the record to work: a node that cannot write its row only logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.clock import Clock, as_utc
from attendance.errors import StudycastError
from attendance.models import Node, Role
from attendance.store import Store
from server.auth import CLOCK, STORE, require_role
from server.loop_lag import LoopLag
from server.relay.relay import Relay
from server.relay.upstream import Upstream

log = logging.getLogger(__name__)

REPORT_S = 5.0
# A node not heard from for this long is listed as offline (its viewers have gone elsewhere).
OFFLINE_AFTER = timedelta(seconds=3 * REPORT_S)

routes = web.RouteTableDef()


class NodeReporter:
    """Writes this node's row: what it serves and how busy it is."""

    def __init__(
        self,
        store: Store,
        relay: Relay,
        clock: Clock,
        *,
        name: str,
        role: str,
        url: str,
        feeds: Any = None,
        loop_lag: LoopLag | None = None,
    ) -> None:
        self._store = store
        self._relay = relay
        self._clock = clock
        self.name = name
        self.role = role
        self.url = url
        self._feeds = feeds
        self._loop_lag = loop_lag
        self._started = clock()
        self._cpu = (time.monotonic(), time.process_time())
        self._stop = asyncio.Event()

    def status(self) -> dict[str, Any]:
        """What this node serves now, and its load since the last report."""
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu
        self._cpu = (wall, cpu)
        load = (cpu - last_cpu) / (wall - last_wall) if wall > last_wall else 0.0
        sessions = {}
        for session_id, hub in self._relay.sessions.items():
            by_kind: dict[str, int] = {}
            for viewer in hub.viewers.values():
                by_kind[viewer.kind] = by_kind.get(viewer.kind, 0) + 1
            sessions[str(session_id)] = {
                "state": hub.state,
                "source": None
                if hub.ingest is None
                else ("upstream" if isinstance(hub.ingest, Upstream) else "broadcaster"),
                "viewers": sum(n for k, n in by_kind.items() if k != "edge"),
                "by_kind": by_kind,
            }
        return {
            "sessions": sessions,
            "viewers": sum(s["viewers"] for s in sessions.values()),
            "max_viewers": self._relay.max_viewers,
            "cpu": round(load, 3),  # cores busy in this process (1.0 = one core)
            "cores": os.cpu_count() or 1,
            # The event loop's worst lag since the last report: a stall every viewer here saw.
            "loop_lag_max_s": None
            if self._loop_lag is None
            else round(self._loop_lag.take_worst(), 3),
            "pulling": list(getattr(self._feeds, "sessions", [])),
        }

    async def report(self) -> None:
        now = self._clock()
        status = self.status()
        async with self._store.write() as db:
            row = await db.get(Node, self.name)
            if row is None:
                db.add(
                    Node(
                        name=self.name,
                        role=self.role,
                        url=self.url,
                        pid=os.getpid(),
                        started_at=self._started,
                        seen_at=now,
                        status=status,
                    )
                )
            else:
                row.role, row.url, row.pid = self.role, self.url, os.getpid()
                row.started_at, row.seen_at, row.status = self._started, now, status

    async def run(self) -> None:
        """Report now and every ``REPORT_S`` seconds until ``stop()``. Stopped, not cancelled:
        a write cut short by a cancel leaves the pool a connection to roll back at shutdown."""
        while not self._stop.is_set():
            try:
                await self.report()
            except StudycastError as exc:
                log.warning("could not report this node: %s", exc.detail)
            except Exception:
                log.exception("could not report this node")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_S):
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


def describe(row: Node, now: datetime) -> dict[str, Any]:
    seen = as_utc(row.seen_at)
    return {
        "name": row.name,
        "role": row.role,
        "url": row.url,
        "pid": row.pid,
        "online": now - seen <= OFFLINE_AFTER,
        "started_at": as_utc(row.started_at).isoformat(),
        "seen_at": seen.isoformat(),
        "seen_s_ago": round((now - seen).total_seconds(), 1),
        **row.status,
    }


async def list_nodes(db: AsyncSession, now: datetime) -> list[dict[str, Any]]:
    rows = await db.scalars(select(Node).order_by(Node.role.desc(), Node.name))
    return [describe(r, now) for r in rows]


async def viewers_elsewhere(
    db: AsyncSession, session_id: int, *, now: datetime, this_node: str
) -> dict[str, int]:
    """Viewers by kind of a session on the other nodes that are online (edges not counted)."""
    totals: dict[str, int] = {}
    for row in await db.scalars(select(Node).where(Node.name != this_node)):
        if now - as_utc(row.seen_at) > OFFLINE_AFTER:
            continue
        served = row.status.get("sessions", {}).get(str(session_id))
        for kind, n in (served or {}).get("by_kind", {}).items():
            if kind != "edge":
                totals[kind] = totals.get(kind, 0) + int(n)
    return totals


@routes.get("/api/nodes")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def nodes_index(request: web.Request) -> web.Response:
    """Every node with its sessions, viewers and load (organisers and auditors)."""
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].read() as db:
        nodes = await list_nodes(db, now)
    return web.json_response({"nodes": nodes, "offline_after_s": OFFLINE_AFTER.total_seconds()})

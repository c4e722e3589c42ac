"""Live events of a session (quiz opened, presence checks, counts), sent as Server-Sent Events.

``LiveHub`` is in-process and does no I/O: ``publish`` records an event in a bounded per-session
history and offers it to every subscriber's bounded queue without waiting. A client too slow to
keep up is cut off instead of holding anyone up; it reconnects with ``Last-Event-ID`` and resumes
from the history. ``stream`` is the thin aiohttp shell that writes one subscription as SSE.

Event ids are ``"<epoch>-<n>"``: ``epoch`` is random per hub (so per process) and ``n`` counts a
session's events from 1, so an id from before a restart is recognised as unusable and the client
gets a fresh snapshot rather than a wrong replay. Call the hub from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Self

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

log = logging.getLogger(__name__)

AUDIENCES = frozenset({"organiser", "auditor", "venue", "member"})
KEEPALIVE_S = 15.0
RETRY_MS = 3000
SNAPSHOT = "snapshot"  # the event type ``stream`` sends when it cannot replay

_RETRY_HINT = f"retry: {RETRY_MS}\r\n\r\n".encode()
_LINE_BREAK = re.compile(r"[\r\n\0]")


PublishListener = Callable[[int, str, dict[str, Any], frozenset[str]], None]


@dataclass(frozen=True)
class LiveEvent:
    """One thing that happened in a session, for the audiences allowed to know it."""

    id: str
    seq: int
    type: str
    data: dict[str, Any]
    audience: frozenset[str]

    @cached_property
    def data_json(self) -> str:
        """``data`` as it goes on the wire: encoded once, however many subscribers."""
        return _to_json(self.data)


def _to_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _check_audience(audience: str) -> None:
    if audience not in AUDIENCES:
        raise ValueError(f"unknown audience {audience!r}; expected one of {sorted(AUDIENCES)}")


class Subscription:
    """One listener's bounded queue of a session's events; ``async for`` it, close it when done.

    Iteration stops when the subscription ends: closed, hub closed, or queue overflowed
    (``overflowed`` is then true and the client should resume from the history).
    """

    def __init__(self, hub: LiveHub, session_id: int, audience: str, queue_size: int) -> None:
        self.session_id = session_id
        self.audience = audience
        self.overflowed = False
        self._hub = hub
        self._queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(queue_size)
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def _offer(self, event: LiveEvent) -> None:
        if self._ended or self.audience not in event.audience:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            log.info("live: cut off a slow %s of session %s", self.audience, self.session_id)
            self.close()

    def close(self) -> None:
        """Stop listening; idempotent."""
        if self._ended:
            return
        self._ended = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)  # wakes a reader waiting in __anext__
        self._hub._leave(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LiveEvent:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event


class _Session:
    """What the hub keeps per session: its event counter, recent history, live subscribers."""

    def __init__(self, history: int) -> None:
        self.seq = 0
        self.history: deque[LiveEvent] = deque(maxlen=history)
        self.subscribers: set[Subscription] = set()
        self.forgotten = False


class LiveHub:
    """Publishes session events to subscribers and keeps the last ``history`` per session."""

    def __init__(self, *, history: int = 1000, queue_size: int = 256) -> None:
        if history < 0 or queue_size < 1:
            raise ValueError("history must be >= 0 and queue_size >= 1")
        self.epoch = secrets.token_hex(4)
        self._history = history
        self._queue_size = queue_size
        self._sessions: dict[int, _Session] = {}
        self._closed = False
        # Told of every event published here (not of forwarded ones): the bus to other nodes.
        self.on_publish: PublishListener | None = None

    def publish(
        self,
        session_id: int,
        type: str,
        data: dict[str, Any],
        *,
        audience: Iterable[str] = AUDIENCES,
        forwarded: bool = False,
    ) -> LiveEvent:
        """Record an event and offer it to the session's subscribers; never waits.

        ``data`` is copied and JSON-encoded here, so data JSON cannot hold fails the publisher
        (TypeError/ValueError) rather than every stream. ``forwarded``: the event comes from
        another node, so it is not passed on again.
        """
        if isinstance(audience, str):
            raise ValueError(f"audience is a set of names, not the string {audience!r}")
        allowed = frozenset(audience)
        if not allowed or not allowed <= AUDIENCES:
            raise ValueError(f"audience must be a non-empty subset of {sorted(AUDIENCES)}")
        if not type or type == SNAPSHOT or _LINE_BREAK.search(type):
            raise ValueError(f"{type!r} cannot be a live event type")
        seq = self._last_seq(session_id) + 1
        event = LiveEvent(f"{self.epoch}-{seq}", seq, type, dict(data), allowed)
        _ = event.data_json
        session = self._session(session_id)
        session.seq = seq
        session.history.append(event)
        for sub in list(session.subscribers):
            sub._offer(event)
        if self.on_publish is not None and not forwarded:
            try:
                self.on_publish(session_id, type, event.data, allowed)
            except Exception:
                log.exception("live: passing %s of session %s on failed", type, session_id)
        return event

    def replay(
        self, session_id: int, last_event_id: str | None, audience: str
    ) -> list[LiveEvent] | None:
        """The events after ``last_event_id`` that ``audience`` may see, or None when that id
        cannot be resumed from (other epoch, malformed, in the future, older than the history)."""
        _check_audience(audience)
        seq = self._seq_of(last_event_id)
        last = self._last_seq(session_id)
        if seq is None or seq > last:
            return None
        if seq == last:
            return []
        history = self._sessions[session_id].history
        if not history or history[0].seq > seq + 1:
            return None
        # The history holds consecutive seqs, so seq + 1 sits at a known index.
        missed = itertools.islice(history, seq + 1 - history[0].seq, None)
        return [event for event in missed if audience in event.audience]

    def replay_all(self, session_id: int) -> list[LiveEvent]:
        """The session's events still in the history, oldest first."""
        session = self._sessions.get(session_id)
        return list(session.history) if session else []

    def last_id(self, session_id: int) -> str:
        """The id of the session's latest event (``"<epoch>-0"`` before the first)."""
        return f"{self.epoch}-{self._last_seq(session_id)}"

    def subscribe(self, session_id: int, audience: str) -> Subscription:
        """Start queueing the session's events for ``audience``; after ``close()`` it is ended."""
        _check_audience(audience)
        sub = Subscription(self, session_id, audience, self._queue_size)
        if self._closed:
            sub.close()
            return sub
        session = self._session(session_id)
        session.subscribers.add(sub)
        return sub

    def subscribers(self, session_id: int) -> int:
        session = self._sessions.get(session_id)
        return len(session.subscribers) if session else 0

    def active_sessions(self) -> list[int]:
        """The sessions someone is subscribed to, in id order (say, to publish counts to)."""
        return sorted(sid for sid, session in self._sessions.items() if session.subscribers)

    def forget(self, session_id: int) -> None:
        """Drop an ended session's history and counter, now or once its last subscriber leaves.

        Publishing to it afterwards starts a new count, so do not publish to an ended session.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return
        if session.subscribers:
            session.forgotten = True
        else:
            del self._sessions[session_id]

    async def close(self) -> None:
        """End every subscription, and any made later; idempotent."""
        self._closed = True
        for session in list(self._sessions.values()):
            for sub in list(session.subscribers):
                sub.close()

    def _leave(self, sub: Subscription) -> None:
        session = self._sessions.get(sub.session_id)
        if session is None:
            return
        session.subscribers.discard(sub)
        if not session.subscribers and (session.forgotten or session.seq == 0):
            del self._sessions[sub.session_id]

    def _session(self, session_id: int) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(self._history)
        return session

    def _last_seq(self, session_id: int) -> int:
        session = self._sessions.get(session_id)
        return session.seq if session else 0

    def _seq_of(self, event_id: str | None) -> int | None:
        epoch, dash, n = (event_id or "").rpartition("-")
        if not dash or epoch != self.epoch or not (n.isascii() and n.isdigit()) or len(n) > 18:
            return None
        return int(n) if str(int(n)) == n else None


class _LiveResponse(EventSourceResponse):
    """aiohttp-sse's response, never stored by a browser or proxy, never buffered by nginx."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.headers["Cache-Control"] = "no-store"
        self.headers["X-Accel-Buffering"] = "no"


async def stream(
    request: web.Request,
    hub: LiveHub,
    session_id: int,
    audience: str,
    snapshot: Callable[[], Awaitable[dict[str, Any]]],
) -> web.StreamResponse:
    """Serve one SSE connection: the missed events (or a snapshot), then live events until the
    client leaves or the hub closes. A failing ``snapshot`` fails before any header is sent."""
    last_event_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    with hub.subscribe(session_id, audience) as sub:
        # Subscribed first: whatever is published from here on is queued, not lost.
        replayed = hub.replay(session_id, last_event_id, audience)
        sent_seq, snapshot_id = hub._last_seq(session_id), hub.last_id(session_id)
        if replayed is None:
            # The id is taken before the snapshot is read: events published meanwhile are
            # sent after it, perhaps already reflected in it, but never lost.
            opening = [(snapshot_id, SNAPSHOT, _to_json(await snapshot()))]
        else:
            opening = [(event.id, event.type, event.data_json) for event in replayed]
        async with sse_response(
            request, ping_interval=KEEPALIVE_S, response_cls=_LiveResponse
        ) as response:
            watcher = asyncio.create_task(_end_when_gone(response, sub))
            try:
                await response.write(_RETRY_HINT)
                for event_id, name, text in opening:
                    await response.send(text, id=event_id, event=name)
                async for event in sub:
                    if event.seq <= sent_seq:
                        continue
                    await response.send(event.data_json, id=event.id, event=event.type)
                    sent_seq = event.seq
            except (ConnectionResetError, TimeoutError) as exc:
                log.debug("live: %s left session %s: %r", audience, session_id, exc)
            finally:
                watcher.cancel()
    return response


async def _end_when_gone(response: EventSourceResponse, sub: Subscription) -> None:
    """Without ``handler_cancellation`` aiohttp does not stop a handler whose client left; the
    keepalive ping notices, so end the subscription when the pings stop."""
    await response.wait()
    sub.close()

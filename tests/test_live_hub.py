"""The live-event hub and its SSE stream, over a real aiohttp server on loopback: what each
audience sees, in what order, after a reconnect, when too slow, on shutdown, and that nothing
leaks across many connections."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support import Client

from server import live
from server.live import AUDIENCES, LiveEvent, LiveHub, stream

SESSION = 7
STATE = {"state": "live", "title": "Zoë’s seminar"}
WAIT_S = 5.0

# --- a tiny app and an EventSource-like reader ------------------------------------------------


def make_app(
    hub: LiveHub, snapshot: Callable[[], Awaitable[dict[str, Any]]] | None = None
) -> web.Application:
    async def fixed_state() -> dict[str, Any]:
        return dict(STATE)

    async def events(request: web.Request) -> web.StreamResponse:
        audience = request.query.get("as", "member")
        return await stream(
            request, hub, int(request.match_info["id"]), audience, snapshot or fixed_state
        )

    app = web.Application()
    app.router.add_get("/api/sessions/{id}/events/stream", events)
    return app


@asynccontextmanager
async def serving(hub: LiveHub, **app_kwargs: Any) -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_app(hub, **app_kwargs))) as client:
        yield client


@dataclass(frozen=True)
class Sse:
    id: str | None
    event: str
    data: Any


class SseReader:
    """Reads a text/event-stream body block by block, the way a browser's EventSource does."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.retry: int | None = None
        self.comments: list[str] = []
        self.raw: list[str] = []
        self.last_id: str | None = None

    async def next(self) -> Sse | None:
        """The next event, or None at the end of the stream."""
        async with asyncio.timeout(WAIT_S):
            fields: dict[str, str] = {}
            data: list[str] = []
            while line_bytes := await self.response.content.readline():
                line = line_bytes.decode("utf-8").removesuffix("\n").removesuffix("\r")
                self.raw.append(line)
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name == "retry":
                        self.retry = int(value)
                    else:
                        fields[name] = value
                elif data:
                    if "id" in fields:
                        self.last_id = fields["id"]
                    return Sse(
                        fields.get("id"),
                        fields.get("event", "message"),
                        json.loads("\n".join(data)),
                    )
                else:
                    fields = {}
            return None

    async def take(self, n: int) -> list[Sse]:
        events = [await self.next() for _ in range(n)]
        assert None not in events, f"the stream ended early: {events}"
        return [e for e in events if e is not None]

    async def rest(self) -> list[Sse]:
        """Every event until the server ends the stream."""
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
        return events


@asynccontextmanager
async def listen(
    client: Client,
    audience: str = "member",
    last_event_id: str | None = None,
    *,
    via_query: bool = False,
) -> AsyncIterator[SseReader]:
    params = {"as": audience}
    headers = {}
    if last_event_id is not None and via_query:
        params["last_event_id"] = last_event_id
    elif last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = await client.get(
        f"/api/sessions/{SESSION}/events/stream", params=params, headers=headers
    )
    try:
        assert response.status == 200, await response.text()
        yield SseReader(response)
    finally:
        response.close()


def seen(event: LiveEvent) -> Sse:
    return Sse(event.id, event.type, event.data)


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll a condition no event signals (subscriber counts, task counts), for at most WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def hub() -> AsyncIterator[LiveHub]:
    hub = LiveHub()
    yield hub
    await hub.close()


# --- the hub on its own -----------------------------------------------------------------------


async def test_publish_numbers_events_per_session_and_checks_its_input() -> None:
    hub = LiveHub()
    published = [
        hub.publish(1, "quiz_opened", {"quiz": 3}),
        hub.publish(2, "session_state", {"state": "live"}),
        hub.publish(1, "answer_distribution", {"a": 4}, audience={"organiser"}),
    ]
    assert [(e.id, e.seq, e.type, e.audience) for e in published] == [
        (f"{hub.epoch}-1", 1, "quiz_opened", AUDIENCES),
        (f"{hub.epoch}-1", 1, "session_state", AUDIENCES),
        (f"{hub.epoch}-2", 2, "answer_distribution", frozenset({"organiser"})),
    ]
    assert LiveHub().epoch != hub.epoch
    for audience in [{"members"}, set(), "member"]:
        with pytest.raises(ValueError):
            hub.publish(1, "quiz_closed", {}, audience=audience)
    for name in ["", "quiz\nclosed", "snapshot"]:
        with pytest.raises(ValueError):
            hub.publish(1, name, {})
    with pytest.raises(TypeError):
        hub.publish(1, "quiz_closed", {"at": object()})
    data = {"quiz": 3}
    event = hub.publish(1, "quiz_closed", data)
    data["quiz"] = 4
    assert (event.seq, event.data) == (3, {"quiz": 3}), "a refused publish uses no number"
    assert hub.last_id(1) == f"{hub.epoch}-3"
    assert hub.last_id(99) == f"{hub.epoch}-0"


async def test_replay_returns_what_the_audience_missed_or_none() -> None:
    hub = LiveHub(history=4)
    for n in range(1, 7):
        hub.publish(1, "tick", {"n": n}, audience={"organiser"} if n == 5 else AUDIENCES)
    e = hub.epoch

    def seqs(last_event_id: str | None, audience: str = "member") -> list[int] | None:
        events = hub.replay(1, last_event_id, audience)
        return None if events is None else [event.seq for event in events]

    # History keeps 3..6: resuming after 2 works, after 1 does not.
    assert [seqs(f"{e}-{n}") for n in range(7)] == [None, None, [3, 4, 6], [4, 6], [6], [6], []]
    assert seqs(f"{e}-2", "organiser") == [3, 4, 5, 6]
    for unusable in [
        None,
        "",
        f"{e}-7",
        f"{e}-",
        f"{e}-x",
        f"{e}-03",
        f"{e}-\u0664",
        f"{e}--1",
        "deadbeef-3",
        "3",
        e,
    ]:
        assert seqs(unusable) is None, unusable
    assert hub.replay(2, f"{e}-0", "venue") == []
    with pytest.raises(ValueError):
        hub.replay(1, f"{e}-2", "everyone")


async def test_a_subscription_gets_its_audiences_events_until_closed() -> None:
    hub = LiveHub()
    with hub.subscribe(1, "member") as member, hub.subscribe(1, "organiser") as organiser:
        hub.publish(1, "quiz_opened", {})
        hub.publish(1, "answer_distribution", {}, audience={"organiser"})
        hub.publish(2, "quiz_opened", {})
        hub.publish(1, "quiz_closed", {})
        assert (hub.subscribers(1), hub.subscribers(2), hub.active_sessions()) == (2, 0, [1])
        async with asyncio.timeout(WAIT_S):
            assert [(await anext(member)).type for _ in range(2)] == ["quiz_opened", "quiz_closed"]
            assert [(await anext(organiser)).type for _ in range(3)] == [
                "quiz_opened",
                "answer_distribution",
                "quiz_closed",
            ]
            hub.publish(1, "quiz_revealed", {})
            member.close()  # ends it, dropping what was still queued
            member.close()
            assert [e async for e in member] == []
            assert hub.subscribers(1) == 1
            assert (await anext(organiser)).type == "quiz_revealed"
    assert (hub.subscribers(1), hub.active_sessions()) == (0, [])
    with hub.subscribe(1, "venue") as venue, hub.subscribe(1, "auditor") as auditor:
        hub.publish(1, "quiz_opened", {}, audience={"venue", "auditor"})
        hub.publish(1, "quiz_closed", {}, audience={"venue"})
        hub.publish(1, "chain_sealed", {}, audience={"auditor"})
        async with asyncio.timeout(WAIT_S):
            assert [(await anext(venue)).type for _ in range(2)] == ["quiz_opened", "quiz_closed"]
            assert [(await anext(auditor)).type for _ in range(2)] == [
                "quiz_opened",
                "chain_sealed",
            ]


async def test_a_full_queue_ends_only_that_subscription_and_publish_never_waits() -> None:
    hub = LiveHub(queue_size=4)
    slow = hub.subscribe(1, "member")
    fast = hub.subscribe(1, "member")
    received, counts = [], []
    async with asyncio.timeout(WAIT_S):
        for n in range(1, 21):
            hub.publish(1, "tick", {"n": n})  # a plain call: nothing to await, nothing to wait on
            counts.append(hub.subscribers(1))
            received.append((await anext(fast)).seq)
        assert [e async for e in slow] == [], "cut off: its queued events are dropped"
    assert counts == [2, 2, 2, 2] + [1] * 16, "the fifth event overflows the slow queue"
    assert received == list(range(1, 21))
    assert (slow.overflowed, slow.ended, fast.overflowed, fast.ended) == (True, True, False, False)
    fast.close()


async def test_forget_drops_a_session_once_its_subscribers_leave() -> None:
    hub = LiveHub()
    for n in range(3):
        hub.publish(1, "tick", {"n": n})
        hub.publish(2, "tick", {"n": n})
    hub.forget(2)
    assert hub.last_id(2) == f"{hub.epoch}-0"
    with hub.subscribe(1, "member"):
        hub.forget(1)
        assert hub.replay(1, f"{hub.epoch}-1", "member") is not None, "kept while watched"
    assert hub.replay(1, f"{hub.epoch}-1", "member") is None
    assert (hub.last_id(1), hub.subscribers(1)) == (f"{hub.epoch}-0", 0)


# --- the stream over HTTP ---------------------------------------------------------------------


async def test_a_fresh_client_gets_the_snapshot_then_live_events_in_order(hub: LiveHub) -> None:
    before = [hub.publish(SESSION, "session_state", {"state": "live"}) for _ in range(2)]
    async with serving(hub) as client, listen(client) as reader:
        response = reader.response
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Accel-Buffering"] == "no"
        [snapshot] = await reader.take(1)
        live_events = [
            hub.publish(SESSION, "quiz_opened", {"quiz": 1, "question": "Qu’est-ce que c’est ?"}),
            hub.publish(SESSION, "presence_check", {"check": 9}),
            hub.publish(SESSION, "live_counts", {"members": 41, "venues": 3}),
        ]
        assert [snapshot, *await reader.take(3)] == [
            Sse(before[-1].id, "snapshot", STATE),
            *map(seen, live_events),
        ]
        assert reader.retry == 3000
        assert 'data: {"state":"live","title":"Zoë’s seminar"}' in reader.raw, (
            "JSON, not ASCII-escaped"
        )


async def test_events_published_while_the_snapshot_is_read_follow_it(hub: LiveHub) -> None:
    async def slow_state() -> dict[str, Any]:
        hub.publish(SESSION, "quiz_opened", {"quiz": 1})  # an organiser acts meanwhile
        await asyncio.sleep(0.01)
        return dict(STATE)

    async with serving(hub, snapshot=slow_state) as client, listen(client) as reader:
        assert await reader.take(2) == [
            Sse(f"{hub.epoch}-0", "snapshot", STATE),
            Sse(f"{hub.epoch}-1", "quiz_opened", {"quiz": 1}),
        ]


async def test_a_failing_snapshot_fails_the_request_and_unsubscribes(hub: LiveHub) -> None:
    async def broken_state() -> dict[str, Any]:
        raise ConnectionError("the record store is down")

    async with serving(hub, snapshot=broken_state) as client:
        response = await client.get(f"/api/sessions/{SESSION}/events/stream")
        assert (response.status, response.content_type) == (500, "text/plain")
    assert hub.subscribers(SESSION) == 0


async def test_members_never_see_organiser_only_events_live_or_on_replay(hub: LiveHub) -> None:
    def publish_round() -> list[LiveEvent]:
        return [
            hub.publish(SESSION, "quiz_opened", {"quiz": 1}),
            hub.publish(SESSION, "answer_distribution", {"a": 12, "b": 3}, audience={"organiser"}),
            hub.publish(SESSION, "presence_check", {"check": 2}, audience={"member", "organiser"}),
            hub.publish(SESSION, "quiz_revealed", {"quiz": 1, "answer": "b"}),
        ]

    async with (
        serving(hub) as client,
        listen(client, "member") as member,
        listen(client, "organiser") as organiser,
        listen(client, "venue") as venue,
    ):
        opening = [await member.next(), await organiser.next(), await venue.next()]
        assert {e.event for e in opening if e} == {"snapshot"}
        opened, distribution, check, revealed = publish_round()
        assert await organiser.take(4) == [
            seen(opened),
            seen(distribution),
            seen(check),
            seen(revealed),
        ]
        assert await member.take(3) == [seen(opened), seen(check), seen(revealed)]
        assert await venue.take(2) == [seen(opened), seen(revealed)]

    # Missed while away: the replay is filtered the same way.
    resume_from = hub.last_id(SESSION)
    opened, distribution, check, revealed = publish_round()
    final = hub.publish(SESSION, "session_state", {"state": "ended"})
    async with serving(hub) as client, listen(client, "member", resume_from) as member:
        assert await member.take(4) == [seen(opened), seen(check), seen(revealed), seen(final)]


@pytest.mark.parametrize("via_query", [False, True], ids=["header", "query"])
async def test_resume_gets_exactly_the_missed_events(hub: LiveHub, via_query: bool) -> None:
    async with serving(hub) as client:
        async with listen(client) as reader:
            await reader.take(1)
            early = [hub.publish(SESSION, "tick", {"n": n}) for n in (1, 2)]
            assert await reader.take(2) == list(map(seen, early))
            last_seen = reader.last_id
        missed = [hub.publish(SESSION, "tick", {"n": n}) for n in (3, 4, 5)]
        async with listen(client, last_event_id=last_seen, via_query=via_query) as reader:
            got = await reader.take(3)
            after = hub.publish(SESSION, "tick", {"n": 6})
            got += await reader.take(1)
        assert got == [*map(seen, missed), seen(after)], "no snapshot, no duplicate, no gap"


@pytest.mark.parametrize(
    "last_event_id",
    ["deadbeef-4", "{epoch}-1", "{epoch}-99", "{epoch}-", "garbage", "{epoch}-04", ""],
    ids=["other epoch", "too old", "future", "no number", "garbage", "leading zero", "empty"],
)
async def test_an_unusable_last_event_id_gets_a_snapshot(last_event_id: str) -> None:
    hub = LiveHub(history=3)
    for n in range(10):
        hub.publish(SESSION, "tick", {"n": n})
    async with serving(hub) as client:
        async with listen(client, last_event_id=last_event_id.format(epoch=hub.epoch)) as reader:
            [snapshot] = await reader.take(1)
            assert snapshot == Sse(f"{hub.epoch}-10", "snapshot", STATE)
        # ...and that snapshot's id is a good place to resume from.
        later = hub.publish(SESSION, "tick", {"n": 10})
        async with listen(client, last_event_id=snapshot.id) as reader:
            assert await reader.take(1) == [seen(later)]
    await hub.close()


async def test_a_slow_client_is_cut_off_and_resumes_from_history() -> None:
    hub = LiveHub(queue_size=4)
    pad = "x" * 30_000  # big events fill the slow client's socket quickly
    published: list[LiveEvent] = []
    async with serving(hub) as client, listen(client) as fast, listen(client) as slow:
        await fast.take(1)
        await slow.take(1)
        # The fast client keeps pace; the slow one reads nothing until the hub cuts it off.
        while hub.subscribers(SESSION) == 2:
            assert len(published) < 2000, "the slow client was never cut off"
            published.append(hub.publish(SESSION, "tick", {"n": len(published) + 1, "pad": pad}))
            assert await fast.take(1) == [seen(published[-1])]
        cut_at = len(published)
        before_cut = await slow.rest()  # what was in flight, then the end of the stream
        async with listen(client, last_event_id=slow.last_id) as resumed:
            after_cut = await resumed.take(cut_at - len(before_cut))
            published.append(hub.publish(SESSION, "tick", {"n": cut_at + 1}))
            after_cut += await resumed.take(1)
            assert await fast.take(1) == [seen(published[-1])]
    assert 0 < len(before_cut) < cut_at
    assert [*before_cut, *after_cut] == list(map(seen, published)), "all of them, once, in order"
    await hub.close()


async def test_closing_the_hub_ends_every_stream(hub: LiveHub) -> None:
    async with (
        serving(hub) as client,
        listen(client, "member") as member,
        listen(client, "organiser") as organiser,
    ):
        await member.take(1)
        await organiser.take(1)
        event = hub.publish(SESSION, "session_state", {"state": "ended"})
        assert await member.take(1) == await organiser.take(1) == [seen(event)]
        await hub.close()
        await hub.close()
        assert await member.rest() == await organiser.rest() == []
        assert hub.subscribers(SESSION) == 0
        async with listen(client, "venue") as late:
            assert await late.rest() == [Sse(event.id, "snapshot", STATE)]


async def test_two_hundred_visits_leave_nothing_behind(
    hub: LiveHub, caplog: pytest.LogCaptureFixture
) -> None:
    audiences = sorted(AUDIENCES)
    async with serving(hub) as client:
        baseline = len(asyncio.all_tasks())
        for n in range(200):
            async with listen(client, audiences[n % 4]) as reader:
                assert (await reader.take(1))[0].event == "snapshot"
                if n % 10 == 0:
                    event = hub.publish(SESSION, "live_counts", {"members": n})
                    assert await reader.take(1) == [seen(event)]
        await eventually(lambda: hub.subscribers(SESSION) == 0)
        await eventually(lambda: len(asyncio.all_tasks()) <= baseline)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_without_handler_cancellation_keepalive_pings_notice_a_departed_client(
    hub: LiveHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``studycast serve`` runs a plain AppRunner, where aiohttp lets a handler run on after its
    client has gone; the stream must still end."""
    monkeypatch.setattr(live, "KEEPALIVE_S", 0.05)
    runner = web.AppRunner(make_app(hub), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            readers = []
            for _ in range(20):
                response = await session.get(f"/api/sessions/{SESSION}/events/stream?as=venue")
                readers.append(SseReader(response))
                await readers[-1].take(1)
            await asyncio.sleep(0.2)
            event = hub.publish(SESSION, "live_counts", {"venues": 20})
            assert await readers[0].take(1) == [seen(event)]
            assert readers[0].comments.count("ping") >= 2
            assert hub.subscribers(SESSION) == 20
            for reader in readers:
                reader.response.close()
            await eventually(lambda: hub.subscribers(SESSION) == 0)
    finally:
        await runner.cleanup()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

"""A deployment as operators run it, in real processes on loopback with the real PostgreSQL: an
origin (``studycast serve --demo``) and two edges (``serve --origin``) on one store, a broadcaster
on the origin and viewers on the edges; then one node of two workers (``serve --workers 2``).

Media reaches the edges' viewers frame for frame, a quiz opened on the origin reaches members on
both edges, viewers of a killed edge are on the origin again within 5 s, attendance taken on an
edge equals what the members did, and a killed worker is started again while the other worker's
viewers go on watching.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from live_record_support import SseReader
from prometheus_client.parser import text_string_to_metric_families
from relay_support import Watcher, shared_clip, wait_for
from scale_support import (
    Api,
    ReconnectingViewer,
    ServeProcess,
    children_of,
    fresh_database,
    heartbeat,
    kill_pids,
    node_env,
    process_gone,
    start_serve,
    studycast_cli,
)

from client.clip import EncodedClip
from client.publisher import Publication, publish

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CODEC = "vp8"
EDGES = ("edge-a", "edge-b")
FAILOVER_LIMIT_S = 5.0
# Media evidence is sampled every second (STUDYCAST_EVIDENCE_INTERVAL_S=1): a span may start or
# end up to a sample late or early at either end.
EVIDENCE_SLACK_S = 2.0


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float, what: str, *, flaky_http: bool = False
) -> Any:
    """Await ``check()`` until it returns something truthy; fail naming ``what`` after ``within``.
    With ``flaky_http``, a refused or reset connection counts as "not yet" (a worker dying)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except aiohttp.ClientConnectionError as exc:
            if not flaky_http:
                raise
            last = exc
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {within:g} s waiting for {what} (last: {last!r})")


def assert_in_order(numbers: list[int], clip: EncodedClip, where: str) -> None:
    """Frame for frame: from a keyframe on, numbers go up by one, or jump ahead to a keyframe (the
    broadcaster answering a keyframe request passed on by edge and origin; 0 when it loops)."""
    keyframes = set(clip.keyframe_indices)
    assert numbers[0] in keyframes, (where, numbers[:5])
    for a, b in itertools.pairwise(numbers):
        assert b == a + 1 or (b in keyframes and (b > a or b == 0)), (where, a, b, numbers)


async def start_broadcast(api: Api, session_id: int, clip: EncodedClip) -> Publication:
    """Publish ``clip`` to the session over WHIP (links from the organiser) until it is live."""
    links = await api.get(f"/api/sessions/{session_id}/links")
    publication = await publish(links["whip_url"], links["whip_token"], clip, http=api.http)
    try:
        await publication.wait_connected(10)

        async def live() -> bool:
            return bool((await api.get(f"/api/sessions/{session_id}"))["state"] == "live")

        await eventually(live, 10, f"session {session_id} to be live")
    except BaseException:
        await publication.close()
        raise
    return publication


@dataclass
class Deployment:
    """An origin and its edges on one database, broadcasting the demo session."""

    origin: ServeProcess
    edges: dict[str, ServeProcess]
    api: Api  # the demo organiser, logged in on the origin
    session_id: int
    clip: EncodedClip
    broadcast: Publication
    members: list[str]  # member tokens nobody has used yet

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.api.http

    def whep(self, node: ServeProcess, session_id: int | None = None) -> str:
        return f"{node.base}/whep/{session_id or self.session_id}"

    def member(self) -> str:
        """A member's token of the demo session, a different member each time."""
        return self.members.pop(0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(
    pg_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    root = tmp_path_factory.mktemp("scale")
    async with fresh_database(pg_base_url) as database_url:
        started: list[ServeProcess] = []
        http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        broadcast: Publication | None = None
        try:
            origin_dir = root / "origin"
            env = node_env(database_url, origin_dir)
            origin = start_serve(
                "origin",
                ["--demo", "--data-dir", str(origin_dir), "--workers", "1"],
                env,
                root / "logs",
            )
            started.append(origin)
            await origin.wait_announced(demo=True)
            assert origin.session_id is not None
            tokens = await asyncio.gather(
                *(studycast_cli(["node", "token", name], env) for name in EDGES)
            )
            edges = {}
            for name, token in zip(EDGES, tokens, strict=True):
                edge_dir = root / name
                edges[name] = start_serve(
                    name,
                    [
                        *("--origin", origin.base),
                        *("--node-token", token.strip().splitlines()[-1]),
                        *("--node-name", name),
                        *("--data-dir", str(edge_dir), "--workers", "1"),
                    ],
                    node_env(database_url, edge_dir),
                    root / "logs",
                )
                started.append(edges[name])
            for edge in edges.values():
                await edge.wait_announced(demo=False)

            logins = json.loads((origin_dir / "demo-logins.json").read_text(encoding="utf-8"))
            password = next(x["password"] for x in logins if x["username"] == "organiser")
            api = Api(http, origin.base)
            await api.log_in("organiser", password)
            sid = origin.session_id
            await api.patch(f"/api/sessions/{sid}", {"video_codec": CODEC})
            members = await api.member_tokens(sid)
            assert len(members) >= 8, members
            clip = shared_clip(CODEC)
            broadcast = await start_broadcast(api, sid, clip)
            yield Deployment(
                origin, edges, api, sid, clip, broadcast, [members[k] for k in sorted(members)]
            )
        finally:
            if broadcast is not None:
                await broadcast.close()
            await asyncio.gather(*(p.stop() for p in started))
            await http.close()


# --- an origin and two edges ---------------------------------------------------------------------


async def test_viewers_on_both_edges_receive_the_origins_broadcast_in_order(
    deployment: Deployment,
) -> None:
    d = deployment
    viewers: dict[str, tuple[Watcher, str]] = {}
    try:
        for name in EDGES:
            token = d.member()
            viewers[name] = (Watcher(decode=True), token)
            await viewers[name][0].start(d.http, d.whep(d.edges[name]), token)
        for watcher, _ in viewers.values():
            await watcher.wait_connected()
        for name, (watcher, _) in viewers.items():
            await wait_for(lambda w=watcher: len(w.frames) >= 45, 20, f"45 frames at {name}")

        for name, (watcher, _) in viewers.items():
            assert_in_order([f.number for f in watcher.frames], d.clip, name)

        # Each edge pulls the session once from the origin (a pull, not a viewer seat) and
        # serves its member itself.
        sid = str(d.session_id)

        async def reported() -> dict[str, Any] | None:
            nodes = await d.api.nodes()
            served = {n: nodes.get(n, {}).get("sessions", {}).get(sid, {}) for n in nodes}
            ready = served.get("origin", {}).get("by_kind") == {"edge": 2} and all(
                served.get(e, {}).get("by_kind") == {"member": 1} for e in EDGES
            )
            return nodes if ready else None

        nodes = await eventually(reported, 12, "the nodes to report the edges' viewers")
        assert [(nodes[n]["role"], nodes[n]["online"]) for n in ("origin", *EDGES)] == [
            ("origin", True),
            ("edge", True),
            ("edge", True),
        ]
        assert nodes["origin"]["sessions"][sid]["source"] == "broadcaster"
        assert [nodes[e]["sessions"][sid]["source"] for e in EDGES] == ["upstream", "upstream"]
        assert [nodes[e]["pulling"] for e in EDGES] == [[d.session_id], [d.session_id]]
    finally:
        for watcher, token in viewers.values():
            await watcher.hang_up(d.http, token)


async def test_a_quiz_opened_on_the_origin_reaches_members_on_both_edges(
    deployment: Deployment,
) -> None:
    d = deployment
    base = f"/api/sessions/{d.session_id}"
    streams: dict[str, aiohttp.ClientResponse] = {}
    try:
        for name in EDGES:
            streams[name] = await d.http.get(
                f"{d.edges[name].base}{base}/events/stream?token={d.member()}",
                timeout=aiohttp.ClientTimeout(total=60),
            )
            assert streams[name].status == 200, await streams[name].text()
        readers = {name: SseReader(r) for name, r in streams.items()}
        for reader in readers.values():
            await reader.until("snapshot")

        body = {"prompt": "1+1=?", "kind": "single", "choices": ["1", "2", "3"], "correct": [1]}
        question = (await d.api.post(f"{base}/questions", body, status=201))["questions"][0]
        opened_at = time.monotonic()
        await d.api.post(f"{base}/questions/{question['id']}/open")
        arrived = {}
        async with asyncio.timeout(5):
            for name, reader in readers.items():
                _, opened = await reader.until("quiz_opened")
                arrived[name] = time.monotonic() - opened_at
                assert opened.data["id"] == question["id"]
                assert opened.data["prompt"] == "1+1=?"
                assert "correct" not in opened.data  # the members' share of it
        print(f"\nquiz_opened reached the edges after {_seconds(arrived)}")
    finally:
        for response in streams.values():
            response.close()


async def test_killing_an_edge_moves_its_viewers_to_the_origin_within_5_s(
    deployment: Deployment,
) -> None:
    d = deployment
    edge, urls = d.edges["edge-a"], [d.whep(d.edges["edge-a"]), d.whep(d.origin)]
    viewers = [ReconnectingViewer(urls, d.member(), d.http, decode=True) for _ in range(2)]
    try:
        for viewer in viewers:
            await viewer.start()
        for viewer in viewers:
            await wait_for(lambda v=viewer: len(v.frame_times()) >= 15, 20, "frames on edge-a")

        killed = time.monotonic()
        edge.kill()
        for viewer in viewers:
            await wait_for(
                lambda v=viewer: v.current.url == urls[1] and v.current.frame_times(),
                FAILOVER_LIMIT_S + 5,
                "a frame from the origin",
            )
        figures = {
            f"viewer {i}": v.current.frame_times()[0] - killed for i, v in enumerate(viewers)
        }
        print(f"\nedge-a killed: first frame from the origin after {_seconds(figures)}")
        assert max(figures.values()) < FAILOVER_LIMIT_S, figures

        for viewer in viewers:
            # What each went through: edge-a, silence, edge-a not answering, the origin.
            assert [(what, url) for _, what, url in viewer.history] == [
                ("connected", urls[0]),
                ("stalled", urls[0]),
                ("unhealthy", urls[0]),
                ("connected", urls[1]),
            ]
            # The origin's media starts at a keyframe and goes on in order.
            assert viewer.current.watcher is not None
            await wait_for(lambda v=viewer: len(v.current.frame_times()) >= 15, 10, "frames")
            assert_in_order([f.number for f in viewer.current.watcher.frames], d.clip, "origin")
        assert edge.proc.poll() == -signal.SIGKILL
    finally:
        for viewer in viewers:
            await viewer.close()


async def test_attendance_of_members_on_an_edge_equals_the_script(
    deployment: Deployment,
) -> None:
    """Member A watches on edge-b for 20 s; member B joins 5 s later and leaves after 10 s. The
    session then ends on the origin; its report counts what they did, as remote viewers."""
    d = deployment
    edge = d.edges["edge-b"]
    demo = await d.api.get(f"/api/sessions/{d.session_id}")
    start = datetime.now(UTC)
    created = await d.api.post(
        "/api/sessions",
        {
            "title": "edge attendance",
            "scheduled_start": start.isoformat(),
            "scheduled_end": (start + timedelta(hours=1)).isoformat(),
            "video_codec": CODEC,
            "expected_units": demo["expected_units"],
        },
        status=201,
    )
    sid = int(created["id"])
    tokens = await d.api.member_tokens(sid)
    member_a, member_b = sorted(tokens)[:2]
    broadcast = await start_broadcast(d.api, sid, d.clip)
    whep = d.whep(edge, sid)
    counted: dict[str, int] = {}

    async def watch(token: str, after: float, seconds: float) -> float:
        """Join after ``after`` s, watch ``seconds`` with the page's heartbeats, leave; the
        seconds from the WHEP offer to the hang-up."""
        await asyncio.sleep(after)
        await heartbeat(d.http, edge.base, sid, token)
        joined = time.monotonic()
        watcher = Watcher()
        try:
            await watcher.start(d.http, whep, token)
            await watcher.wait_connected()
            while (left := seconds - (time.monotonic() - joined)) > 0:
                await asyncio.sleep(min(5.0, left))
                if seconds - (time.monotonic() - joined) > 0.5:
                    await heartbeat(d.http, edge.base, sid, token)
        finally:
            await watcher.hang_up(d.http, token)
        return time.monotonic() - joined

    async def both_counted() -> None:
        """While both watch, edge-b reports two members watching the session."""

        async def two() -> bool:
            nodes = await d.api.nodes()
            by_kind = nodes["edge-b"]["sessions"].get(str(sid), {}).get("by_kind", {})
            counted.update(by_kind)
            return bool(by_kind == {"member": 2})

        await asyncio.sleep(6)
        await eventually(two, 8, "edge-b to report both members")

    try:
        truth_a, truth_b, _ = await asyncio.gather(
            watch(tokens[member_a], 0, 20), watch(tokens[member_b], 5, 10), both_counted()
        )
        ended = await d.api.post(f"/api/sessions/{sid}/end")
        assert ended["state"] == "ended"
    finally:
        await broadcast.close()

    seen: list[str] = []

    async def settled() -> tuple[dict[str, Any], dict[str, tuple[float, float]]] | None:
        """The report and the attendance view, once they agree: the edge writes its last
        evidence rows a moment after the hang-ups, so a read at once may miss the last second."""
        report = await d.api.get(f"/api/sessions/{sid}/report")
        attendance = await d.api.get(f"/api/sessions/{sid}/attendance")
        rows = {r["member_no"]: r for r in report["rows"]}
        remote = {r["member_no"]: (r["remote_s"], r["onsite_s"]) for r in attendance["members"]}
        agree = all(remote[m][0] == rows[m]["watched_s"] for m in (member_a, member_b))
        seen[:] = [
            f"{m}: report {rows[m]['watched_s']} s, attendance {remote[m][0]} s"
            for m in (member_a, member_b)
        ]
        return (rows, remote) if agree else None

    try:
        rows, remote = await eventually(settled, 15, "the report and the attendance view to agree")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last read: {'; '.join(seen)}") from None
    watched = {m: rows[m]["watched_s"] for m in (member_a, member_b)}
    print(
        f"\nattendance on edge-b: A watched {watched[member_a]} s (script {truth_a:.1f} s), "
        f"B watched {watched[member_b]} s (script {truth_b:.1f} s)"
    )
    assert abs(watched[member_a] - truth_a) <= EVIDENCE_SLACK_S, (watched, truth_a)
    assert abs(watched[member_b] - truth_b) <= EVIDENCE_SLACK_S, (watched, truth_b)
    assert [rows[m]["mode"] for m in (member_a, member_b)] == ["remote", "remote"]
    assert [remote[m] for m in (member_a, member_b)] == [
        (watched[member_a], 0),
        (watched[member_b], 0),
    ]
    # Nobody else watched this session.
    assert sorted(m for m, r in rows.items() if r["mode"] != "absent") == [member_a, member_b]
    assert counted == {"member": 2}


# --- one node, two workers ---------------------------------------------------------------------


def _worker_of(viewer: ReconnectingViewer) -> int:
    """Which worker serves the viewer now: its WHEP resource id names it (``w1-...``)."""
    head = viewer.current.resource.partition("-")[0]
    assert head in ("w0", "w1"), viewer.current.resource
    return int(head[1:])


def _longest_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(sorted(times))), default=float("inf"))


async def test_a_killed_worker_is_started_again_and_its_viewers_come_back(
    pg_base_url: str, tmp_path: Path
) -> None:
    async with fresh_database(pg_base_url) as database_url:
        data = tmp_path / "node"
        serve = start_serve(
            "workers",
            ["--demo", "--workers", "2", "--data-dir", str(data)],
            node_env(database_url, data),
            tmp_path / "logs",
        )
        # A fresh connection per request: SO_REUSEPORT spreads them over the workers.
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), cookie_jar=aiohttp.DummyCookieJar()
        )
        pids: set[int] = set()
        viewers: list[ReconnectingViewer] = []
        broadcast: Publication | None = None
        try:
            await serve.wait_announced(demo=True)
            assert serve.session_id is not None
            sid = serve.session_id
            logins = json.loads((data / "demo-logins.json").read_text(encoding="utf-8"))
            api = Api(http, serve.base)
            await api.log_in(
                "organiser", next(x["password"] for x in logins if x["username"] == "organiser")
            )
            await api.patch(f"/api/sessions/{sid}", {"video_codec": CODEC})
            tokens = list((await api.member_tokens(sid)).values())
            broadcast = await start_broadcast(api, sid, shared_clip(CODEC))

            # Worker 0 prints the banner; worker 1 starts after it (and listens seconds later).
            async def both_up() -> bool:
                nodes = await api.nodes()
                return all(nodes.get(n, {}).get("online") for n in ("origin", "origin-w1"))

            await eventually(both_up, 30, "both workers to report")
            whep = f"{serve.base}/whep/{sid}"
            on: dict[int, list[ReconnectingViewer]] = {0: [], 1: []}
            while min(len(v) for v in on.values()) < 2 and len(viewers) < 16:
                viewer = ReconnectingViewer([whep], tokens[len(viewers) % len(tokens)], http)
                viewers.append(viewer)
                await viewer.start()
                on[_worker_of(viewer)].append(viewer)
            assert on[0] and on[1], "every viewer landed on one worker"
            for viewer in viewers:
                await wait_for(lambda v=viewer: len(v.frame_times()) >= 10, 20, "frames")

            async def reported() -> dict[str, Any] | None:
                nodes = await api.nodes()
                ready = all(nodes.get(n, {}).get("online") for n in ("origin", "origin-w1")) and [
                    nodes[n]["sessions"].get(str(sid), {}).get("viewers")
                    for n in ("origin", "origin-w1")
                ] == [len(on[0]), len(on[1])]
                return nodes if ready else None

            nodes = await eventually(reported, 12, "both workers to report their viewers")
            assert [(nodes[n]["role"]) for n in ("origin", "origin-w1")] == ["origin", "worker"]
            await _metrics_show_every_worker(http, serve.base, {0: len(on[0]), 1: len(on[1])})
            first, second = nodes["origin"]["pid"], nodes["origin-w1"]["pid"]
            pids |= {first, second}
            assert children_of(serve.pid) == sorted(pids)

            killed = time.monotonic()
            os.kill(second, signal.SIGKILL)

            async def restarted() -> dict[str, Any] | None:
                row = (await api.nodes()).get("origin-w1", {})
                return row if row.get("pid") not in (None, second) and row["online"] else None

            row = await eventually(restarted, 15, "worker 1 to be started again", flaky_http=True)
            restart_s = time.monotonic() - killed
            pids.add(row["pid"])
            assert serve.proc.poll() is None, "the supervisor exited"
            assert process_gone(second) and not process_gone(row["pid"])
            assert children_of(serve.pid) == sorted({first, row["pid"]})

            # The killed worker's viewers connect again (to either worker) and get frames.
            for viewer in on[1]:
                await wait_for(
                    lambda v=viewer: v.reconnects >= 1 and v.current.frame_times(),
                    15,
                    "a viewer of the killed worker to watch again",
                )
            back = {
                f"viewer {i}": v.current.frame_times()[0] - killed
                for i, v in enumerate(on[1], start=1)
            }
            print(
                f"\nworker 1 killed ({len(on[0])} viewers on worker 0, {len(on[1])} on worker 1):"
                f" started again (online in /api/nodes) after {restart_s:.2f} s;"
                f" its viewers watching again after {_seconds(back)}"
            )
            assert restart_s < 10.0
            for viewer in on[1]:
                # Silence, the node still answering (worker 0 does), so the same URL again.
                assert [what for _, what, _ in viewer.history] == [
                    "connected",
                    "stalled",
                    "connected",
                ]
            # Worker 0's viewers never stopped.
            await asyncio.sleep(1.0)
            until = time.monotonic()
            for viewer in on[0]:
                assert viewer.reconnects == 0, viewer.history
                during = [t for t in viewer.frame_times() if killed - 1 <= t <= until]
                assert _longest_gap(during) < 1.0, during

            for viewer in viewers:
                await viewer.close()
            await broadcast.close()
            broadcast = None
            # SIGTERM to the supervisor stops every worker, and it.
            assert await serve.stop() == 0, serve.output()[-3000:]
            assert [p for p in sorted(pids) if not process_gone(p)] == []
        finally:
            for viewer in viewers:
                await viewer.close()
            if broadcast is not None:
                await broadcast.close()
            pids.update(children_of(serve.pid))
            await serve.stop()
            kill_pids(sorted(pids))
            await http.close()


async def _metrics_show_every_worker(
    http: aiohttp.ClientSession, base: str, viewers: dict[int, int]
) -> None:
    """Whichever worker the kernel hands a scrape of the shared port, it answers for both."""
    expected = {"origin": viewers[0], "origin-w1": viewers[1]}
    for _ in range(6):  # a fresh connection each: both workers answer some of them
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200, await r.text()
            text = await r.text()
        served: dict[str, float] = {}
        unanswered = None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "studycast_relay_viewers" and sample.labels["kind"] != "edge":
                    node = sample.labels["node"]
                    served[node] = served.get(node, 0) + sample.value
                elif sample.name == "studycast_workers_unanswered":
                    unanswered = sample.value
        assert served == expected, text[:2000]
        assert unanswered == 0
        assert text.count("# TYPE studycast_relay_viewers gauge") == 1  # one family, merged
        assert 'studycast_event_loop_stalls_total{node="origin-w1"}' in text
    async with http.get(f"{base}/metrics?worker=self") as r:
        own = await r.text()
    nodes = {s.labels["node"] for f in text_string_to_metric_families(own) for s in f.samples}
    assert len(nodes) == 1 and nodes <= set(expected), nodes  # that worker alone


def _seconds(figures: dict[str, float]) -> str:
    return ", ".join(f"{name} {s:.2f} s" for name, s in figures.items())

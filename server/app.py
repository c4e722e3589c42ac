"""The aiohttp application: middlewares, routes, static pages, and what it closes on shutdown.

``create_app`` only assembles; ``studycast serve`` (and the tests) run the result. The app owns
the store it is given and closes it on cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
from aiohttp import web

import client
from attendance.clock import Clock, utcnow
from attendance.errors import StoreError
from attendance.store import Store, is_sqlite, normalise_url
from recordings import Recordings, recover
from server import (
    api,
    audit_api,
    auth,
    nodes,
    points_api,
    presence_api,
    quiz_api,
    record_api,
    recordings_api,
    report_api,
    whip,
)
from server.auth import CLOCK, LOGIN_BRAKE, SETTINGS, STORE, LoginBrake, public
from server.broadcast_state import (
    BroadcastStateRecorder,
    follow_ended_sessions,
    pause_broadcasts_left_live,
)
from server.callers import MEMBERS, MemberCache
from server.http_errors import error_middleware
from server.ingest_queue import IngestQueue
from server.late_evidence import LATE_EVIDENCE, MARGIN_S, LateEvidence
from server.live import LiveHub
from server.live_bus import LiveBus
from server.live_events import LIVE, publish_session_state
from server.metrics import METRICS, Metrics, RelayCollector, count_requests, metrics_endpoint
from server.record_api import INGEST_QUEUE
from server.record_tasks import DIRTY_QUESTIONS, EvidenceSampler, run_retention, run_ticker
from server.relay.ice import advertise_addresses
from server.relay.relay import Relay
from server.relay.upstream import EdgeFeeds
from server.settings import Settings
from server.whip import EDGE_FEEDS, RECORDINGS, RELAY
from server.workers import WORKER, WorkerPlan, peer_http_lifetime

log = logging.getLogger(__name__)

WEB_ROOT = Path(client.__file__).parent / "web"
HEALTH_TIMEOUT_S = 5.0
STATE_RECORDER = web.AppKey("studycast.state_recorder", BroadcastStateRecorder)
NODE_REPORTER = web.AppKey("studycast.node_reporter", nodes.NodeReporter)

# Scripts and styles only from our own origin: no inline code, no CDN, no eval.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Answers that must never be cached (they depend on who asks and when).
_UNCACHED_PREFIXES = ("/api/", "/healthz", "/metrics")


def create_app(
    settings: Settings, store: Store, *, clock: Clock = utcnow, worker: WorkerPlan | None = None
) -> web.Application:
    """The studycast web application over ``store``; it closes the store on cleanup.
    ``worker``: this process is one of several serving the node (``server.workers``)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[count_requests, error_middleware(max_body_bytes=settings.max_body_bytes)],
    )
    app[SETTINGS] = settings
    app[STORE] = store
    app[CLOCK] = clock
    app[METRICS] = Metrics(settings.resolved_node_name())
    app[LOGIN_BRAKE] = LoginBrake()
    if settings.ice_addresses:
        advertise_addresses(settings.ice_addresses)
    app[LIVE] = LiveHub()
    app[MEMBERS] = MemberCache()
    app[INGEST_QUEUE] = IngestQueue(store, clock, settings.resolved_secret_key())
    app[DIRTY_QUESTIONS] = set()
    recorder = BroadcastStateRecorder(store, clock)
    app[STATE_RECORDER] = recorder
    live = app[LIVE]

    def on_state(session_id: int, state: str) -> None:
        if settings.is_edge:
            # The origin records and announces the broadcast's state; an edge only follows it.
            return
        recorder(session_id, state)
        publish_session_state(live, session_id, state)

    app[RELAY] = Relay(
        max_viewers=settings.max_viewers,
        behind_bytes=settings.behind_kb * 1024,
        on_state=on_state,
        resource_prefix=worker.prefix if worker is not None else "",
    )
    if worker is not None:
        app[WORKER] = worker
    if settings.origin_url and settings.node_token:
        app[EDGE_FEEDS] = EdgeFeeds(settings.origin_url, settings.node_token)
    app[NODE_REPORTER] = nodes.NodeReporter(
        store,
        app[RELAY],
        clock,
        name=settings.resolved_node_name(),
        role=_role(settings, worker),
        url=settings.base_url(),
        feeds=app.get(EDGE_FEEDS),
        loop_lag=app[METRICS].loop_lag,
    )
    app[RECORDINGS] = Recordings(store, settings.data_dir, clock)
    app[LATE_EVIDENCE] = LateEvidence(store, clock, settings.evidence_interval_s + MARGIN_S)
    app[METRICS].registry.register(RelayCollector(app[RELAY].totals))
    app.cleanup_ctx.append(_store_lifetime)
    app.cleanup_ctx.append(_late_evidence_lifetime)
    app.cleanup_ctx.append(peer_http_lifetime)
    app.cleanup_ctx.append(_loop_lag_lifetime)
    app.cleanup_ctx.append(_relay_lifetime)
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(_security_headers)

    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", public(metrics_endpoint))
    app.add_routes(auth.routes)
    app.add_routes(api.routes)
    app.add_routes(record_api.routes)
    app.add_routes(quiz_api.routes)
    app.add_routes(presence_api.routes)
    app.add_routes(points_api.routes)
    app.add_routes(report_api.routes)
    app.add_routes(audit_api.routes)
    app.add_routes(recordings_api.routes)
    app.add_routes(nodes.routes)
    whip.add_routes(app)
    # Last, so that every route above wins over a file of the same name.
    app.router.add_get(r"/{path:[A-Za-z0-9_][A-Za-z0-9_./-]*\.[A-Za-z0-9]+}", web_file)
    auth.check_access_declared(app)
    return app


async def _end_streams(app: web.Application) -> None:
    """On shutdown, before aiohttp waits for handlers to finish: live event streams would never
    finish by themselves (their clients reconnect, to another node or to this one restarted)."""
    await app[LIVE].close()


def _role(settings: Settings, worker: WorkerPlan | None) -> str:
    if worker is not None and worker.index > 0 and settings.origin_url == worker.private_url(0):
        return "worker"  # an edge of worker 0 on the origin's machine
    return "edge" if settings.is_edge else "origin"


async def _store_lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[STORE].close()
    log.info("record store closed")


async def _late_evidence_lifetime(app: web.Application) -> AsyncIterator[None]:
    """Every node evaluates the sessions its API ends again; the origin (worker 0 of a node
    with workers) also sweeps the record for the ones nobody did (``server.late_evidence``)."""
    late = app[LATE_EVIDENCE]
    if not app[SETTINGS].is_edge:
        late.start_sweeping()
    yield
    await late.close()


async def _loop_lag_lifetime(app: web.Application) -> AsyncIterator[None]:
    app[METRICS].loop_lag.start()
    yield
    await app[METRICS].loop_lag.stop()


async def _relay_lifetime(app: web.Application) -> AsyncIterator[None]:
    """The media relay and its state recorder live as long as the app; peers close first."""
    app[STATE_RECORDER].start()
    app[INGEST_QUEUE].start()
    settings = app[SETTINGS]
    bus: LiveBus | None = None
    if not is_sqlite(normalise_url(settings.resolved_database_url())):
        # Nodes sharing the PostgreSQL store share their live events through it.
        bus = LiveBus(
            settings.resolved_database_url(),
            app[LIVE],
            f"{settings.resolved_node_name()}:{secrets.token_hex(4)}",
        )
        try:
            await bus.start()
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("live events will not reach other nodes: %s", exc)
            bus = None
    # Segments a crash left open are completed before any new recording starts.
    try:
        await recover(app[STORE], app[SETTINGS].data_dir, now=app[CLOCK]())
    except StoreError as exc:
        # The server still starts (and says it is unhealthy); the next start tries again.
        log.error("could not complete recordings left open: %s", exc.detail)
    if not settings.is_edge:
        # Broadcasts the run before left live are paused as of its last sign (read before this
        # run's reporter overwrites it, and after the recordings' ends are known).
        try:
            await pause_broadcasts_left_live(app[STORE], app[CLOCK], settings.resolved_node_name())
        except StoreError as exc:
            log.error("could not pause the broadcasts left live: %s", exc.detail)
    app[RECORDINGS].start()
    store, relay, clock = app[STORE], app[RELAY], app[CLOCK]
    tasks = [
        asyncio.create_task(follow_ended_sessions(store, relay)),
        # Every node records the media its own viewers received.
        asyncio.create_task(EvidenceSampler(store, relay, clock).run(settings.evidence_interval_s)),
    ]
    reporter = asyncio.create_task(app[NODE_REPORTER].run())
    if not settings.is_edge:
        # Work done once for everyone: by the origin.
        tasks.append(
            asyncio.create_task(
                run_retention(
                    store,
                    clock,
                    raw_events_days=settings.retention_raw_events_days,
                    recordings_days=settings.retention_recordings_days,
                    recordings_root=settings.data_dir,
                )
            )
        )
    tasks.append(
        asyncio.create_task(
            run_ticker(
                store,
                app[LIVE],
                relay,
                clock,
                settings.tick_interval_s,
                app[DIRTY_QUESTIONS],
                origin=not settings.is_edge,
                node=settings.resolved_node_name(),
            )
        )
    )
    yield
    app[NODE_REPORTER].stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reporter), timeout=10)
    if not reporter.done():
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if EDGE_FEEDS in app:
        await app[EDGE_FEEDS].close()
    if bus is not None:
        await bus.close()
    await app[INGEST_QUEUE].close()
    await app[LIVE].close()
    await app[RELAY].close()
    await app[RECORDINGS].close()  # the relay told the recorders; wait for files and rows
    await app[STATE_RECORDER].close()
    log.info("relay closed")


@functools.cache
def _policy_reaching(origin: str) -> str:
    """The page policy of an edge: its pages may also reach the origin (a venue screen plays
    from there, and asks its health, while the edge is down)."""
    return CONTENT_SECURITY_POLICY.replace("connect-src 'self'", f"connect-src 'self' {origin}")


def _page_policy(request: web.Request) -> str:
    settings = request.config_dict[SETTINGS]
    origin = settings.origin_url
    worker = request.config_dict.get(WORKER)
    if not origin or (worker is not None and origin == worker.private_url(0)):
        return CONTENT_SECURITY_POLICY  # the origin itself, or one of its workers
    parts = urlsplit(origin)
    return _policy_reaching(f"{parts.scheme}://{parts.netloc}")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if (
        request.method == "GET"
        and request.path.startswith("/api/sessions/")
        and "token" in request.query
        and "Cookie" not in request.headers
    ):
        # Read with a link's token in the URL, never a login: a venue screen on an edge may ask
        # the origin (its live events, its check-in code) when the edge is gone.
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
    if request.path.startswith(("/whip/", "/whep/")):
        for name, value in whip.CORS_HEADERS.items():
            response.headers.setdefault(name, value)
    elif request.path == "/healthz":
        # Venue screens on an edge ask the origin's health from the edge's pages.
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
    response.headers.setdefault("Content-Security-Policy", _page_policy(request))
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(_UNCACHED_PREFIXES):
        response.headers["Cache-Control"] = "no-store"
    else:
        # Pages and modules: always revalidate (cheap with Last-Modified), so updates show.
        response.headers.setdefault("Cache-Control", "no-cache")


@public
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_ROOT / "index.html")


@public
async def web_file(request: web.Request) -> web.FileResponse:
    """A file of ``client/web``. Checked here, not by aiohttp's static resource, so that a
    missing file is a JSON 404 like every other failure."""
    relative = request.match_info["path"]
    parts = relative.split("/")
    if any(not p or p.startswith(".") for p in parts):
        raise web.HTTPNotFound()
    root = WEB_ROOT.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


@public
async def healthz(request: web.Request) -> web.Response:
    """200 when the record store answers, 503 (error JSON) when it does not."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await request.config_dict[STORE].ping()
    except StoreError:
        raise
    except TimeoutError as exc:
        raise StoreError(f"the record store did not answer within {HEALTH_TIMEOUT_S} s") from exc
    except Exception as exc:
        # A health check reports "unhealthy", whatever the driver raised.
        raise StoreError(f"the record store check failed: {exc!r}") from exc
    return web.json_response({"status": "ok", "database": "ok"})

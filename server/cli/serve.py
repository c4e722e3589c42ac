"""``studycast serve``: run the HTTP server (API, pages, and later the relay)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import click
from aiohttp import web
from sqlalchemy import select

from attendance.clock import utcnow
from attendance.demo import LOGINS_FILE, Demo, seed_demo
from attendance.models import Member
from attendance.store import Store
from server.cli.common import configure_logging, load_settings, open_store, run
from server.settings import Settings
from server.tokens import TokenRole, issue, issue_node_token
from server.workers import Supervisor, WorkerPlan, default_workers

log = logging.getLogger(__name__)


@click.command()
@click.option("--host", help="Address to listen on (STUDYCAST_HOST, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (STUDYCAST_PORT, default 8080).")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Data directory (STUDYCAST_DATA_DIR)."
)
@click.option(
    "--ice-address",
    "ice_addresses",
    multiple=True,
    help="IP address offered to WebRTC peers (repeat; STUDYCAST_ICE_ADDRESSES).",
)
@click.option("--demo", is_flag=True, help="Seed a demo organisation if the store is empty.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Server processes sharing the port (default: one per core with PostgreSQL, "
    "1 with the embedded SQLite store).",
)
@click.option(
    "--origin",
    "origin_url",
    metavar="URL",
    help="Run as an edge of this origin (STUDYCAST_ORIGIN_URL); needs --node-token and the "
    "origin's PostgreSQL.",
)
@click.option(
    "--node-token",
    help="The edge's token from `studycast node token NAME` on the origin (STUDYCAST_NODE_TOKEN).",
)
@click.option(
    "--node-name", help="This node's name in /api/nodes and metrics (STUDYCAST_NODE_NAME)."
)
def serve(
    host: str | None,
    port: int | None,
    data_dir: str | None,
    ice_addresses: tuple[str, ...],
    demo: bool,
    workers: int | None,
    origin_url: str | None,
    node_token: str | None,
    node_name: str | None,
) -> None:
    """Run the server until Ctrl-C or SIGTERM; migrates the store first."""
    overrides = click.get_current_context().find_root().ensure_object(dict)
    for name, value in (
        ("host", host),
        ("port", port),
        ("data_dir", data_dir),
        ("origin_url", origin_url),
        ("node_token", node_token),
        ("node_name", node_name),
    ):
        if value is not None:
            overrides[name] = value
    if ice_addresses:
        overrides["ice_addresses"] = list(ice_addresses)
    settings = load_settings()
    configure_logging()
    plan = WorkerPlan.from_env()
    if plan is not None:  # a worker started by the supervisor below
        run(_serve(settings, demo, plan))
        return
    count = workers or default_workers(settings)
    if count > 1:
        if default_workers(settings) == 1:
            raise click.UsageError(
                "--workers above 1 needs PostgreSQL (STUDYCAST_DATABASE_URL): the workers "
                "share the record store and live events through it"
            )
        raise SystemExit(Supervisor(settings, count, demo=demo).run())
    run(_serve(settings, demo, None))


async def _serve(settings: Settings, demo: bool, plan: WorkerPlan | None) -> None:
    settings.ensure_data_dir()
    secret = settings.resolved_secret_key()  # made now, not on the first request
    from server import collector
    from server.app import create_app  # imported here: keeps `studycast --help` quick

    collector.tune()

    if plan is not None and plan.index > 0:
        settings = worker_settings(settings, plan, secret)
    # Worker 0 (or the only process) brings the schema up to date; the others find it so.
    store = await open_store(settings, migrate=plan is None or plan.index == 0)
    seeded = await seed_demo(store, data_dir=settings.data_dir, now=utcnow()) if demo else None
    app = create_app(settings, store, worker=plan)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=10.0)
    await runner.setup()
    try:
        listen_port = settings.port if plan is None else plan.public_port
        site = web.TCPSite(
            runner, settings.host, listen_port, reuse_port=True if plan is not None else None
        )
        try:
            await site.start()
            if plan is not None:
                # Where worker 0 is pulled from, and where requests for a worker are passed on.
                await web.TCPSite(runner, "127.0.0.1", plan.private_ports[plan.index]).start()
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {settings.host}:{listen_port}: {exc.strerror}"
            ) from exc
        port = listen_port if plan is not None else _bound_port(runner, settings.port)
        if plan is None or plan.index == 0:
            pages = await _demo_pages(store, settings, seeded, settings.base_url(port))
            _announce(settings.base_url(port), seeded, settings.data_dir / LOGINS_FILE, pages)
        collector.settle()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        click.echo("studycast is shutting down", err=True)
    finally:
        await runner.cleanup()  # closes connections, then the app's cleanup closes the store
        await store.close()


def worker_settings(settings: Settings, plan: WorkerPlan, secret: str) -> Settings:
    """A worker after the first: its own name, and (on an origin) an edge of worker 0."""
    name = f"{settings.resolved_node_name()}-w{plan.index}"
    if settings.is_edge:
        return settings.model_copy(update={"node_name": name})
    token = issue_node_token(secret, name, now=utcnow(), ttl=timedelta(days=3650))
    return settings.model_copy(
        update={"node_name": name, "origin_url": plan.private_url(0), "node_token": token}
    )


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback


async def _demo_pages(
    store: Store, settings: Settings, demo: Demo | None, base: str
) -> list[tuple[str, str]]:
    """Links to try the demo session as a venue screen and as a member (personal links)."""
    if demo is None or demo.session_id is None:
        return []
    async with store.read() as db:
        member = await db.scalar(select(Member.member_no).order_by(Member.member_no).limit(1))
    secret, now, sid = settings.resolved_secret_key(), utcnow(), demo.session_id
    pages = []
    if demo.venues:
        token = issue(
            secret, session_id=sid, role=TokenRole.VENUE, subject=f"venue:{demo.venues[0]}", now=now
        )
        pages.append((f"venue screen ({demo.venues[0]})", f"{base}/venue.html#s={sid}&t={token}"))
    if member is not None:
        token = issue(
            secret,
            session_id=sid,
            role=TokenRole.MEMBER,
            subject=f"member:{member}",
            now=now,
            version=1,
        )
        pages.append((f"member {member}", f"{base}/member.html#s={sid}&t={token}"))
    return pages


def _announce(
    base: str, demo: Demo | None, logins_file: Path, pages: Sequence[tuple[str, str]] = ()
) -> None:
    lines = [
        f"studycast is running at {base}/",
        f"  organiser and auditor login:  {base}/login.html",
        f"  health check:                 {base}/healthz",
    ]
    if demo is not None:
        lines.append(
            "  demo: " + ("seeded just now" if demo.seeded_now else "store already had data")
        )
        if demo.session_id is not None:
            lines.append(f"  demo session id:              {demo.session_id}")
            lines.append(
                f"  its WHIP/WHEP links (OBS):    studycast --data-dir {logins_file.parent} "
                f"session links {demo.session_id}"
            )
        for name, url in pages:
            lines.append(f"  open as {name}: {url}")
        if demo.logins:
            lines.append(f"  demo logins (also in {logins_file}):")
            lines.extend(
                f"    {x.role:<15} {x.username:<10} password: {x.password}" for x in demo.logins
            )
    lines.append("Press Ctrl-C to stop.")
    click.echo("\n".join(lines))

"""``studycast node``: the edges of a deployment: tokens to start them with, and their status."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import click

from attendance.clock import utcnow
from attendance.journal import record_admin_event
from attendance.store import Store
from server.cli.common import echo_json, json_option, load_settings, with_store
from server.settings import Settings
from server.tokens import issue_node_token

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@click.group()
def node() -> None:
    """Edge nodes: their tokens and what every node serves."""


@node.command("token")
@click.argument("name")
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=365,
    show_default=True,
    help="How long the token is valid.",
)
def token(name: str, days: int) -> None:
    """Print a token for the edge NAME to pull media with (`serve --origin URL --node-token T`).

    Run it on the origin (the token is signed with the origin's secret key, which every node
    shares through STUDYCAST_SECRET_KEY). Issuing one is written to the admin trail."""
    if not NAME.match(name):
        raise click.BadParameter(
            "letters, digits, '.', '_' or '-', at most 64, starting with a letter or digit",
            param_hint="NAME",
        )
    settings = load_settings()

    @with_store
    async def log(store: Store, _settings: Settings) -> None:
        async with store.write() as db:
            await record_admin_event(
                db,
                now=utcnow(),
                actor="cli",
                action="node_token_issued",
                target=f"node:{name}",
                detail={"days": days},
            )

    log()
    click.echo(
        issue_node_token(
            settings.resolved_secret_key(), name, now=utcnow(), ttl=timedelta(days=days)
        )
    )


@node.command("list")
@json_option
def node_list(as_json: bool) -> None:
    """Every node that has run: role, URL, online or not, sessions and viewers, CPU load, the
    event loop's worst lag since its last report."""
    from server.nodes import list_nodes

    @with_store
    async def go(store: Store, _settings: Settings) -> list[dict[str, Any]]:
        async with store.read() as db:
            return await list_nodes(db, utcnow())

    nodes = go()
    if as_json:
        echo_json(nodes)
        return
    if not nodes:
        click.echo("no node has reported yet")
        return
    for n in nodes:
        state = "online" if n["online"] else f"offline ({n['seen_s_ago']:.0f} s)"
        lag = n.get("loop_lag_max_s")  # (rows of nodes older than the lag meter have none)
        click.echo(
            f"{n['name']:<20} {n['role']:<7} {state:<18} viewers {n['viewers']:>5} "
            f"cpu {n['cpu']:.2f}  lag {'-' if lag is None else f'{lag:.2f} s':<6}  {n['url']}"
        )

"""``studycast user``: logins for organisers, venue operators and auditors."""

from __future__ import annotations

import sys

import click

from attendance.clock import utcnow
from attendance.store import Store
from attendance.users import add_user, check_password, check_username, parse_role
from attendance.venues import get_venue
from server.cli.common import echo_json, json_option, with_store
from server.settings import Settings


@click.group()
def user() -> None:
    """Manage logins (members never need one: they hold a personal link)."""


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.UsageError("--password-stdin given but standard input was empty")
        return password
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@user.command("add")
@click.argument("username")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["organiser", "venue_operator", "auditor"]),
    help="What the user may do.",
)
@click.option("--name", "display_name", help="Display name.")
@click.option("--venue", "venue_slug", help="Venue a venue operator runs.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@json_option
def add(
    username: str,
    role: str,
    display_name: str | None,
    venue_slug: str | None,
    password_stdin: bool,
    as_json: bool,
) -> None:
    """Add USERNAME with ROLE; the password is prompted for (or read from stdin)."""
    try:
        check_username(username)
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="USERNAME") from exc
    if role == "venue_operator" and not venue_slug:
        raise click.UsageError("a venue operator needs --venue SLUG (the venue they run)")
    if role != "venue_operator" and venue_slug:
        raise click.UsageError("--venue is only for the venue_operator role")
    password = _read_password(password_stdin)
    try:
        check_password(password)
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="password") from exc

    @with_store
    async def go(store: Store, _settings: Settings) -> dict[str, object]:
        async with store.write() as db:
            venue_id = (await get_venue(db, venue_slug)).id if venue_slug else None
            created = await add_user(
                db,
                username=username,
                role=parse_role(role),
                password=password,
                now=utcnow(),
                actor="cli",
                display_name=display_name,
                venue_id=venue_id,
            )
            return {"id": created.id, "username": created.username, "role": created.role.value}

    info = go()
    if as_json:
        echo_json(info)
    else:
        click.echo(f"added {info['role']} {info['username']!s}")

"""``studycast session``: schedule, list and show study sessions."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click

from attendance.clock import utcnow
from attendance.errors import InvalidInput
from attendance.evaluation import finalize_session
from attendance.models import SessionState
from attendance.sessions import (
    SessionDraft,
    create_session,
    describe,
    end_session,
    get_session,
    list_sessions,
    parse_draft,
)
from attendance.store import Store
from server.cli.common import echo_json, json_option, with_store
from server.cli.output import print_table
from server.links import session_links
from server.settings import Settings


class LocalTime(click.ParamType[datetime]):
    """ISO 8601 time; without a zone it is the local time of the machine running the command."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a time like 2026-12-01T19:30 or 2026-12-01 19:30+08:00")
        return parsed if parsed.tzinfo else parsed.astimezone()


@click.group()
def session() -> None:
    """Study sessions: one scheduled broadcast each."""


@session.command("create")
@click.argument("title")
@click.option("--start", required=True, type=LocalTime(), help="Start time (ISO 8601).")
@click.option("--end", type=LocalTime(), help="End time; default start + --duration.")
@click.option(
    "--duration",
    type=click.IntRange(1, 24 * 60),
    help="Minutes, instead of --end (default 90).",
)
@click.option("--venue", "venues", multiple=True, help="Venue slug (repeat for several).")
@click.option("--unit", "units", multiple=True, help="Expected unit path (repeat for several).")
@click.option(
    "--video-codec",
    type=click.Choice(["h264", "vp8"]),
    default="h264",
    show_default=True,
    help="Fixed for the session: every viewer receives it untranscoded.",
)
@click.option("--description", default="", help="Shown to members.")
@click.option("--no-recording", is_flag=True, help="Do not record this session.")
@click.option(
    "--min-share",
    type=click.FloatRange(0, 1),
    default=0.85,
    show_default=True,
    help="Share of live time a member must watch to qualify.",
)
@click.option(
    "--min-presence-share",
    type=click.FloatRange(0, 1),
    default=0.66,
    show_default=True,
    help="Share of the presence checks given to a member that must pass (0.66: 2 of 3).",
)
@click.option(
    "--min-presence",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Presence checks a member must pass to qualify.",
)
@click.option(
    "--makeup-presence",
    is_flag=True,
    help="Make-up viewers of the recording must pass its presence checks too.",
)
@json_option
def create(
    title: str,
    start: datetime,
    end: datetime | None,
    duration: int | None,
    venues: tuple[str, ...],
    units: tuple[str, ...],
    video_codec: str,
    description: str,
    no_recording: bool,
    min_share: float,
    min_presence_share: float,
    min_presence: int,
    makeup_presence: bool,
    as_json: bool,
) -> None:
    """Schedule a session called TITLE."""
    _check_title(title)
    if end is not None and duration is not None:
        raise click.UsageError("give --end or --duration, not both")
    draft = run_parse(
        {
            "title": title,
            "description": description,
            "scheduled_start": start,
            "scheduled_end": end or start + timedelta(minutes=duration or 90),
            "video_codec": video_codec,
            "recording_enabled": not no_recording,
            "venues": list(venues),
            "expected_units": list(units),
            "attendance_rule": {
                "min_share": min_share,
                "min_presence_share": min_presence_share,
                "min_presence_passed": min_presence,
                "makeup_presence": makeup_presence,
            },
        }
    )

    @with_store
    async def go(store: Store, settings: Settings) -> dict[str, Any]:
        now = utcnow()
        async with store.write() as db:
            created = await create_session(db, draft, now=now, actor="cli", user_id=None)
            info = describe(created)
        return {**info, **session_links(settings, info["id"], now=now)}

    info = go()
    if as_json:
        echo_json(info)
    else:
        click.echo(f"scheduled session {info['id']}: {info['title']} ({info['scheduled_start']})")
        _echo_links(info)


def _echo_links(links: dict[str, Any]) -> None:
    click.echo(
        "\n".join(
            [
                "  broadcast (OBS: Settings > Stream > Service WHIP):",
                f"    server:        {links['whip_url']}",
                f"    bearer token:  {links['whip_token']}",
                "  watch (WHEP):",
                f"    url:           {links['whep_url']}",
                f"    bearer token:  {links['whep_token']}",
            ]
        )
    )


@session.command("links")
@click.argument("session_id", type=click.IntRange(min=1))
@json_option
def links(session_id: int, as_json: bool) -> None:
    """Print the WHIP settings (OBS) and the viewer link of a session, with fresh tokens."""

    @with_store
    async def go(store: Store, settings: Settings) -> dict[str, Any]:
        async with store.read() as db:
            await get_session(db, session_id)
        return session_links(settings, session_id, now=utcnow())

    info = go()
    if as_json:
        echo_json(info)
    else:
        click.echo(f"session {session_id}")
        _echo_links(info)


@session.command("end")
@click.argument("session_id", type=click.IntRange(min=1))
@json_option
def end(session_id: int, as_json: bool) -> None:
    """End a session for good (a running server disconnects its peers within seconds).

    Its attendance is evaluated now, and again by the running origin once every node's
    evidence of the last seconds is in (within ~80 s at the default evidence interval)."""

    @with_store
    async def go(store: Store, _settings: Settings) -> dict[str, Any]:
        now = utcnow()
        async with store.write() as db:
            ended = await end_session(db, session_id, now=now, actor="cli")
            await finalize_session(db, session_id, now=now)
            return describe(ended)

    info = go()
    if as_json:
        echo_json(info)
    else:
        click.echo(f"session {info['id']} ended")


def _check_title(title: str) -> None:
    if not title.strip():
        raise click.BadParameter("title is empty", param_hint="TITLE")


def run_parse(data: dict[str, Any]) -> SessionDraft:
    try:
        return parse_draft(data)
    except InvalidInput as exc:
        raise click.UsageError(exc.detail) from exc


@session.command("list")
@click.option("--state", type=click.Choice([s.value for s in SessionState]), help="Only these.")
@json_option
def list_(state: str | None, as_json: bool) -> None:
    """List sessions, newest first."""

    @with_store
    async def go(store: Store, _settings: Settings) -> list[dict[str, Any]]:
        async with store.read() as db:
            found = await list_sessions(db, state=SessionState(state) if state else None)
            return [describe(s) for s in found]

    sessions = go()
    if as_json:
        echo_json(sessions)
    else:
        print_table(
            f"{len(sessions)} sessions",
            ["id", "title", "state", "start", "codec", "venues"],
            [
                (
                    s["id"],
                    s["title"],
                    s["state"],
                    _local(s["scheduled_start"]),
                    s["video_codec"],
                    len(s["venues"]),
                )
                for s in sessions
            ],
        )


@session.command("show")
@click.argument("session_id", type=click.IntRange(min=1))
@json_option
def show(session_id: int, as_json: bool) -> None:
    """Show one session in full."""

    @with_store
    async def go(store: Store, _settings: Settings) -> dict[str, Any]:
        async with store.read() as db:
            return describe(await get_session(db, session_id))

    info = go()
    if as_json:
        echo_json(info)
        return
    rule = info["attendance_rule"]
    lines = [
        f"session {info['id']}: {info['title']}",
        f"  state:      {info['state']}",
        f"  scheduled:  {_local(info['scheduled_start'])} – {_local(info['scheduled_end'])}",
        f"  video:      {info['video_codec']} (audio Opus)",
        f"  recording:  {'on' if info['recording_enabled'] else 'off'}",
        f"  venues:     {', '.join(v['slug'] for v in info['venues']) or '-'}",
        f"  expected:   {', '.join(info['expected_units']) or '-'}",
        f"  qualifies:  watched >= {rule.get('min_share', 0):.0%} of live time, "
        f"presence checks passed >= {rule.get('min_presence_share', 0):.0%} of those given"
        + (f", at least {rule['min_presence_passed']}" if rule.get("min_presence_passed") else ""),
        "  make-up:    "
        + (
            "share of the recording, and its presence checks"
            if rule.get("makeup_presence")
            else "share of the recording"
        ),
    ]
    if info["description"]:
        lines.append(f"  about:      {info['description']}")
    click.echo("\n".join(lines))


def _local(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M %Z")

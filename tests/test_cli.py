"""The ``studycast`` command line against real stores (a SQLite file and the real PostgreSQL)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.clock import utcnow
from attendance.migrate import head_revision
from attendance.models import AdminEvent, OrgUnit, Role, StudySession, User
from attendance.sessions import AttendanceRule
from attendance.store import Store
from attendance.users import authenticate
from server.cli import main
from server.settings import Settings
from server.tokens import VIEWER_ROLES, TokenRole, verify

T = TypeVar("T")
HEAD = head_revision()
DEFAULT_RULE = AttendanceRule().model_dump()
PASSWORD = "correct horse battery"
STUDYCAST = Path(sys.executable).with_name("studycast")
UNREACHABLE_PG = "postgresql://studycast@127.0.0.1:1/nowhere"

# For behaviour that does not depend on the database kind: the SQLite file only.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- harness ----------------------------------------------------------------------------------


def clean_environ() -> dict[str, str]:
    """The environment without any STUDYCAST_* setting (the test database URL stays)."""
    ours = {f"STUDYCAST_{name.upper()}" for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k not in ours}


@pytest.fixture
def china_time() -> Iterator[None]:
    """Run with the machine's local time at UTC+8 (no tz database needed for a POSIX TZ)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "CST-8"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@dataclass
class Cli:
    url: str
    data_dir: Path

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(
            main,
            ["--database-url", self.url, "--data-dir", str(self.data_dir), *args],
            input=input,
            prog_name="studycast",
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self(*args, input=input)
        assert result.exit_code == 0, result.output
        assert result.exception is None
        return result.stdout

    def json(self, *args: str, input: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", input=input))

    def fails(self, *args: str, code: int, message: str, input: str | None = None) -> str:
        """A clean failure: the exit code, a message naming the problem, no traceback."""
        result = self(*args, input=input)
        assert result.exit_code == code, result.output
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.stdout == ""
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.output
        return result.stderr

    def query(self, fn: Callable[[AsyncSession], Awaitable[T]], *, write: bool = False) -> T:
        async def go() -> T:
            store = Store(self.url)
            try:
                async with store.write() if write else store.read() as db:
                    return await fn(db)
            finally:
                await store.close()

        return asyncio.run(go())

    def count(self, model: Any) -> int:
        async def go(db: AsyncSession) -> int:
            return int(await db.scalar(select(func.count()).select_from(model)) or 0)

        return self.query(go)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STUDYCAST_* setting from outside and no .env: every run is configured here."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"STUDYCAST_{name.upper()}", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli(database_url: str, tmp_path: Path, china_time: None) -> Cli:
    return Cli(database_url, tmp_path / "data")


def command_paths(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from command_paths(cmd.commands[name], (*path, name))


def resolve(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


ALL_COMMANDS = list(command_paths(main))


# -- help for every command -------------------------------------------------------------------


def test_command_tree_is_complete() -> None:
    groups = {p[0] for p in ALL_COMMANDS if p}
    assert {"db", "user", "unit", "venue", "session", "serve", "roster"} <= groups
    assert {
        ("db", "upgrade"),
        ("db", "downgrade"),
        ("db", "current"),
        ("user", "add"),
        ("unit", "list"),
        ("venue", "add"),
        ("venue", "list"),
        ("session", "create"),
        ("session", "list"),
        ("session", "show"),
    } <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "studycast")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(path: tuple[str, ...], flag: str) -> None:
    cmd = resolve(path)
    result = CliRunner().invoke(main, [*path, flag], prog_name="studycast")
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    usage = " ".join(("Usage: studycast", *path))
    assert result.stdout.startswith(usage + " [OPTIONS]"), result.stdout
    first_line = (cmd.help or "").strip().splitlines()[0]
    assert first_line, f"{' '.join(path)} has no help text"
    assert " ".join(first_line.split()) in " ".join(result.stdout.split())
    if isinstance(cmd, click.Group):
        for name in cmd.commands:
            assert f"\n  {name} " in result.stdout or f"\n  {name}\n" in result.stdout


def test_console_script_help(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(STUDYCAST), "--help"],
        cwd=tmp_path,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("Usage: studycast [OPTIONS] COMMAND [ARGS]...\n")
    listed = [line.split()[0] for line in done.stdout.split("Commands:\n")[1].splitlines() if line]
    assert listed == sorted(main.commands)


def test_console_script_db_upgrade(pg_url: str, tmp_path: Path) -> None:
    """The installed script migrates a real PostgreSQL database named by the environment."""
    env = {**clean_environ(), "STUDYCAST_DATABASE_URL": pg_url}
    upgraded = subprocess.run(
        [str(STUDYCAST), "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (upgraded.returncode, upgraded.stdout, upgraded.stderr) == (
        0,
        f"record store at revision {HEAD}\n",
        "",
    )
    assert Cli(pg_url, tmp_path / "data").json("db", "current") == {"current": HEAD, "head": HEAD}
    assert not (tmp_path / "data").exists()  # a PostgreSQL store needs no data dir


# -- db ---------------------------------------------------------------------------------------


def test_db_upgrade_current_downgrade(cli: Cli) -> None:
    assert HEAD
    assert cli.json("db", "current") == {"current": None, "head": HEAD}
    assert cli.ok("db", "current") == f"current: empty  head: {HEAD}\n"
    assert cli.ok("db", "upgrade") == f"record store at revision {HEAD}\n"
    assert cli.json("db", "current") == {"current": HEAD, "head": HEAD}
    assert cli.ok("db", "current") == f"current: {HEAD}  head: {HEAD}\n"
    assert cli.ok("db", "upgrade") == f"record store at revision {HEAD}\n"  # idempotent

    # Downgrading asks first; "no" leaves everything as it was.
    refused = cli("db", "downgrade", "base", input="n\n")
    assert refused.exit_code == 1
    assert "Downgrading can drop tables and their data. Continue?" in refused.output
    assert cli.json("db", "current") == {"current": HEAD, "head": HEAD}

    assert cli.ok("db", "downgrade", "base", "--yes") == "record store at revision base (empty)\n"
    assert cli.json("db", "current") == {"current": None, "head": HEAD}
    assert cli.ok("db", "upgrade") == f"record store at revision {HEAD}\n"


def test_data_commands_migrate_a_fresh_store(cli: Cli) -> None:
    assert cli.json("venue", "list") == []
    assert cli.json("db", "current") == {"current": HEAD, "head": HEAD}


def test_db_upgrade_default_store_under_data_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--data-dir", "store", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "store" / "studycast.db").is_file()


def test_unsupported_database_url(tmp_path: Path) -> None:
    cli = Cli("mysql://db.example/studycast", tmp_path / "data")
    cli.fails("venue", "list", code=1, message="only sqlite and postgresql are supported")
    cli.fails("db", "upgrade", code=1, message="only sqlite and postgresql are supported")


@pytest.mark.parametrize("command", [("db", "upgrade"), ("db", "current"), ("venue", "list")])
def test_unreachable_store_is_a_clean_error(command: tuple[str, ...], tmp_path: Path) -> None:
    Cli(UNREACHABLE_PG, tmp_path / "data").fails(*command, code=1, message="record store")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_db_current_before_the_data_dir_exists(tmp_path: Path) -> None:
    """Either "empty" (nothing to read yet) or a clean error; not a traceback."""
    result = CliRunner().invoke(
        main, ["--data-dir", str(tmp_path / "new"), "db", "current", "--json"]
    )
    gc.collect()  # let aiosqlite's thread for the failed connection end inside this test
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    if result.exit_code == 0:
        assert json.loads(result.stdout) == {"current": None, "head": HEAD}


# -- user -------------------------------------------------------------------------------------


def test_user_add(cli: Cli) -> None:
    assert cli.json(
        "user",
        "add",
        "alice",
        "--role",
        "organiser",
        "--name",
        "张丽",
        "--password-stdin",
        input=PASSWORD + "\n",
    ) == {"id": 1, "username": "alice", "role": "organiser"}
    # CRLF from a Windows pipe is stripped; spaces inside the password are kept.
    assert (
        cli.ok(
            "user",
            "add",
            "bob.w",
            "--role",
            "auditor",
            "--password-stdin",
            input="  spaced password  \r\n",
        )
        == "added auditor bob.w\n"
    )
    # Without --password-stdin the password is prompted for twice.
    prompted = cli("user", "add", "carol", "--role", "organiser", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output
    assert "Repeat for confirmation" in prompted.output
    assert prompted.stdout.endswith("added organiser carol\n")

    async def users(db: AsyncSession) -> list[tuple[str, Role, str | None, int | None]]:
        rows = await db.execute(
            select(User.username, User.role, User.display_name, User.venue_id).order_by(User.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]

    assert cli.query(users) == [
        ("alice", Role.ORGANISER, "张丽", None),
        ("bob.w", Role.AUDITOR, None, None),
        ("carol", Role.ORGANISER, None, None),
    ]

    async def logins(db: AsyncSession) -> list[str]:
        now = utcnow()
        return [
            (await authenticate(db, name, pw, now=now, source="test")).reason
            for name, pw in [
                ("alice", PASSWORD),
                ("bob.w", "  spaced password  "),
                ("carol", PASSWORD),
                ("bob.w", "spaced password"),
            ]
        ]

    assert cli.query(logins, write=True) == ["ok", "ok", "ok", "wrong_password"]


def test_user_add_errors(cli: Cli) -> None:
    cli.ok("user", "add", "alice", "--role", "organiser", "--password-stdin", input=PASSWORD + "\n")
    events_before = cli.count(AdminEvent)

    assert (
        cli.fails(
            "user",
            "add",
            "alice",
            "--role",
            "auditor",
            "--password-stdin",
            input="another password\n",
            code=1,
            message="user 'alice' exists already",
        )
        == "Error: user 'alice' exists already\n"
    )
    cli.fails(
        "user",
        "add",
        "dave",
        "--role",
        "organiser",
        "--password-stdin",
        input="short\n",
        code=2,
        message="Invalid value for password: password must be at least 10 characters",
    )
    cli.fails(
        "user",
        "add",
        "bad name!",
        "--role",
        "organiser",
        "--password-stdin",
        input=PASSWORD + "\n",
        code=2,
        message="Invalid value for USERNAME: username must be 2-64 characters",
    )
    cli.fails(
        "user",
        "add",
        "x",
        "--role",
        "organiser",
        "--password-stdin",
        input=PASSWORD + "\n",
        code=2,
        message="Invalid value for USERNAME",
    )
    role = cli.fails(
        "user",
        "add",
        "erin",
        "--role",
        "admin",
        "--password-stdin",
        input=PASSWORD + "\n",
        code=2,
        message="Invalid value for '--role'",
    )
    assert "'admin' is not one of 'organiser', 'venue_operator', 'auditor'" in role
    cli.fails(
        "user",
        "add",
        "erin",
        "--password-stdin",
        input=PASSWORD + "\n",
        code=2,
        message="Missing option '--role'",
    )
    cli.fails(
        "user",
        "add",
        "erin",
        "--role",
        "auditor",
        "--password-stdin",
        input="",
        code=2,
        message="--password-stdin given but standard input was empty",
    )
    cli.fails(
        "user",
        "add",
        "op",
        "--role",
        "venue_operator",
        "--venue",
        "nowhere",
        "--password-stdin",
        input=PASSWORD + "\n",
        code=1,
        message="no venue 'nowhere'",
    )

    async def names(db: AsyncSession) -> list[str]:
        return list(await db.scalars(select(User.username).order_by(User.id)))

    assert cli.query(names) == ["alice"]
    assert cli.count(AdminEvent) == events_before


@SQLITE_ONLY
def test_venue_operator_runs_a_venue(cli: Cli) -> None:
    cli.ok(
        "venue",
        "add",
        "bj-cy-2",
        "--name",
        "朝阳第2会议室",
        "--unit",
        "北京/朝阳办公区",
        "--create-unit",
    )
    assert cli.json(
        "user",
        "add",
        "op-bj",
        "--role",
        "venue_operator",
        "--venue",
        "bj-cy-2",
        "--password-stdin",
        input=PASSWORD + "\n",
    ) == {"id": 1, "username": "op-bj", "role": "venue_operator"}

    async def venue_of(db: AsyncSession) -> int | None:
        return await db.scalar(select(User.venue_id).where(User.username == "op-bj"))

    assert cli.query(venue_of) == cli.json("venue", "list")[0]["id"]


# -- unit and venue ---------------------------------------------------------------------------


def test_venues_and_units(cli: Cli) -> None:
    out = cli.ok(
        "venue",
        "add",
        "bj-cy-2",
        "--name",
        "朝阳第2会议室",
        "--unit",
        "北京/朝阳办公区",
        "--capacity",
        "30",
        "--create-unit",
        "--json",
    )
    assert "朝阳第2会议室" in out and "北京/朝阳办公区" in out  # UTF-8, not \u escapes
    bj = json.loads(out)
    assert bj == {
        "id": bj["id"],
        "slug": "bj-cy-2",
        "name": "朝阳第2会议室",
        "unit_path": "北京/朝阳办公区",
        "capacity": 30,
        "edge_url": None,
    }
    assert (
        cli.ok("venue", "add", "sh-1", "--name", "浦东报告厅", "--unit", "上海/", "--create-unit")
        == "added venue sh-1 (浦东报告厅) under 上海\n"
    )

    venues = cli.json("venue", "list")
    assert venues == [
        bj,
        {
            "id": venues[1]["id"],
            "slug": "sh-1",
            "name": "浦东报告厅",
            "unit_path": "上海",
            "capacity": None,
            "edge_url": None,
        },
    ]

    units = cli.json("unit", "list")
    by_id = {u["id"]: u["path"] for u in units}
    assert sorted(
        (u["path"], u["name"], u["depth"], by_id.get(u["parent_id"]), u["members"], u["venues"])
        for u in units
    ) == sorted(
        [
            ("北京", "北京", 1, None, 0, 0),
            ("北京/朝阳办公区", "朝阳办公区", 2, "北京", 0, 1),
            ("上海", "上海", 1, None, 0, 1),
        ]
    )
    paths = [u["path"] for u in units]
    assert paths.index("北京") < paths.index("北京/朝阳办公区")  # parents before children

    table = cli.ok("venue", "list")
    assert table.startswith("2 venues")
    for text in ("bj-cy-2", "朝阳第2会议室", "sh-1", "浦东报告厅", "30"):
        assert text in table
    table = cli.ok("unit", "list")
    assert table.startswith("3 units")
    assert "  北京/朝阳办公区" in table


def test_venue_errors_store_nothing(cli: Cli) -> None:
    cli.ok(
        "venue",
        "add",
        "bj-cy-2",
        "--name",
        "朝阳第2会议室",
        "--unit",
        "北京/朝阳办公区",
        "--create-unit",
    )
    venues, units = cli.json("venue", "list"), cli.json("unit", "list")

    assert (
        cli.fails(
            "venue",
            "add",
            "sh-pd-1",
            "--name",
            "浦东会议室",
            "--unit",
            "上海/浦东办公区",
            code=1,
            message="no unit at path '上海/浦东办公区'",
        )
        == "Error: no unit at path '上海/浦东办公区'\n"
    )
    # The unit made by --create-unit goes away with the failed venue (one transaction).
    cli.fails(
        "venue",
        "add",
        "bj-cy-2",
        "--name",
        "另一个",
        "--unit",
        "广州",
        "--create-unit",
        code=1,
        message="venue 'bj-cy-2' exists already",
    )
    cli.fails(
        "venue",
        "add",
        "Bad_Slug",
        "--name",
        "x",
        "--unit",
        "深圳",
        "--create-unit",
        code=1,
        message="venue slug 'Bad_Slug' must be 1-64 characters",
    )
    cli.fails(
        "venue",
        "add",
        "gz-1",
        "--name",
        "   ",
        "--unit",
        "北京",
        code=1,
        message="venue name is empty",
    )
    cli.fails(
        "venue",
        "add",
        "gz-1",
        "--name",
        "x",
        "--unit",
        "北京//朝阳",
        "--create-unit",
        code=1,
        message="has an empty segment",
    )
    cli.fails(
        "venue",
        "add",
        "gz-1",
        "--name",
        "x",
        "--unit",
        "北京",
        "--capacity",
        "0",
        code=2,
        message="Invalid value for '--capacity'",
    )
    cli.fails("venue", "add", "gz-1", "--unit", "北京", code=2, message="Missing option '--name'")

    assert (cli.json("venue", "list"), cli.json("unit", "list")) == (venues, units)


# -- session ----------------------------------------------------------------------------------


def in_utc(described: dict[str, Any]) -> dict[str, Any]:
    """``session create --json`` echoes times in the zone given (see
    test_session_create_json_matches_show); compare them in UTC, as show and list give them."""
    return {
        k: datetime.fromisoformat(v).astimezone(UTC).isoformat()
        if k in ("scheduled_start", "scheduled_end")
        else v
        for k, v in described.items()
    }


@pytest.fixture
def venues(cli: Cli) -> Cli:
    cli.ok(
        "venue",
        "add",
        "bj-cy-2",
        "--name",
        "朝阳第2会议室",
        "--unit",
        "北京/朝阳办公区",
        "--create-unit",
    )
    cli.ok("venue", "add", "sh-1", "--name", "浦东报告厅", "--unit", "上海", "--create-unit")
    return cli


def test_sessions(venues: Cli) -> None:
    cli = venues
    created = cli.json(
        "session",
        "create",
        "季度学习会",
        "--start",
        "2026-12-01T19:30+08:00",
        "--duration",
        "120",
        "--venue",
        "bj-cy-2",
        "--venue",
        "sh-1",
        "--unit",
        "北京",
        "--unit",
        "上海",
        "--video-codec",
        "vp8",
        "--no-recording",
        "--min-share",
        "0.75",
        "--min-presence",
        "2",
        "--makeup-presence",
        "--description",
        "安全与合规",
    )
    created = in_utc(created)
    units = created.pop("expected_units")
    assert sorted(units) == sorted(["北京", "上海"])
    assert {created.pop(k)[:4] for k in ("whip_url", "whep_url")} == {"http"}
    assert all(created.pop(k).count(".") == 2 for k in ("whip_token", "whep_token"))
    assert created == {
        "id": created["id"],
        "title": "季度学习会",
        "description": "安全与合规",
        "state": "scheduled",
        "scheduled_start": "2026-12-01T11:30:00+00:00",
        "scheduled_end": "2026-12-01T13:30:00+00:00",
        "video_codec": "vp8",
        "recording_enabled": False,
        "venues": [
            {"slug": "bj-cy-2", "name": "朝阳第2会议室"},
            {"slug": "sh-1", "name": "浦东报告厅"},
        ],
        "attendance_rule": {
            **DEFAULT_RULE,
            "min_share": 0.75,
            "min_presence_passed": 2,
            "makeup_presence": True,
        },
        "started_at": None,
        "ended_at": None,
    }
    # Stored units come back in path order (of the database's collation), not as given.
    units = cli.json("session", "show", str(created["id"]))["expected_units"]
    assert sorted(units) == sorted(["北京", "上海"])
    created["expected_units"] = units

    # A time without a zone is the local time of the machine (here UTC+8); defaults apply.
    weekly = in_utc(cli.json("session", "create", "Weekly reading", "--start", "2026-12-02 19:30"))
    for key in ("whip_url", "whip_token", "whep_url", "whep_token"):
        weekly.pop(key)
    assert weekly == {
        "id": weekly["id"],
        "title": "Weekly reading",
        "description": "",
        "state": "scheduled",
        "scheduled_start": "2026-12-02T11:30:00+00:00",
        "scheduled_end": "2026-12-02T13:00:00+00:00",
        "video_codec": "h264",
        "recording_enabled": True,
        "venues": [],
        "expected_units": [],
        "attendance_rule": DEFAULT_RULE,
        "started_at": None,
        "ended_at": None,
    }
    plain = cli.ok(
        "session",
        "create",
        "Early",
        "--start",
        "2026-11-30T08:00:00Z",
        "--end",
        "2026-11-30T09:00:00Z",
    )
    early_id = weekly["id"] + 1
    first, *rest = plain.splitlines()
    assert first == f"scheduled session {early_id}: Early (2026-11-30T08:00:00+00:00)"
    assert [line.split(":")[0].strip() for line in rest] == [
        "broadcast (OBS",
        "server",
        "bearer token",
        "watch (WHEP)",
        "url",
        "bearer token",
    ]
    assert rest[1].endswith(f"/whip/{early_id}") and rest[4].endswith(f"/whep/{early_id}")
    early = cli.json("session", "show", str(early_id))

    # Newest scheduled first.
    assert cli.json("session", "list") == [weekly, created, early]
    assert cli.json("session", "list", "--state", "scheduled") == [weekly, created, early]
    assert cli.json("session", "list", "--state", "live") == []
    assert cli.json("session", "show", str(created["id"])) == created

    assert (
        cli.ok("session", "show", str(created["id"]))
        == "\n".join(
            [
                f"session {created['id']}: 季度学习会",
                "  state:      scheduled",
                "  scheduled:  2026-12-01 19:30 CST – 2026-12-01 21:30 CST",
                "  video:      vp8 (audio Opus)",
                "  recording:  off",
                "  venues:     bj-cy-2, sh-1",
                f"  expected:   {', '.join(units)}",
                "  qualifies:  watched >= 75% of live time, presence checks passed >= 66% of those "
                "given, at least 2",
                "  make-up:    share of the recording, and its presence checks",
                "  about:      安全与合规",
            ]
        )
        + "\n"
    )
    assert (
        cli.ok("session", "show", str(weekly["id"]))
        == "\n".join(
            [
                f"session {weekly['id']}: Weekly reading",
                "  state:      scheduled",
                "  scheduled:  2026-12-02 19:30 CST – 2026-12-02 21:00 CST",
                "  video:      h264 (audio Opus)",
                "  recording:  on",
                "  venues:     -",
                "  expected:   -",
                "  qualifies:  watched >= 85% of live time,"
                " presence checks passed >= 66% of those given",
                "  make-up:    share of the recording",
            ]
        )
        + "\n"
    )

    table = cli.ok("session", "list")
    assert table.startswith("3 sessions")
    for text in ("Weekly reading", "季度学习会", "2026-12-01 19:30 CST", "vp8", "h264"):
        assert text in table

    async def trail(db: AsyncSession) -> list[tuple[str, str, str | None]]:
        rows = await db.execute(
            select(AdminEvent.actor, AdminEvent.action, AdminEvent.target)
            .where(AdminEvent.action == "session_created")
            .order_by(AdminEvent.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]

    assert cli.query(trail) == [
        ("cli", "session_created", f"session:{s}") for s in (created["id"], weekly["id"], early_id)
    ]


BAD_SESSIONS = [
    (
        ["--start", "2026-12-01T19:30+08:00", "--end", "2026-12-01T18:00+08:00"],
        2,
        "scheduled_end must be after scheduled_start",
    ),
    (
        ["--start", "2026-12-01T19:30+08:00", "--end", "2026-12-01T19:30+08:00"],
        2,
        "scheduled_end must be after scheduled_start",
    ),
    (
        ["--start", "2026-12-01T19:30+08:00", "--end", "2026-12-03T19:30+08:00"],
        2,
        "a session may last at most 24 hours",
    ),
    (["--start", "2026-12-01T19:30+08:00", "--venue", "nope"], 1, "Error: no venue 'nope'\n"),
    (
        ["--start", "2026-12-01T19:30+08:00", "--venue", "bj-cy-2", "--venue", "nope"],
        1,
        "Error: no venue 'nope'\n",
    ),
    (["--start", "2026-12-01T19:30+08:00", "--unit", "广州"], 1, "Error: no unit at path '广州'\n"),
    (
        ["--start", "2026-12-01T19:30+08:00", "--venue", "sh-1", "--venue", "sh-1"],
        2,
        "venues: lists an entry twice",
    ),
    (
        ["--start", "2026-12-01T19:30", "--end", "2026-12-01T20:30", "--duration", "30"],
        2,
        "give --end or --duration, not both",
    ),
    (
        ["--start", "tomorrow evening"],
        2,
        "Invalid value for '--start': 'tomorrow evening' is not a time like 2026-12-01T19:30",
    ),
    (
        ["--start", "2026-12-01T19:30", "--end", "2026-13-01T19:30"],
        2,
        "Invalid value for '--end': '2026-13-01T19:30' is not a time",
    ),
    (["--end", "2026-12-01T19:30"], 2, "Missing option '--start'"),
    (
        ["--start", "2026-12-01T19:30", "--video-codec", "av1"],
        2,
        "Invalid value for '--video-codec'",
    ),
    (["--start", "2026-12-01T19:30", "--min-share", "1.5"], 2, "Invalid value for '--min-share'"),
    (["--start", "2026-12-01T19:30", "--duration", "0"], 2, "Invalid value for '--duration'"),
]


def test_session_create_errors_store_nothing(venues: Cli) -> None:
    cli = venues
    made = cli.json("session", "create", "已有", "--start", "2026-11-30T19:30+08:00")
    existing = cli.json("session", "show", str(made["id"]))
    events = cli.count(AdminEvent)
    for args, code, message in BAD_SESSIONS:
        cli.fails("session", "create", "季度学习会", *args, code=code, message=message)
    cli.fails(
        "session",
        "create",
        "  ",
        "--start",
        "2026-12-01T19:30+08:00",
        code=2,
        message="Invalid value for TITLE: title is empty",
    )
    assert cli.json("session", "list") == [existing]
    assert (cli.count(StudySession), cli.count(AdminEvent)) == (1, events)


def test_session_create_json_matches_show(venues: Cli) -> None:
    created = venues.json("session", "create", "季度学习会", "--start", "2026-12-01T19:30+08:00")
    links = {k: created.pop(k) for k in ("whip_url", "whip_token", "whep_url", "whep_token")}
    assert created == venues.json("session", "show", str(created["id"]))
    assert created["scheduled_start"] == "2026-12-01T11:30:00+00:00"
    # Absolute URLs from the configured base, and tokens scoped to this session and role.
    sid = created["id"]
    assert links["whip_url"] == f"http://127.0.0.1:8080/whip/{sid}"
    assert links["whep_url"] == f"http://127.0.0.1:8080/whep/{sid}"
    secret = (venues.data_dir / "secret_key").read_text().strip()
    assert (
        verify(
            secret,
            links["whip_token"],
            session_id=sid,
            roles=frozenset({TokenRole.BROADCASTER}),
            now=utcnow(),
        ).role
        == "broadcaster"
    )
    assert (
        verify(secret, links["whep_token"], session_id=sid, roles=VIEWER_ROLES, now=utcnow()).role
        == "viewer"
    )


@SQLITE_ONLY
def test_session_show_errors(venues: Cli) -> None:
    assert (
        venues.fails("session", "show", "99", code=1, message="no study session 99")
        == "Error: no study session 99\n"
    )
    venues.fails("session", "show", "99", "--json", code=1, message="no study session 99")
    venues.fails("session", "show", "0", code=2, message="Invalid value for 'SESSION_ID'")
    venues.fails("session", "show", "abc", code=2, message="'abc' is not a valid integer")
    venues.fails(
        "session", "list", "--state", "running", code=2, message="Invalid value for '--state'"
    )


# -- serve (argument checks only: running the server is tested elsewhere) -------------------


@SQLITE_ONLY
def test_serve_rejects_a_bad_port(cli: Cli) -> None:
    cli.fails("serve", "--port", "70000", code=2, message="Invalid value for '--port'")


@SQLITE_ONLY
def test_serve_reports_invalid_configuration(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYCAST_PUBLIC_BASE_URL", "study.example.org")
    cli.fails(
        "serve",
        code=1,
        message="invalid configuration: STUDYCAST_PUBLIC_BASE_URL: "
        "Value error, must start with http:// or https://",
    )
    assert not cli.data_dir.exists()


# -- nothing stray ----------------------------------------------------------------------------


@SQLITE_ONLY
def test_units_are_not_made_by_listing(cli: Cli) -> None:
    assert cli.json("unit", "list") == []
    assert cli.count(OrgUnit) == 0

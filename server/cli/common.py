"""What every command shares: settings, the store, running coroutines, JSON output, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
from pydantic import ValidationError

from attendance.errors import StudycastError
from attendance.migrate import upgrade
from attendance.store import Store
from server.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


def settings_options(fn: Callable[P, T]) -> Callable[P, T]:
    """Global options: they override the matching STUDYCAST_* variables for this run."""
    fn = click.option(
        "--data-dir",
        envvar="STUDYCAST_DATA_DIR",
        type=click.Path(file_okay=False),
        help="Data directory (default ./data).",
        expose_value=False,
        callback=_remember("data_dir"),
    )(fn)
    fn = click.option(
        "--database-url",
        envvar="STUDYCAST_DATABASE_URL",
        help="Record store URL (default: SQLite file in the data dir).",
        expose_value=False,
        callback=_remember("database_url"),
    )(fn)
    return fn


def _remember(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None:
            ctx.ensure_object(dict)[name] = value
        return value

    return callback


def load_settings() -> Settings:
    """Settings from the environment and .env, with the command line's overrides on top."""
    ctx = click.get_current_context()
    overrides = ctx.find_root().ensure_object(dict)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"STUDYCAST_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise click.ClickException(f"invalid configuration: {problems}") from exc


async def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """The configured store, with its schema brought up to date."""
    if settings.database_url is None:
        settings.ensure_data_dir()
    store = Store(settings.resolved_database_url())
    if migrate:
        try:
            await upgrade(store)
        except BaseException:
            await store.close()
            raise
    return store


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning studycast errors into a clean message and exit 1."""
    try:
        return asyncio.run(coro)
    except StudycastError as exc:
        raise click.ClickException(exc.detail) from exc


def with_store(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Decorate ``async def cmd(store, settings, **options)``: opens and closes the store."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        settings = load_settings()

        async def go() -> T:
            store = await open_store(settings)
            try:
                return await fn(store, settings, *args, **kwargs)
            finally:
                await store.close()

        return run(go())

    return wrapper


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def json_option(fn: Callable[P, T]) -> Callable[P, T]:
    return click.option("--json", "as_json", is_flag=True, help="Print the data as JSON.")(fn)


def configure_logging(level: int = logging.INFO) -> None:
    """Structured-enough logs for operators: time, level, logger, message (stderr)."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

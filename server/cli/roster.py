"""``studycast roster``: import and export the member roster (CSV or XLSX)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from attendance.clock import utcnow
from attendance.errors import InvalidInput
from attendance.roster import (
    ImportReport,
    ParsedRoster,
    RosterError,
    RosterFormat,
    RosterRow,
    export_roster,
    import_roster,
    parse_roster,
    roster_format,
    roster_to_csv,
    roster_to_xlsx,
)
from attendance.store import Store
from server.cli.common import echo_json, json_option, with_store
from server.settings import Settings

ACTOR = "cli"
LIST_UNITS_UP_TO = 20


@click.group()
def roster() -> None:
    """Import and export the member roster."""


@roster.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--encoding",
    default="utf-8-sig",
    show_default=True,
    help="Text encoding of a CSV file (gb18030 for one saved by Excel on a Chinese system).",
)
@click.option("--dry-run", is_flag=True, help="Check the file and show the changes; write nothing.")
@json_option
def import_command(file: Path, encoding: str, dry_run: bool, as_json: bool) -> None:
    """Add and update members from FILE (.csv or .xlsx, header row first).

    Members are matched by member number; members not in FILE are left as they are. Units in
    the unit path column are created as needed. A file with any bad row imports nothing.
    """
    try:
        fmt = roster_format(file.name)
        parsed = parse_roster(file.read_bytes(), format=fmt, encoding=encoding)
    except RosterError as exc:
        _reject(file, exc, as_json)
    except InvalidInput as exc:
        raise click.ClickException(f"{file.name}: {exc.detail}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from exc
    report = _import(parsed, file.name, dry_run)
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(_describe(report))


@with_store
async def _import(
    store: Store, _settings: Settings, parsed: ParsedRoster, source: str, dry_run: bool
) -> ImportReport:
    return await import_roster(
        store, parsed, now=utcnow(), actor=ACTOR, source_name=source, dry_run=dry_run
    )


def _reject(file: Path, exc: RosterError, as_json: bool) -> NoReturn:
    if as_json:
        echo_json(
            {
                "error": exc.code,
                "detail": f"{file.name}: roster rejected, nothing was imported",
                "total": exc.total,
                "problems": [p.as_dict() for p in exc.problems],
            }
        )
    else:
        click.echo(f"Error: {file.name}: {exc.detail}", err=True)
        click.echo("Nothing was imported.", err=True)
    sys.exit(1)


def _describe(report: ImportReport) -> str:
    counts = (
        f"{report.rows} rows: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged; {len(report.units_created)} new units"
    )
    lines = [
        f"dry run, nothing written: {report.source_name} would give {counts}"
        if report.dry_run
        else f"imported {report.source_name}: {counts}",
        f"sha256 {report.sha256}",
    ]
    if 0 < len(report.units_created) <= LIST_UNITS_UP_TO:
        lines += [f"  new unit {path}" for path in report.units_created]
    return "\n".join(lines)


@roster.command("export")
@click.argument("file")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "xlsx"]),
    help="File format (default: from FILE's extension; CSV for -).",
)
def export_command(file: str, fmt: RosterFormat | None) -> None:
    """Write the active members to FILE (.csv or .xlsx), or as CSV to standard output with -.

    CSV is UTF-8 with a BOM (Excel shows Chinese correctly); cells that a spreadsheet would run
    as a formula get a leading ' which a later import removes again. The export is logged.
    """
    to_stdout = file == "-"
    if fmt is None:
        try:
            fmt = "csv" if to_stdout else roster_format(file)
        except InvalidInput as exc:
            raise click.UsageError(f"{exc.detail}, or give --format") from exc
    if to_stdout and fmt == "xlsx":
        raise click.UsageError("XLSX cannot go to standard output; give a file name")
    target = Path(file)
    if not to_stdout and not target.parent.is_dir():
        raise click.ClickException(f"folder {target.parent} does not exist")
    rows = _export("stdout" if to_stdout else target.name)
    data = roster_to_csv(rows) if fmt == "csv" else roster_to_xlsx(rows)
    if to_stdout:
        click.echo(data, nl=False)  # bytes go to the binary stream as they are
        click.echo(f"exported {len(rows)} members", err=True)
        return
    # Write beside the target and rename, so a reader never sees half a file.
    partial = target.with_name(target.name + ".part")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {target}: {exc.strerror}") from exc
    click.echo(f"exported {len(rows)} members to {target}")


@with_store
async def _export(store: Store, _settings: Settings, destination: str) -> list[RosterRow]:
    return await export_roster(store, now=utcnow(), actor=ACTOR, destination=destination)

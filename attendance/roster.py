"""The member roster as a file: parse and validate CSV/XLSX, import in one transaction, export.

Parsing is pure (bytes in, validated rows or one ``RosterError`` listing every problem out), so a
bad file is rejected before the store is touched. The import loads the stored roster once and
writes members in bulk, so 10,000 rows take one transaction, not 10,000 flushes. CSV exports
defuse formula-like cells with a leading quote; the CSV parser removes exactly that quote again,
so an export re-imports unchanged.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import openpyxl
import xlsxwriter
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.errors import InvalidInput
from attendance.journal import record_admin_event
from attendance.models import Member, OrgUnit
from attendance.store import Store
from attendance.units import SEPARATOR, UnitTree, join_path, parse_unit_path

RosterFormat = Literal["csv", "xlsx"]

FIELDS = ("member_no", "name", "unit_path", "phone")
REQUIRED = ("member_no", "name", "unit_path")
MAX_PROBLEMS = 100
MAX_MEMBER_NO = 32
MAX_NAME = 100
MAX_PHONE = 32
MAX_PATH = 1000  # OrgUnit.path

# Header spellings people use, keyed by field; compared after _header_key().
HEADER_ALIASES: Mapping[str, tuple[str, ...]] = {
    "member_no": ("member_no", "member number", "member id", "编号", "成员编号", "会员编号"),
    "name": ("name", "full name", "姓名", "名字"),
    "unit_path": ("unit_path", "unit", "organisation unit", "单位", "单位路径", "所属单位"),
    "phone": ("phone", "phone number", "mobile", "电话", "手机", "手机号", "联系电话"),
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(r"\s")
_PHONE = re.compile(r"^\+?[0-9(][0-9 ()\-]*[0-9]$")
# Cells a spreadsheet would run as a formula (OWASP CSV injection), after any quotes we added.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")


def _header_key(text: str) -> str:
    return " ".join(re.split(r"[\s_\-.]+", text.strip().strip("\ufeff").casefold())).strip()


_FIELD_BY_HEADER = {_header_key(a): f for f, aliases in HEADER_ALIASES.items() for a in aliases}


@dataclass(frozen=True)
class RosterRow:
    """One validated member line; ``unit_path`` is canonical (``join_path`` of its segments)."""

    member_no: str
    name: str
    unit_path: str
    phone: str | None = None


@dataclass(frozen=True)
class ParsedRoster:
    """A whole file, validated: its rows in file order and the SHA-256 of its bytes."""

    rows: tuple[RosterRow, ...]
    sha256: str
    format: RosterFormat


@dataclass(frozen=True)
class RosterProblem:
    """One thing wrong with a file. ``row`` counts member rows after the header (1-based);
    ``line`` is the file line (CSV) or spreadsheet row (XLSX) where it sits."""

    row: int | None
    line: int | None
    column: str | None
    message: str
    line_kind: str = "line"

    def __str__(self) -> str:
        where: list[str] = []
        if self.row is not None:
            at = f" ({self.line_kind} {self.line})" if self.line is not None else ""
            where.append(f"row {self.row}{at}")
        elif self.line is not None:
            where.append(f"{self.line_kind} {self.line}")
        if self.column is not None:
            where.append(f'column "{self.column}"')
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "line": self.line, "column": self.column, "message": self.message}


class RosterError(InvalidInput):
    """A roster file was rejected; ``problems`` lists the first ``MAX_PROBLEMS`` of ``total``."""

    code = "invalid_roster"

    def __init__(self, problems: Sequence[RosterProblem], total: int | None = None) -> None:
        self.problems = list(problems)
        self.total = max(total or 0, len(self.problems))
        lines = [str(p) for p in self.problems]
        if self.total > len(self.problems):
            lines.append(f"... and {self.total - len(self.problems)} more problems not shown")
        plural = "problem" if self.total == 1 else "problems"
        super().__init__(f"roster rejected, {self.total} {plural}:\n" + "\n".join(lines))


class _Problems:
    """Collects problems up to the cap, counting the rest."""

    def __init__(self, line_kind: str) -> None:
        self.line_kind = line_kind
        self.kept: list[RosterProblem] = []
        self.total = 0

    def add(self, row: int | None, line: int | None, column: str | None, message: str) -> None:
        self.total += 1
        if len(self.kept) < MAX_PROBLEMS:
            self.kept.append(RosterProblem(row, line, column, message, self.line_kind))

    def error(self) -> RosterError:
        return RosterError(self.kept, self.total)


# --- parsing (pure) ---------------------------------------------------------------------------


def roster_format(filename: str) -> RosterFormat:
    """The format a file name implies (.csv or .xlsx); anything else is refused by name."""
    lower = filename.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".xlsx"):
        return "xlsx"
    kind = (
        f"a {Path(filename).suffix} file" if Path(filename).suffix else "a file without extension"
    )
    raise InvalidInput(f"a roster must be a .csv or .xlsx file, not {kind} (save .xls as .xlsx)")


def parse_roster(data: bytes, *, format: RosterFormat, encoding: str = "utf-8-sig") -> ParsedRoster:
    """Validate a roster file of the given format; ``encoding`` applies to CSV only."""
    if format == "xlsx":
        return parse_xlsx(data)
    return parse_csv(data, encoding=encoding)


def parse_csv(data: bytes, *, encoding: str = "utf-8-sig") -> ParsedRoster:
    """Validate CSV bytes (UTF-8 with or without BOM unless ``encoding`` says otherwise)."""
    if data.startswith(b"PK\x03\x04"):
        raise InvalidInput("this file is an XLSX workbook, not CSV; give it the .xlsx extension")
    text = _decode(data, encoding)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)

    def records() -> Iterator[tuple[int, list[str]]]:
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise RosterError(
                    [RosterProblem(None, reader.line_num, None, f"malformed CSV: {exc}")]
                ) from exc
            yield start, cells

    return _parse_records(records(), data, "csv", line_kind="line", unquote=True)


def parse_xlsx(data: bytes) -> ParsedRoster:
    """Validate the first sheet of an XLSX workbook (cached values, never formulas)."""
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise InvalidInput(f"this file is not a readable XLSX workbook: {exc}") from exc
    try:
        if not workbook.worksheets:
            raise InvalidInput("the workbook has no worksheet")
        sheet = workbook.worksheets[0]
        # Trust the cells, not the stored dimension (some writers get it wrong).
        sheet.reset_dimensions()
        records = [
            (n, [_cell_text(v) for v in values])
            for n, values in enumerate(sheet.iter_rows(values_only=True), start=1)
        ]
    finally:
        workbook.close()
    return _parse_records(records, data, "xlsx", line_kind="spreadsheet row", unquote=False)


def _decode(data: bytes, encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise InvalidInput(f"unknown text encoding {encoding!r}") from exc
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        name = "UTF-8" if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig") else encoding
        hint = (
            "; a file saved by Excel on a Chinese system is often GB18030: try --encoding gb18030"
            if name == "UTF-8"
            else ""
        )
        problem = RosterProblem(
            None, line, None, f"byte 0x{data[exc.start]:02x} is not valid {name} text{hint}"
        )
        raise RosterError([problem]) from exc


def _cell_text(value: object) -> str:
    """A spreadsheet cell as text: numbers typed as 1001 or 1001.0 both become "1001"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_records(
    records: Iterable[tuple[int, list[str]]],
    data: bytes,
    fmt: RosterFormat,
    *,
    line_kind: str,
    unquote: bool,
) -> ParsedRoster:
    problems = _Problems(line_kind)
    lines = iter(records)
    header: tuple[int, list[str]] | None = None
    for line, cells in lines:
        if any(c.strip() for c in cells):
            header = (line, cells)
            break
    if header is None:
        message = f"the file is empty; its first line must be the header {','.join(FIELDS)}"
        raise RosterError([RosterProblem(None, None, None, message)])
    columns, labels = _read_header(header[0], header[1], problems)
    if problems.total:
        raise problems.error()

    reader = _RowReader(columns, labels, problems, unquote)
    rows: list[RosterRow] = []
    number = 0
    for line, cells in lines:
        if any(c.strip() for c in cells):
            number += 1
            row = reader.read(number, line, cells)
            if row is not None:
                rows.append(row)
    if problems.total:
        raise problems.error()
    return ParsedRoster(tuple(rows), hashlib.sha256(data).hexdigest(), fmt)


def _read_header(
    line: int, cells: list[str], problems: _Problems
) -> tuple[dict[str, int], list[str]]:
    labels = [c.strip().strip("\ufeff").strip() for c in cells]
    fields = [_FIELD_BY_HEADER.get(_header_key(label)) for label in labels]
    if not any(fields):
        found = ",".join(labels)[:80]
        message = (
            f"the first line must be a header such as {','.join(FIELDS)} or 编号,姓名,单位,电话"
        )
        problems.add(None, line, None, f"{message}; found {found!r}")
        return {}, labels
    columns: dict[str, int] = {}
    for index, (label, field) in enumerate(zip(labels, fields, strict=True)):
        if not label:
            continue  # an unnamed column: its cells must stay empty (checked per row)
        if field is None:
            expected = f"{', '.join(FIELDS)} (or 编号, 姓名, 单位, 电话; phone is optional)"
            problems.add(None, line, label, f"unknown column; expected {expected}")
        elif field in columns:
            first = f'column {columns[field] + 1} ("{labels[columns[field]]}")'
            problems.add(None, line, label, f"duplicate column: means {field}, like {first}")
        else:
            columns[field] = index
    for field in REQUIRED:
        if field not in columns:
            problems.add(None, line, field, "required column is missing")
    return columns, labels


@dataclass
class _RowReader:
    """Validates member rows against the header, remembering member numbers to catch repeats."""

    columns: Mapping[str, int]
    labels: list[str]
    problems: _Problems
    unquote: bool
    first_seen: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def read(self, number: int, line: int, cells: list[str]) -> RosterRow | None:
        """The row as a ``RosterRow``, or None after adding its problems."""
        before = self.problems.total

        def value(name: str) -> str:
            index = self.columns.get(name)
            if index is None or index >= len(cells):
                return ""
            text = cells[index].strip()
            if self.unquote and text.startswith("'") and _FORMULA.match(text):
                text = text[1:]  # the quote our CSV export put before a formula-like cell
            return text

        def fail(name: str, message: str) -> None:
            self.problems.add(number, line, self.labels[self.columns[name]], message)

        used = set(self.columns.values())
        extra = [i for i, c in enumerate(cells) if c.strip() and i not in used]
        if extra:
            message = f"value in column {extra[0] + 1}, which has no header"
            self.problems.add(number, line, None, message)

        member_no = value("member_no")
        if not member_no:
            fail("member_no", "member number is empty")
        elif len(member_no) > MAX_MEMBER_NO:
            fail("member_no", f"member number is longer than {MAX_MEMBER_NO} characters")
        elif _WHITESPACE.search(member_no) or _CONTROL.search(member_no):
            fail("member_no", f"member number {member_no!r} contains a space or control character")
        elif member_no in self.first_seen:
            row, at = self.first_seen[member_no]
            where = f"row {row} ({self.problems.line_kind} {at})"
            fail("member_no", f"member number {member_no!r} already appears in {where}")
        else:
            self.first_seen[member_no] = (number, line)

        name = value("name")
        if not name:
            fail("name", "name is empty")
        elif len(name) > MAX_NAME:
            fail("name", f"name is longer than {MAX_NAME} characters")
        elif _CONTROL.search(name):
            fail("name", "name contains a control character (line break or tab?)")

        unit_path = ""
        try:
            unit_path = join_path(parse_unit_path(value("unit_path")))
        except InvalidInput as exc:
            fail("unit_path", exc.detail)
        else:
            if len(unit_path) > MAX_PATH:
                fail("unit_path", f"unit path is longer than {MAX_PATH} characters")

        phone = value("phone") or None
        if phone is not None:
            digits = sum(c.isdigit() for c in phone)
            if len(phone) > MAX_PHONE or not _PHONE.match(phone) or not 5 <= digits <= 20:
                fail("phone", f"phone {phone!r} is not a phone number (digits, spaces, -, ( ), +)")

        if self.problems.total > before:
            return None
        return RosterRow(member_no, name, unit_path, phone)


# --- import -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RosterPlan:
    """What importing rows into a stored roster changes; computed without I/O."""

    create: tuple[RosterRow, ...]
    update: tuple[tuple[int, RosterRow], ...]  # (member id, new fields)
    unchanged: int
    new_units: tuple[str, ...]


def plan_import(
    rows: Iterable[RosterRow], stored: Mapping[str, tuple[int, RosterRow]], unit_paths: Set[str]
) -> RosterPlan:
    """Match rows to stored ``(id, row)`` by member number: create, update or leave unchanged.

    Members absent from the rows are not part of the plan: an import never removes anyone.
    """
    create: list[RosterRow] = []
    changed: list[tuple[int, RosterRow]] = []
    unchanged = 0
    new_units: set[str] = set()
    for row in rows:
        found = stored.get(row.member_no)
        if found is None:
            create.append(row)
        elif found[1] != row:
            changed.append((found[0], row))
        else:
            unchanged += 1
            continue
        segments = row.unit_path.split(SEPARATOR)
        new_units.update(
            path
            for path in (join_path(segments[:depth]) for depth in range(1, len(segments) + 1))
            if path not in unit_paths
        )
    return RosterPlan(tuple(create), tuple(changed), unchanged, tuple(sorted(new_units)))


@dataclass(frozen=True)
class ImportReport:
    """The outcome of one import (or dry run): counts, units created and the file's hash."""

    source_name: str
    sha256: str
    rows: int
    created: int
    updated: int
    unchanged: int
    units_created: tuple[str, ...]
    dry_run: bool = False

    @classmethod
    def of(cls, roster: ParsedRoster, plan: RosterPlan, source: str, dry: bool) -> ImportReport:
        created, updated = len(plan.create), len(plan.update)
        args = (roster.sha256, len(roster.rows), created, updated, plan.unchanged, plan.new_units)
        return cls(source, *args, dry)

    def counts(self) -> dict[str, Any]:
        """The figures the audit trail keeps (unit paths only as a count)."""
        return {
            "sha256": self.sha256,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "units_created": len(self.units_created),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source_name,
            **self.counts(),
            "units_created": list(self.units_created),
            "dry_run": self.dry_run,
        }


async def _stored_roster(db: AsyncSession) -> tuple[dict[str, tuple[int, RosterRow]], set[str]]:
    result = await db.execute(
        select(Member.id, Member.member_no, Member.name, OrgUnit.path, Member.phone).join(
            OrgUnit, Member.unit_id == OrgUnit.id
        )
    )
    members = {r.member_no: (r.id, RosterRow(r.member_no, r.name, r.path, r.phone)) for r in result}
    return members, set((await db.scalars(select(OrgUnit.path))).all())


async def import_roster(
    store: Store,
    roster: ParsedRoster,
    *,
    now: datetime,
    actor: str,
    source_name: str,
    dry_run: bool = False,
) -> ImportReport:
    """Upsert the parsed members by member number in one write transaction, creating units as
    needed and logging a ``roster_imported`` admin event; ``dry_run`` only reports the counts."""
    if dry_run:
        async with store.read() as db:
            stored, unit_paths = await _stored_roster(db)
        return ImportReport.of(
            roster, plan_import(roster.rows, stored, unit_paths), source_name, True
        )

    async with store.write() as db:
        stored, unit_paths = await _stored_roster(db)
        plan = plan_import(roster.rows, stored, unit_paths)
        tree = UnitTree(db, now)
        unit_ids: dict[str, int] = {}
        for path in sorted({r.unit_path for r in (*plan.create, *(r for _, r in plan.update))}):
            unit_ids[path] = (await tree.ensure(path.split(SEPARATOR))).id
        # Bulk statements (executemany), not an ORM flush per member: 10,000 rows in one go.
        if plan.create:
            await db.execute(
                insert(Member),
                [
                    {
                        "member_no": r.member_no,
                        "name": r.name,
                        "unit_id": unit_ids[r.unit_path],
                        "phone": r.phone,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for r in plan.create
                ],
            )
        if plan.update:
            await db.execute(
                update(Member),
                [
                    {
                        "id": member_id,
                        "name": r.name,
                        "unit_id": unit_ids[r.unit_path],
                        "phone": r.phone,
                        "updated_at": now,
                    }
                    for member_id, r in plan.update
                ],
            )
        report = ImportReport.of(roster, plan, source_name, False)
        await record_admin_event(
            db,
            now=now,
            actor=actor,
            action="roster_imported",
            target=source_name[:200],
            detail={**report.counts(), "format": roster.format},
        )
    return report


# --- export -----------------------------------------------------------------------------------


async def export_roster(
    store: Store, *, now: datetime, actor: str, destination: str
) -> list[RosterRow]:
    """The active members in unit-path order; the export itself is logged (``roster_exported``)
    because the file carries personal data."""
    async with store.write() as db:
        result = await db.execute(
            select(Member.member_no, Member.name, OrgUnit.path, Member.phone)
            .join(OrgUnit, Member.unit_id == OrgUnit.id)
            .where(Member.active.is_(True))
            .order_by(OrgUnit.path, Member.member_no)
        )
        rows = [RosterRow(r.member_no, r.name, r.path, r.phone) for r in result]
        await record_admin_event(
            db,
            now=now,
            actor=actor,
            action="roster_exported",
            target=destination[:200],
            detail={"members": len(rows)},
        )
    return rows


def defuse_cell(value: str) -> str:
    # A leading quote makes spreadsheets show the cell as text instead of running it.
    return "'" + value if _FORMULA.match(value) else value


def roster_to_csv(rows: Iterable[RosterRow]) -> bytes:
    """RFC 4180 CSV with the canonical header, UTF-8 with a BOM so Excel reads Chinese right."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for r in rows:
        writer.writerow([defuse_cell(v) for v in (r.member_no, r.name, r.unit_path, r.phone or "")])
    return out.getvalue().encode("utf-8-sig")


def roster_to_xlsx(rows: Iterable[RosterRow]) -> bytes:
    """One-sheet XLSX with the canonical header; every cell is a string (1001 stays "1001")."""
    out = io.BytesIO()
    workbook = xlsxwriter.Workbook(
        out,
        {
            "in_memory": True,
            "strings_to_numbers": False,
            "strings_to_formulas": False,
            "strings_to_urls": False,
        },
    )
    sheet = workbook.add_worksheet("roster")
    bold = workbook.add_format({"bold": True})
    for col, label in enumerate(FIELDS):
        sheet.write_string(0, col, label, bold)
    for n, r in enumerate(rows, start=1):
        for col, value in enumerate((r.member_no, r.name, r.unit_path, r.phone or "")):
            if value:
                sheet.write_string(n, col, value)
    for col, width in enumerate((14, 20, 40, 18)):
        sheet.set_column(col, col, width)
    sheet.freeze_panes(1, 0)
    workbook.close()
    return out.getvalue()

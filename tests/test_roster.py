"""Roster import and export: real files, real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlsxwriter
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from attendance.chain import verify
from attendance.errors import Conflict, InvalidInput
from attendance.journal import admin_event_fields
from attendance.migrate import upgrade
from attendance.models import AdminEvent, Member, OrgUnit
from attendance.roster import (
    MAX_PROBLEMS,
    ParsedRoster,
    RosterError,
    RosterRow,
    export_roster,
    import_roster,
    parse_csv,
    parse_roster,
    parse_xlsx,
    roster_format,
    roster_to_csv,
    roster_to_xlsx,
)
from attendance.store import Store
from attendance.units import list_units
from server.cli import main

HEADER = "member_no,name,unit_path,phone\n"


def csv_bytes(lines: list[str], header: str = HEADER) -> bytes:
    return (header + "".join(line + "\n" for line in lines)).encode("utf-8")


def member_lines(n: int, start: int = 1) -> list[str]:
    """``n`` valid rows spread over 3 cities x 4 areas x 5 rooms."""
    return [
        f"M{i:05d},Member {i},City {i % 3}/Area {i % 4}/Room {i % 5},+86 138 0000 {i % 10000:04d}"
        for i in range(start, start + n)
    ]


async def stored_members(store: Store) -> dict[str, tuple[str, str, str | None]]:
    async with store.read() as db:
        rows = await db.execute(
            select(Member.member_no, Member.name, OrgUnit.path, Member.phone).join(
                OrgUnit, Member.unit_id == OrgUnit.id
            )
        )
        return {r.member_no: (r.name, r.path, r.phone) for r in rows}


async def admin_events(store: Store) -> list[AdminEvent]:
    async with store.read() as db:
        return list((await db.scalars(select(AdminEvent).order_by(AdminEvent.id))).all())


async def import_bytes(
    store: Store, data: bytes, now: datetime, name: str = "roster.csv", **kwargs: Any
) -> Any:
    parsed = parse_roster(data, format=roster_format(name))
    return await import_roster(store, parsed, now=now, actor="test", source_name=name, **kwargs)


# --- import into the store (SQLite and PostgreSQL) --------------------------------------------


async def test_good_file_creates_units_and_members(store: Store, now: datetime) -> None:
    data = csv_bytes(
        [
            "1001,Alice,Beijing/Area 3/Room 2,13800138000",
            "1002,Bob, Beijing / Area 3 / Room 1 ,",
            "1003,Carol,Shanghai,+86 21 5555 0100",
        ]
    )
    report = await import_bytes(store, data, now)

    assert (report.rows, report.created, report.updated, report.unchanged) == (3, 3, 0, 0)
    assert report.units_created == (
        "Beijing",
        "Beijing/Area 3",
        "Beijing/Area 3/Room 1",
        "Beijing/Area 3/Room 2",
        "Shanghai",
    )
    async with store.read() as db:
        units = await list_units(db)
        by_path = {u.path: u for u in units}
    assert [(u.path, u.depth, u.members) for u in units] == [
        ("Beijing", 1, 0),
        ("Beijing/Area 3", 2, 0),
        ("Beijing/Area 3/Room 1", 3, 1),
        ("Beijing/Area 3/Room 2", 3, 1),
        ("Shanghai", 1, 1),
    ]
    assert by_path["Beijing/Area 3/Room 2"].parent_id == by_path["Beijing/Area 3"].id
    assert by_path["Beijing/Area 3"].parent_id == by_path["Beijing"].id
    assert by_path["Beijing"].parent_id is None
    assert await stored_members(store) == {
        "1001": ("Alice", "Beijing/Area 3/Room 2", "13800138000"),
        "1002": ("Bob", "Beijing/Area 3/Room 1", None),
        "1003": ("Carol", "Shanghai", "+86 21 5555 0100"),
    }
    events = await admin_events(store)
    assert [(e.action, e.actor, e.target, e.at) for e in events] == [
        ("roster_imported", "test", "roster.csv", now)
    ]
    assert events[0].detail == {
        "sha256": report.sha256,
        "rows": 3,
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "units_created": 5,
        "format": "csv",
    }
    chain = [
        (e.prev_hash, e.hash, admin_event_fields(e.at, e.actor, e.action, e.target, e.detail))
        for e in events
    ]
    assert verify(chain) is None


async def test_bad_row_57_imports_nothing(store: Store, now: datetime) -> None:
    lines = member_lines(100)
    lines[56] = "M00057,,City 0/Area 1/Room 2,"
    with pytest.raises(RosterError) as info:
        await import_bytes(store, csv_bytes(lines), now)

    assert [str(p) for p in info.value.problems] == [
        'row 57 (line 58), column "name": name is empty'
    ]
    assert info.value.problems[0].as_dict() == {
        "row": 57,
        "line": 58,
        "column": "name",
        "message": "name is empty",
    }
    assert await stored_members(store) == {}
    assert await admin_events(store) == []
    async with store.read() as db:
        assert await list_units(db) == []


async def test_failed_write_rolls_back_units_and_members(store: Store, now: datetime) -> None:
    # Only reachable by bypassing the parser: two rows with one member number hit the unique
    # constraint after the units were created; the whole transaction must vanish.
    rows = (RosterRow("1", "A", "New/Unit"), RosterRow("1", "B", "New/Unit"))
    with pytest.raises(Conflict, match="conflicts with stored data"):
        await import_roster(
            store, ParsedRoster(rows, "0" * 64, "csv"), now=now, actor="t", source_name="x"
        )
    assert await stored_members(store) == {}
    assert await admin_events(store) == []
    async with store.read() as db:
        assert await list_units(db) == []


async def test_bom_file_with_chinese_headers_names_and_units(store: Store, now: datetime) -> None:
    text = (
        "编号,姓名,单位路径,手机\r\n"
        "1001,张三,北京/朝阳办公区/第2会议室,13800138000\r\n"
        "\r\n"
        "1002,李四,北京/朝阳办公区/第3会议室,\r\n"
        "1003,欧阳 娜娜,上海/浦东,021-5555-0100\r\n"
    )
    data = text.encode("utf-8-sig")
    assert data.startswith(b"\xef\xbb\xbf")
    report = await import_bytes(store, data, now, name="名单.CSV")

    assert (report.rows, report.created) == (3, 3)
    assert await stored_members(store) == {
        "1001": ("张三", "北京/朝阳办公区/第2会议室", "13800138000"),
        "1002": ("李四", "北京/朝阳办公区/第3会议室", None),
        "1003": ("欧阳 娜娜", "上海/浦东", "021-5555-0100"),
    }
    async with store.read() as db:
        assert [u.path for u in await list_units(db)] == [
            "上海",
            "上海/浦东",
            "北京",
            "北京/朝阳办公区",
            "北京/朝阳办公区/第2会议室",
            "北京/朝阳办公区/第3会议室",
        ]


async def test_reimport_updates_without_duplicating(store: Store, now: datetime) -> None:
    first = csv_bytes(
        [
            "1001,Alice,Beijing/Room 1,13800138000",
            "1002,Bob,Beijing/Room 1,",
            "1003,Carol,Beijing/Room 2,",
            "1004,Dan,Beijing/Room 2,",
        ]
    )
    await import_bytes(store, first, now)
    async with store.read() as db:
        ids_before = {
            r.member_no: r.id for r in await db.execute(select(Member.member_no, Member.id))
        }

    later = now + timedelta(days=1)
    second = csv_bytes(
        [
            "1001,Alice Wang,Beijing/Room 1,13800138000",  # name
            "1002,Bob,Shanghai/Room 9,",  # unit (new units)
            "1003,Carol,Beijing/Room 2,13900139000",  # phone
            "1005,Eve,Beijing/Room 1,",  # new; 1004 is absent and stays
        ]
    )
    report = await import_bytes(store, second, later, name="second.csv")

    assert (report.created, report.updated, report.unchanged) == (1, 3, 0)
    assert report.units_created == ("Shanghai", "Shanghai/Room 9")
    assert await stored_members(store) == {
        "1001": ("Alice Wang", "Beijing/Room 1", "13800138000"),
        "1002": ("Bob", "Shanghai/Room 9", None),
        "1003": ("Carol", "Beijing/Room 2", "13900139000"),
        "1004": ("Dan", "Beijing/Room 2", None),
        "1005": ("Eve", "Beijing/Room 1", None),
    }
    async with store.read() as db:
        rows = (await db.execute(select(Member).order_by(Member.member_no))).scalars().all()
        assert await db.scalar(select(func.count()).select_from(Member)) == 5
    times = {m.member_no: (m.created_at, m.updated_at) for m in rows}
    assert times == {
        "1001": (now, later),
        "1002": (now, later),
        "1003": (now, later),
        "1004": (now, now),
        "1005": (later, later),
    }
    assert {m.member_no: m.id for m in rows if m.member_no in ids_before} == ids_before

    again = await import_bytes(store, second, later, name="second.csv")
    assert (again.created, again.updated, again.unchanged, again.units_created) == (0, 0, 4, ())
    assert [(e.action, e.target) for e in await admin_events(store)] == [
        ("roster_imported", "roster.csv"),
        ("roster_imported", "second.csv"),
        ("roster_imported", "second.csv"),
    ]


async def test_dry_run_reports_and_writes_nothing(store: Store, now: datetime) -> None:
    await import_bytes(store, csv_bytes(["1,A,X/Y,"]), now)
    data = csv_bytes(["1,A,X/Y,", "2,B,X/Z,"])
    report = await import_bytes(store, data, now, dry_run=True)
    assert (report.dry_run, report.created, report.unchanged) == (True, 1, 1)
    assert report.units_created == ("X/Z",)
    assert set(await stored_members(store)) == {"1"}
    assert len(await admin_events(store)) == 1


async def test_ten_thousand_rows(store: Store, now: datetime) -> None:
    data = csv_bytes(member_lines(10_000))
    report = await import_bytes(store, data, now)
    assert (report.rows, report.created) == (10_000, 10_000)
    assert len(report.units_created) == 3 + 12 + 60
    async with store.read() as db:
        assert await db.scalar(select(func.count()).select_from(Member)) == 10_000
        assert await db.scalar(select(func.count()).select_from(OrgUnit)) == 75
    # A second pass with 100 changed names updates exactly those.
    lines = member_lines(10_000)
    lines[::100] = [line.replace(",Member ", ",Renamed ") for line in lines[::100]]
    report = await import_bytes(store, csv_bytes(lines), now)
    assert (report.created, report.updated, report.unchanged) == (0, 100, 9_900)


async def test_xlsx_import_with_numeric_cells(store: Store, now: datetime) -> None:
    out = io.BytesIO()
    book = xlsxwriter.Workbook(out, {"in_memory": True})
    sheet = book.add_worksheet("people")
    for col, label in enumerate(["成员编号", "姓名", "单位", "电话"]):
        sheet.write_string(0, col, label)
    sheet.write_number(1, 0, 1001)  # typed as a number in Excel
    sheet.write_string(1, 1, "张三")
    sheet.write_string(1, 2, "北京/朝阳办公区/第2会议室")
    sheet.write_number(1, 3, 13800138000)
    sheet.write_number(3, 0, 1002.0)  # after an empty spreadsheet row
    sheet.write_string(3, 1, "Bob")
    sheet.write_string(3, 2, "Beijing")
    book.add_worksheet("ignored").write_string(0, 0, "not read")
    book.close()

    report = await import_bytes(store, out.getvalue(), now, name="roster.xlsx")
    assert (report.rows, report.created) == (2, 2)
    assert await stored_members(store) == {
        "1001": ("张三", "北京/朝阳办公区/第2会议室", "13800138000"),
        "1002": ("Bob", "Beijing", None),
    }
    events = await admin_events(store)
    assert events[0].detail["format"] == "xlsx"


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
async def test_export_then_import_is_unchanged(store: Store, now: datetime, fmt: str) -> None:
    data = csv_bytes(
        [
            "1001,张三,北京/朝阳办公区/第2会议室,13800138000",
            '1002,"Smith, John ""JJ""",Beijing/Room 1,+86 138 0013 8000',
            '1003,=HYPERLINK("http://x"),@Ops/-Team,',
            "1004,'=already quoted,Beijing/Room 1,",
            "1005,'plain apostrophe,Beijing/Room 1,",
            "007,-minus,+plus,",
        ]
    )
    await import_bytes(store, data, now)
    before = await stored_members(store)

    rows = await export_roster(store, now=now, actor="test", destination=f"out.{fmt}")
    exported = roster_to_csv(rows) if fmt == "csv" else roster_to_xlsx(rows)
    report = await import_bytes(store, exported, now, name=f"out.{fmt}")

    assert (report.rows, report.created, report.updated, report.unchanged) == (6, 0, 0, 6)
    assert await stored_members(store) == before
    assert before["1003"] == ('=HYPERLINK("http://x")', "@Ops/-Team", None)
    assert before["1004"] == ("=already quoted", "Beijing/Room 1", None)
    assert [e.action for e in await admin_events(store)] == [
        "roster_imported",
        "roster_exported",
        "roster_imported",
    ]


async def test_export_orders_by_unit_and_skips_inactive(store: Store, now: datetime) -> None:
    await import_bytes(store, csv_bytes(["3,C,B,", "2,B,A,", "1,A,B,", "4,D,A,"]), now)
    async with store.write() as db:
        member = await db.scalar(select(Member).where(Member.member_no == "4"))
        assert member is not None
        member.active = False
    rows = await export_roster(store, now=now, actor="test", destination="-")
    assert rows == [RosterRow("2", "B", "A"), RosterRow("1", "A", "B"), RosterRow("3", "C", "B")]
    events = await admin_events(store)
    assert (events[-1].action, events[-1].target, events[-1].detail) == (
        "roster_exported",
        "-",
        {"members": 3},
    )


# --- parsing and writing (pure) ---------------------------------------------------------------


def problems_of(data: bytes, **kwargs: Any) -> list[str]:
    with pytest.raises(RosterError) as info:
        parse_csv(data, **kwargs)
    return [str(p) for p in info.value.problems]


def test_duplicate_member_numbers_name_both_rows() -> None:
    data = csv_bytes(["1001,A,X,", "1002,B,X,", "", "1001,C,X,"])
    assert problems_of(data) == [
        "row 3 (line 5), column \"member_no\": member number '1001' already appears in "
        "row 1 (line 2)"
    ]


def test_header_problems_are_named() -> None:
    assert problems_of(b"member_no,name,email\n1,a,x\n") == [
        'line 1, column "email": unknown column; expected member_no, name, unit_path, phone '
        "(or 编号, 姓名, 单位, 电话; phone is optional)",
        'line 1, column "unit_path": required column is missing',
    ]
    assert problems_of("编号,姓名,单位,Member Number\n".encode()) == [
        'line 1, column "Member Number": duplicate column: means member_no, like column 1 ("编号")'
    ]
    assert problems_of(b"1001,Alice,Beijing\n") == [
        "line 1: the first line must be a header such as member_no,name,unit_path,phone or "
        "编号,姓名,单位,电话; found '1001,Alice,Beijing'"
    ]
    assert problems_of(b"\n\n") == [
        "the file is empty; its first line must be the header member_no,name,unit_path,phone"
    ]


def test_headers_are_case_insensitive_and_friendly() -> None:
    data = b"Member Number;NAME;Unit\r\nA-1;Alice;X/Y\r\n"
    assert parse_csv(data).rows == (RosterRow("A-1", "Alice", "X/Y"),)
    tabs = "会员编号\t名字\t所属单位\t联系电话\nB2\t王五\t广州\t(020) 8888-0000\n".encode()
    assert parse_csv(tabs).rows == (RosterRow("B2", "王五", "广州", "(020) 8888-0000"),)


def test_every_field_is_checked_and_all_problems_reported() -> None:
    data = csv_bytes(
        [
            ",Nobody,X,",
            "has space,A,X,",
            f"{'9' * 33},A,X,",
            f"1,{'n' * 101},X,",
            "2,A,X//Y,",
            "3,A,,",
            "4,A,X,not-a-phone",
            "5,A,X,12",
            '6,"two\nlines",X,',
            "7,A,X,,surplus",
        ]
    )
    assert problems_of(data) == [
        'row 1 (line 2), column "member_no": member number is empty',
        "row 2 (line 3), column \"member_no\": member number 'has space' contains a space or "
        "control character",
        'row 3 (line 4), column "member_no": member number is longer than 32 characters',
        'row 4 (line 5), column "name": name is longer than 100 characters',
        "row 5 (line 6), column \"unit_path\": unit path 'X//Y' has an empty segment "
        "(two '/' in a row?)",
        'row 6 (line 7), column "unit_path": unit path is empty',
        "row 7 (line 8), column \"phone\": phone 'not-a-phone' is not a phone number "
        "(digits, spaces, -, ( ), +)",
        "row 8 (line 9), column \"phone\": phone '12' is not a phone number "
        "(digits, spaces, -, ( ), +)",
        'row 9 (line 10), column "name": name contains a control character (line break or tab?)',
        "row 10 (line 12): value in column 5, which has no header",
    ]


def test_problems_are_capped() -> None:
    data = csv_bytes([f"{i},,X," for i in range(250)])
    with pytest.raises(RosterError) as info:
        parse_csv(data)
    assert (len(info.value.problems), info.value.total) == (MAX_PROBLEMS, 250)
    assert info.value.detail.splitlines()[0] == "roster rejected, 250 problems:"
    assert info.value.detail.splitlines()[-1] == "... and 150 more problems not shown"


def test_non_utf8_bytes_name_the_line_and_suggest_gb18030() -> None:
    data = "编号,姓名,单位\n1001,Alice,X\n1002,张三,北京\n".encode("gb18030")
    assert problems_of(data) == [
        "line 1: byte 0xb1 is not valid UTF-8 text; a file saved by Excel on a Chinese system is "
        "often GB18030: try --encoding gb18030"
    ]
    latin = b"member_no,name,unit_path\n1,Ana,X\n2,Jos\xe9,X\n"
    assert problems_of(latin)[0].startswith("line 3: byte 0xe9 is not valid UTF-8 text")
    assert parse_csv(data, encoding="gb18030").rows[1] == RosterRow("1002", "张三", "北京")
    with pytest.raises(InvalidInput, match="unknown text encoding"):
        parse_csv(data, encoding="klingon")


def test_malformed_inputs_are_refused() -> None:
    assert problems_of(b'member_no,name,unit_path\n1,"A"B,X\n') == [
        "line 2: malformed CSV: ',' expected after '\"'"
    ]
    with pytest.raises(InvalidInput, match="not a readable XLSX"):
        parse_xlsx(b"member_no,name\n")
    with pytest.raises(InvalidInput, match="XLSX workbook, not CSV"):
        parse_csv(roster_to_xlsx([]))
    with pytest.raises(InvalidInput, match=r"not a \.xls file"):
        roster_format("roster.xls")


def test_csv_export_defuses_formulas_and_keeps_excel_happy() -> None:
    rows = [
        RosterRow("1001", "=1+2", "北京/朝阳", "+8613800138000"),
        RosterRow("1002", "@SUM(A1)", "-Ops", None),
        RosterRow("1003", "'=x", "Plain, with comma", None),
    ]
    data = roster_to_csv(rows)
    assert data.startswith(b"\xef\xbb\xbfmember_no,name,unit_path,phone\r\n")
    assert data.decode("utf-8-sig").split("\r\n") == [
        "member_no,name,unit_path,phone",
        "1001,'=1+2,北京/朝阳,'+8613800138000",
        "1002,'@SUM(A1),'-Ops,",
        "1003,''=x,\"Plain, with comma\",",
        "",
    ]
    assert parse_csv(data).rows == tuple(rows)


def test_xlsx_export_writes_strings() -> None:
    rows = [RosterRow("007", "=1+2", "北京", "13800138000")]
    book = openpyxl.load_workbook(io.BytesIO(roster_to_xlsx(rows)))
    sheet = book.worksheets[0]
    cells = [[(c.value, c.data_type) for c in row] for row in sheet.iter_rows()]
    assert cells == [
        [("member_no", "s"), ("name", "s"), ("unit_path", "s"), ("phone", "s")],
        [("007", "s"), ("=1+2", "s"), ("北京", "s"), ("13800138000", "s")],
    ]
    assert parse_xlsx(roster_to_xlsx(rows)).rows == tuple(rows)


# --- the command line -------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", f"sqlite:///{tmp_path}/x.db", *args])


def members_in(tmp_path: Path) -> dict[str, tuple[str, str, str | None]]:
    async def go() -> dict[str, tuple[str, str, str | None]]:
        store = Store(f"sqlite:///{tmp_path}/x.db")
        try:
            await upgrade(store)
            return await stored_members(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_cli_import_and_export(tmp_path: Path) -> None:
    source = tmp_path / "名单.csv"
    source.write_bytes("编号,姓名,单位\n1001,张三,北京/朝阳\n1002,=cmd,北京/海淀\n".encode())

    dry = cli(tmp_path, "roster", "import", "--dry-run", str(source))
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[0] == (
        "dry run, nothing written: 名单.csv would give 2 rows: 2 created, 0 updated, "
        "0 unchanged; 3 new units"
    )
    assert members_in(tmp_path) == {}

    done = cli(tmp_path, "roster", "import", str(source), "--json")
    assert done.exit_code == 0, done.output
    assert '"created": 2' in done.stdout
    assert members_in(tmp_path) == {
        "1001": ("张三", "北京/朝阳", None),
        "1002": ("=cmd", "北京/海淀", None),
    }

    to_stdout = cli(tmp_path, "roster", "export", "-")
    assert to_stdout.exit_code == 0, to_stdout.output
    assert to_stdout.stdout_bytes.decode("utf-8-sig").splitlines() == [
        "member_no,name,unit_path,phone",
        "1001,张三,北京/朝阳,",
        "1002,'=cmd,北京/海淀,",
    ]
    assert to_stdout.stderr == "exported 2 members\n"

    target = tmp_path / "out.xlsx"
    exported = cli(tmp_path, "roster", "export", str(target))
    assert exported.exit_code == 0, exported.output
    assert exported.stdout == f"exported 2 members to {target}\n"
    again = cli(tmp_path, "roster", "import", str(target))
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0] == (
        "imported out.xlsx: 2 rows: 0 created, 0 updated, 2 unchanged; 0 new units"
    )


def test_cli_import_failure_prints_every_problem(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_bytes(b"member_no,name,unit_path\n1,A,X\n2,,X\n3,C,\n1,D,X\n")
    result = cli(tmp_path, "roster", "import", str(source))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: bad.csv: roster rejected, 3 problems:",
        'row 2 (line 3), column "name": name is empty',
        'row 3 (line 4), column "unit_path": unit path is empty',
        "row 4 (line 5), column \"member_no\": member number '1' already appears in row 1 (line 2)",
        "Nothing was imported.",
    ]
    assert members_in(tmp_path) == {}

    as_json = cli(tmp_path, "roster", "import", "--json", str(source))
    assert as_json.exit_code == 1
    assert '"error": "invalid_roster"' in as_json.stdout

    other = tmp_path / "roster.txt"
    other.write_text("x")
    wrong = cli(tmp_path, "roster", "import", str(other))
    assert wrong.exit_code == 1
    assert "roster.txt: a roster must be a .csv or .xlsx file, not a .txt file" in wrong.stderr

    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("编号,姓名,单位\n1,张三,北京\n".encode("gb18030"))
    refused = cli(tmp_path, "roster", "import", str(gbk))
    assert refused.exit_code == 1
    assert "try --encoding gb18030" in refused.stderr
    accepted = cli(tmp_path, "roster", "import", "--encoding", "gb18030", str(gbk))
    assert accepted.exit_code == 0, accepted.output
    assert members_in(tmp_path) == {"1": ("张三", "北京", None)}


def test_cli_export_refuses_unknown_format(tmp_path: Path) -> None:
    result = cli(tmp_path, "roster", "export", str(tmp_path / "out.txt"))
    assert result.exit_code == 2
    assert "or give --format" in result.stderr
    xlsx_out = cli(tmp_path, "roster", "export", "-", "--format", "xlsx")
    assert xlsx_out.exit_code == 2
    assert "XLSX cannot go to standard output" in xlsx_out.stderr

"""Report exports: CSV (UTF-8 with BOM, RFC 4180, formula-like cells defused) and XLSX.

Each export opens with header lines naming the report, its filter and when it was generated
(UTC ISO and readable), then one heading row in Chinese and English, then the rows. Pure: report
objects in, bytes out; logging the export (``report_exported``) is the caller's job.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import xlsxwriter

from attendance.clock import as_utc
from attendance.reports import MemberHistory, SessionReport, UnitFigures, VenueFigures

# The roster's CSV-injection guard; it is private there (see the issue note), reused, not copied.
from attendance.roster import defuse_cell

ExportFormat = Literal["csv", "xlsx"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "xlsx")
CONTENT_TYPES: dict[ExportFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


@dataclass(frozen=True)
class Column:
    key: str
    zh: str
    en: str
    width: int = 12

    @property
    def heading(self) -> str:
        return f"{self.zh} / {self.en}"


MEMBER_COLUMNS = (
    Column("member_no", "工号", "Member no.", 12),
    Column("name", "姓名", "Name", 14),
    Column("unit", "单位", "Unit", 30),
    Column("expected", "应到", "Expected", 8),
    Column("mode", "方式", "Mode", 10),
    Column("venue", "会场", "Venue", 12),
    Column("first_join", "首次加入", "First join", 26),
    Column("last_leave", "最后离开", "Last leave", 26),
    Column("watched_min", "观看分钟", "Watched min", 10),
    Column("share", "直播占比", "Share of live", 10),
    Column("presence_passed", "在场确认通过", "Presence passed", 10),
    Column("presence_total", "在场确认总数", "Presence total", 10),
    Column("quiz_points", "答题得分", "Quiz points", 10),
    Column("notes", "学习笔记", "Notes", 10),
    Column("qualified", "合格", "Qualified", 8),
    Column("reason", "原因", "Reason", 50),
    Column("makeup_minutes", "补看(分钟)", "Make-up minutes", 10),
    Column("makeup_share", "补看占比", "Make-up share", 10),
    Column("makeup_qualified", "补看合格", "Make-up qualified", 10),
)
UNIT_COLUMNS = (
    Column("unit", "单位", "Unit", 30),
    Column("depth", "层级", "Level", 6),
    Column("expected", "应到", "Expected", 8),
    Column("present", "实到", "Present", 8),
    Column("guests", "非应到出席", "Guests", 8),
    Column("qualified", "合格", "Qualified", 8),
    Column("rate", "合格率", "Rate", 8),
)
VENUE_COLUMNS = (
    Column("venue", "会场", "Venue", 12),
    Column("name", "名称", "Name", 20),
    Column("uptime_s", "屏幕在线秒", "Screen uptime s", 12),
    Column("live_s", "直播秒", "Live s", 10),
    Column("uptime_share", "在线占比", "Uptime share", 10),
    Column("checkins", "签到人数", "Check-ins", 8),
    Column("onsite", "现场人数", "On-site members", 8),
)
HISTORY_COLUMNS = (
    Column("session_id", "场次", "Session", 8),
    Column("title", "标题", "Title", 24),
    Column("scheduled_start", "计划开始", "Scheduled start", 26),
    Column("state", "状态", "State", 8),
    Column("final", "已结算", "Final", 8),
    Column("mode", "方式", "Mode", 10),
    Column("venue", "会场", "Venue", 12),
    Column("watched_min", "观看分钟", "Watched min", 10),
    Column("share", "直播占比", "Share of live", 10),
    Column("presence_passed", "在场确认通过", "Presence passed", 10),
    Column("presence_total", "在场确认总数", "Presence total", 10),
    Column("quiz_points", "答题得分", "Quiz points", 10),
    Column("notes", "学习笔记", "Notes", 10),
    Column("qualified", "合格", "Qualified", 8),
    Column("reason", "原因", "Reason", 50),
    Column("makeup_minutes", "补看(分钟)", "Make-up minutes", 10),
    Column("makeup_share", "补看占比", "Make-up share", 10),
    Column("makeup_qualified", "补看合格", "Make-up qualified", 10),
    Column("points", "积分", "Points", 8),
)


@dataclass(frozen=True)
class ExportTable:
    """A report ready to write: what it is, its filter, when, its columns and JSON rows."""

    kind: str  # members | units | venues | history
    title: str
    key: str  # what the report is about, for file names: "session-3", "member-M1"
    subject: str  # the same for people: the session's title, the member's name
    filter: dict[str, Any]
    generated_at: datetime
    columns: Sequence[Column]
    rows: Sequence[dict[str, Any]]

    def header_lines(self) -> list[list[str]]:
        at = as_utc(self.generated_at)
        described = "; ".join(f"{k}={_text(v)}" for k, v in self.filter.items()) or "全部 / all"
        return [
            ["报告 / Report", self.title],
            ["筛选 / Filter", described],
            ["生成时间 / Generated (UTC)", at.isoformat(), at.strftime("%Y-%m-%d %H:%M:%S UTC")],
        ]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def members_table(report: SessionReport) -> ExportTable:
    return _table(
        "members",
        f"会议出勤 / Session attendance: {report.title} (#{report.session_id})",
        report,
        MEMBER_COLUMNS,
        [r.as_json() for r in report.rows],
    )


def units_table(report: SessionReport, units: Sequence[UnitFigures]) -> ExportTable:
    return _table(
        "units",
        f"单位汇总 / Units roll-up: {report.title} (#{report.session_id})",
        report,
        UNIT_COLUMNS,
        [u.as_json() for u in units],
    )


def venues_table(report: SessionReport, venues: Sequence[VenueFigures]) -> ExportTable:
    return _table(
        "venues",
        f"会场汇总 / Venues roll-up: {report.title} (#{report.session_id})",
        report,
        VENUE_COLUMNS,
        [v.as_json() for v in venues],
    )


def history_table(history: MemberHistory) -> ExportTable:
    return ExportTable(
        kind="history",
        title=(
            f"成员记录 / Member history: {history.member_no} {history.name} ({history.unit}); "
            f"积分合计 / total points {history.total_points}"
        ),
        key=f"member-{history.member_no}",
        subject=f"{history.member_no}-{history.name}",
        filter={"member_no": history.member_no},
        generated_at=history.generated_at,
        columns=HISTORY_COLUMNS,
        rows=[s.as_json() for s in history.sessions],
    )


def _table(
    kind: str,
    title: str,
    report: SessionReport,
    columns: Sequence[Column],
    rows: list[dict[str, Any]],
) -> ExportTable:
    return ExportTable(
        kind=kind,
        title=title,
        key=f"session-{report.session_id}",
        subject=report.title,
        filter={"session": report.session_id, **report.filter.as_json()},
        generated_at=report.generated_at,
        columns=columns,
        rows=rows,
    )


_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9_.-]+")
# Characters no file system or browser accepts in a name, and controls.
_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def export_filename(table: ExportTable, fmt: ExportFormat) -> str:
    """An ASCII file name, e.g. ``studycast-session-3-members-20261124T080000Z.csv``."""
    stamp = as_utc(table.generated_at).strftime("%Y%m%dT%H%M%SZ")
    key = _UNSAFE_ASCII.sub("_", table.key)
    return f"studycast-{key}-{table.kind}-{stamp}.{fmt}"


def export_display_name(table: ExportTable, fmt: ExportFormat) -> str:
    """A Unicode file name with the session's title or the member's name, for RFC 5987's
    ``filename*``, e.g. ``学习会-members-20261124T080000Z.csv``."""
    stamp = as_utc(table.generated_at).strftime("%Y%m%dT%H%M%SZ")
    subject = _UNSAFE_NAME.sub("_", table.subject).strip(" .")[:80] or table.key
    return f"{subject}-{table.kind}-{stamp}.{fmt}"


def to_csv(table: ExportTable) -> bytes:
    """RFC 4180 (CRLF, quoted as needed), UTF-8 with a BOM so Excel reads Chinese right."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    for line in table.header_lines():
        writer.writerow([defuse_cell(cell) for cell in line])
    writer.writerow([])
    writer.writerow([c.heading for c in table.columns])
    for row in table.rows:
        writer.writerow([_csv_cell(row.get(c.key)) for c in table.columns])
    return out.getvalue().encode("utf-8-sig")


def _csv_cell(value: Any) -> str:
    # Numbers stay as written (a negative number is no formula); text is defused.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return defuse_cell(_text(value))


def to_xlsx(table: ExportTable) -> bytes:
    """One sheet; text is always written as text (never a formula, number or link)."""
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
    sheet = workbook.add_worksheet(table.kind)
    bold = workbook.add_format({"bold": True})
    line = 0
    for line, cells in enumerate(table.header_lines()):
        for col, cell in enumerate(cells):
            sheet.write_string(line, col, cell, bold if col == 0 else None)
    first = line + 2
    for col, column in enumerate(table.columns):
        sheet.write_string(first, col, column.heading, bold)
        sheet.set_column(col, col, column.width)
    write: Callable[[int, int, Any], None] = _xlsx_writer(sheet)
    for n, row in enumerate(table.rows, start=first + 1):
        for col, column in enumerate(table.columns):
            write(n, col, row.get(column.key))
    sheet.freeze_panes(first + 1, 0)
    workbook.close()
    return out.getvalue()


def _xlsx_writer(sheet: Any) -> Callable[[int, int, Any], None]:
    def write(row: int, col: int, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            sheet.write_number(row, col, value)
        else:
            sheet.write_string(row, col, _text(value))

    return write


def export(table: ExportTable, fmt: ExportFormat) -> bytes:
    return to_csv(table) if fmt == "csv" else to_xlsx(table)

"""Quiz banks as CSV, pure: a header row with English or Chinese column names, one question per
row, validated whole (every problem named by its CSV line). JSON banks and the question rules
are in ``attendance.quiz``."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator, Mapping
from typing import Any

from attendance.errors import InvalidInput
from attendance.quiz import (
    LETTERS,
    MAX_BANK,
    WHOLE_NUMBER,
    BankError,
    QuestionDraft,
    check_bank_size,
    parse_question,
    word_key,
)


def _header_key(text: str) -> str:
    return " ".join(re.split(r"[\s_\-./]+", word_key(text).strip("\ufeff"))).strip()


# Header spellings by field, compared after _header_key().
HEADER_ALIASES: Mapping[str, tuple[str, ...]] = {
    "prompt": ("prompt", "question", "题目", "题干", "问题"),
    "kind": ("kind", "type", "类型", "题型"),
    **{
        f"choice_{letter.lower()}": (
            f"choice_{letter}",
            f"option_{letter}",
            letter,
            f"选项{letter}",
            f"选项 {letter}",
        )
        for letter in LETTERS
    },
    "correct": ("correct", "answer", "答案", "正确答案"),
    "points": ("points", "score", "分值", "分数"),
    "time_limit_s": ("time_limit_s", "time_limit", "时限", "时限(秒)", "限时", "时间限制"),
}
REQUIRED_COLUMNS = ("prompt", "kind", "correct")
_FIELD_BY_HEADER = {_header_key(a): f for f, aliases in HEADER_ALIASES.items() for a in aliases}

KIND_ALIASES: Mapping[str, tuple[str, ...]] = {
    "single": ("single", "单选", "单选题"),
    "multiple": ("multiple", "多选", "多选题"),
    "true_false": ("true_false", "true/false", "判断", "判断题"),
}
_KIND_BY_WORD = {_header_key(a): k for k, aliases in KIND_ALIASES.items() for a in aliases}

_CSV_EXAMPLE = "prompt,kind,choice_a,choice_b,...,correct or 题目,类型,选项A,选项B,...,答案"


def parse_bank_csv(data: bytes, encoding: str | None = None) -> list[QuestionDraft]:
    """Validate a bank as CSV with a header row; all or nothing, problems name the line.

    The text is UTF-8 (with or without BOM) unless ``encoding`` names another, such as gb18030
    for a file saved by Excel on a Chinese system.
    """
    if data.startswith(b"PK\x03\x04"):
        raise InvalidInput("this file is an XLSX workbook, not CSV; save it as CSV (UTF-8)")
    text = _decode(data, encoding).removeprefix("\ufeff")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
    records = (r for r in _csv_records(text, delimiter) if any(c.strip() for c in r[1]))

    header = next(records, None)
    if header is None:
        raise BankError(
            [f"the file is empty; its first line must be a header such as {_CSV_EXAMPLE}"]
        )
    columns, labels = _read_header(*header)

    rows: list[tuple[int, list[str]]] = []
    for record in records:
        rows.append(record)
        if len(rows) > MAX_BANK:
            break
    check_bank_size(len(rows), "the file")

    drafts: list[QuestionDraft] = []
    problems: list[str] = []
    for line, cells in rows:
        try:
            drafts.append(_read_row(columns, len(labels), cells))
        except InvalidInput as exc:
            problems.append(f"line {line}: {exc.detail}")
    if problems:
        raise BankError(problems)
    return drafts


def _decode(data: bytes, encoding: str | None) -> str:
    name = encoding or "utf-8-sig"
    try:
        codec = codecs.lookup(name).name
    except LookupError as exc:
        raise InvalidInput(f"unknown text encoding {name!r}") from exc
    try:
        return data.decode(name)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        utf8 = codec in ("utf-8", "utf-8-sig")
        hint = (
            "; a file saved by Excel on a Chinese system is often GB18030: try encoding gb18030"
            if utf8
            else ""
        )
        where = "UTF-8" if utf8 else name
        problem = f"line {line}: byte 0x{data[exc.start]:02x} is not valid {where} text{hint}"
        raise BankError([problem]) from exc


def _csv_records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, cells)`` per CSV record; a quoted cell may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise BankError([f"line {reader.line_num}: malformed CSV: {exc}"]) from exc
        yield start, cells


def _read_header(line: int, cells: list[str]) -> tuple[dict[str, int], list[str]]:
    labels = [c.strip() for c in cells]
    fields = [_FIELD_BY_HEADER.get(_header_key(label)) for label in labels]
    where = f"line {line} (header)"
    if not any(fields):
        found = ",".join(labels)[:80]
        raise BankError(
            [f"{where}: the first line must be a header such as {_CSV_EXAMPLE}; found {found!r}"]
        )
    problems: list[str] = []
    columns: dict[str, int] = {}
    unknown: list[str] = []
    for index, (label, field) in enumerate(zip(labels, fields, strict=True)):
        if not label:
            continue  # an unnamed column: its cells must stay empty (checked per row)
        if field is None:
            unknown.append(label)
        elif field in columns:
            first = labels[columns[field]]
            problems.append(f"{where}: columns {first!r} and {label!r} both mean {field}")
        else:
            columns[field] = index
    if unknown:
        expected = (
            "prompt, kind, choice_a to choice_h, correct, points, time_limit_s "
            "(or 题目, 类型, 选项A to 选项H, 答案, 分值, 时限)"
        )
        names = ", ".join(map(repr, unknown))
        problems.append(f"{where}: unknown column {names}; expected {expected}")
    missing = [f for f in REQUIRED_COLUMNS if f not in columns]
    if missing:
        problems.append(f"{where}: required column missing: {', '.join(missing)}")
    if problems:
        raise BankError(problems)
    return columns, labels


def _read_row(columns: Mapping[str, int], width: int, cells: list[str]) -> QuestionDraft:
    """One CSV record as a question; raises ``InvalidInput`` listing its problems."""

    def value(field: str) -> str:
        index = columns.get(field)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    problems: list[str] = []
    used = set(columns.values())
    extra = [i for i, c in enumerate(cells) if c.strip() and i not in used]
    if extra:
        problems.append(f"value in column {extra[0] + 1}, which has no header")

    raw: dict[str, Any] = {"prompt": value("prompt"), "correct": value("correct")}
    kind_text = value("kind")
    kind = _KIND_BY_WORD.get(_header_key(kind_text))
    if kind is None:
        problems.append(
            f"kind: {kind_text!r} is not a question type; use single, multiple or true_false "
            "(or 单选, 多选, 判断)"
        )
    raw["kind"] = kind

    choices = [value(f"choice_{letter.lower()}") for letter in LETTERS]
    while choices and not choices[-1]:
        choices.pop()
    if choices:
        raw["choices"] = choices
    for field in ("points", "time_limit_s"):
        text = value(field)
        if not text:
            continue
        if WHOLE_NUMBER.fullmatch(text):
            raw[field] = int(text)
        else:
            problems.append(f"{field}: {text!r} is not a whole number")

    draft: QuestionDraft | None = None
    if kind is not None:  # without a kind, choices and answer key cannot be judged
        try:
            draft = parse_question(raw)
        except InvalidInput as exc:
            problems.append(exc.detail)
    if draft is None or problems:
        raise InvalidInput("; ".join(problems))
    return draft

"""Quiz questions, answers, scores and leaderboards, with no I/O and no clock.

Question banks come in as JSON or CSV and are validated whole: one bad question rejects the bank,
with every problem listed by question number or CSV line. A member's answer is normalised to a
set of choice indexes; the live quiz then scores it with the times it recorded, counts answers
per choice and ranks members, venues and units with the functions here.

Scoring rule
------------
An answer is correct only if the set of choices it picks equals the set of correct choices
exactly; there is no partial credit for multiple choice. A correct answer earns the question's
points plus a speed bonus of up to half the points::

    bonus = floor(points × 0.5 × remaining / window)

where ``window = closes_at − opened_at`` and ``remaining = closes_at − answered_at``, clamped to
``[0, window]``. An answer given the moment the question opens earns the whole half; one given at
or after the close earns no bonus; if the window is zero or negative the bonus is 0. A wrong
answer earns 0 points. (Times are counted in whole microseconds, so the floor is exact.)
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from attendance.errors import InvalidInput, invalid_input

KINDS = ("single", "multiple", "true_false")
MAX_CHOICES = 8
MAX_PROMPT = 2000
MAX_CHOICE_LEN = 500
MAX_BANK = 500
DEFAULT_POINTS = 10
MAX_POINTS = 1000
DEFAULT_TIME_LIMIT_S = 30
MIN_TIME_LIMIT_S = 5
MAX_TIME_LIMIT_S = 3600
MAX_SHOWN_PROBLEMS = 20
TRUE_FALSE_CHOICES = ("对 / True", "错 / False")

LETTERS = "ABCDEFGH"[:MAX_CHOICES]  # choice letters, index 0 = A

# Words meaning true (index 0) or false (index 1), compared after word_key().
_TRUE_WORDS = frozenset({"true", "对", "正确", "√", "✓"})
_FALSE_WORDS = frozenset({"false", "错", "错误", "×", "✗"})
# Between choice letters in "A,C", "A C", "A、C", "A，C" (NFKC makes ， a comma).
_LETTER_SEPARATORS = re.compile(r"[\s,;、]+")
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,20}")


@dataclass(frozen=True)
class QuestionDraft:
    """One validated question; ``correct`` holds choice indexes (0 = A)."""

    prompt: str
    kind: str
    choices: tuple[str, ...]
    correct: frozenset[int]
    points: int = DEFAULT_POINTS
    time_limit_s: int = DEFAULT_TIME_LIMIT_S


def word_key(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().casefold()


def _truth(text: str) -> int | None:
    """The choice index a true/false word stands for (0 true, 1 false), or None."""
    word = word_key(text)
    if word in _TRUE_WORDS:
        return 0
    if word in _FALSE_WORDS:
        return 1
    return None


def _label(index: int) -> str:
    if 0 <= index < len(LETTERS):
        return f"{LETTERS[index]} (index {index})"
    return f"index {index}"


def _letters(text: str) -> list[int]:
    """Choice indexes from letters such as "A", "A,C", "AC" or "a、c"."""
    cleaned = _LETTER_SEPARATORS.sub("", unicodedata.normalize("NFKC", text)).upper()
    if not cleaned:
        raise ValueError('is empty; give the correct choice letters, like "A" or "A,C"')
    if any(c not in LETTERS for c in cleaned):
        raise ValueError(
            f'{text!r} is neither choice letters A to H (like "A" or "A,C") nor true/false'
        )
    return [LETTERS.index(c) for c in cleaned]


def _choice_set(
    indexes: Sequence[int], count: int | None, *, exactly_one: bool, one: str, some: str
) -> frozenset[int]:
    """``indexes`` as a set after checking repeats, range and how many there are."""
    seen: set[int] = set()
    for index in indexes:
        if index in seen:
            raise ValueError(f"lists {_label(index)} twice")
        if count is not None and not 0 <= index < count:
            last = count - 1
            raise ValueError(
                f"{_label(index)} is not a choice: the question has {count} choices "
                f"(A to {LETTERS[last]}, indexes 0 to {last})"
            )
        seen.add(index)
    if exactly_one and len(seen) != 1:
        raise ValueError(f"{one}, not {len(seen)}")
    if not seen:
        raise ValueError(some)
    return frozenset(seen)


def _correct_set(kind: str | None, count: int | None, raw: Any) -> frozenset[int]:
    """The correct choices from a list of indexes, letters or (true_false) a truth value."""
    true_false = kind == "true_false"
    only_tf = 'true/false is only for true_false questions; give choice letters like "A"'
    if isinstance(raw, bool):
        if not true_false:
            raise ValueError(only_tf)
        indexes = [0 if raw else 1]
    elif isinstance(raw, int):
        if not true_false:
            raise ValueError(f'give a list of choice indexes like [{raw}] or letters like "A"')
        if raw not in (0, 1):
            raise ValueError(f"{raw} is neither 0 (true, 对) nor 1 (false, 错)")
        indexes = [raw]
    elif isinstance(raw, str):
        truth = _truth(raw)
        if truth is not None and not true_false and kind is not None:
            raise ValueError(only_tf)
        indexes = [truth] if truth is not None else _letters(raw)
    elif isinstance(raw, list):
        if len(raw) > MAX_CHOICES:
            raise ValueError(f"lists {len(raw)} choices; a question has at most {MAX_CHOICES}")
        indexes = []
        for item in raw:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"{item!r} is not a choice index (0 = A); like [0, 2]")
            indexes.append(item)
    else:
        raise ValueError('must be a list of choice indexes like [0, 2] or letters like "A,C"')
    return _choice_set(
        indexes,
        count,
        exactly_one=kind in ("single", "true_false"),
        one=f"a {kind} question has exactly one correct choice",
        some="a question needs at least one correct choice",
    )


class _Question(BaseModel):
    """One question as JSON-like data; the validators name the field that is wrong."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: StrictStr
    kind: Literal["single", "multiple", "true_false"]
    choices: list[StrictStr] | None = Field(None, validate_default=True)
    correct: frozenset[int]
    points: int = Field(DEFAULT_POINTS, ge=0, le=MAX_POINTS)
    time_limit_s: int = Field(DEFAULT_TIME_LIMIT_S, ge=MIN_TIME_LIMIT_S, le=MAX_TIME_LIMIT_S)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the question text is empty")
        if len(value) > MAX_PROMPT:
            raise ValueError(f"the question text is longer than {MAX_PROMPT} characters")
        return value

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[str] | None, info: ValidationInfo) -> list[str]:
        kind = info.data.get("kind")
        if kind == "true_false":
            if value is None:
                return list(TRUE_FALSE_CHOICES)
            if len(value) != 2:
                raise ValueError(
                    f"a true_false question has 2 choices (true, then false), not {len(value)};"
                    " or leave choices out"
                )
        elif value is None or not 2 <= len(value) <= MAX_CHOICES:
            what = f"a {kind} question" if kind else "a question"
            given = "none" if value is None else str(len(value))
            raise ValueError(f"{what} needs 2 to {MAX_CHOICES} choices, not {given}")
        problems: list[str] = []
        cleaned: list[str] = []
        first: dict[str, int] = {}
        for index, text in enumerate(value):
            text = text.strip()
            letter = LETTERS[index]
            if not text:
                problems.append(f"choice {letter} is empty")
            elif len(text) > MAX_CHOICE_LEN:
                problems.append(f"choice {letter} is longer than {MAX_CHOICE_LEN} characters")
            elif text in first:
                problems.append(f"choice {letter} repeats choice {LETTERS[first[text]]}")
            else:
                first[text] = index
            cleaned.append(text)
        if kind == "true_false" and (_truth(cleaned[0]) == 1 or _truth(cleaned[1]) == 0):
            problems.append("choice A must be the true one (对) and choice B the false one (错)")
        if problems:
            raise ValueError("; ".join(problems))
        return cleaned

    @field_validator("correct", mode="before")
    @classmethod
    def _correct(cls, raw: Any, info: ValidationInfo) -> frozenset[int]:
        # Without a valid kind or choices, only the form of the answer key can be checked.
        choices = info.data.get("choices")
        return _correct_set(info.data.get("kind"), None if choices is None else len(choices), raw)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parse_question(raw: Any) -> QuestionDraft:
    """Validate one question given as JSON-like data; the error names every bad field."""
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"a question must be an object with prompt, kind, choices and correct, "
            f"not {_json_type(raw)}"
        )
    try:
        q = _Question.model_validate(raw)
    except ValidationError as exc:
        raise invalid_input(exc) from exc
    choices = tuple(q.choices or ())
    return QuestionDraft(q.prompt, q.kind, choices, q.correct, q.points, q.time_limit_s)


# --- question banks ---------------------------------------------------------------------------


class BankError(InvalidInput):
    """A question bank was rejected; ``problems`` lists every problem, the detail the first 20."""

    code = "invalid_question_bank"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = self.problems[:MAX_SHOWN_PROBLEMS]
        if len(self.problems) > MAX_SHOWN_PROBLEMS:
            lines.append(f"... and {len(self.problems) - MAX_SHOWN_PROBLEMS} more")
        plural = "problem" if len(self.problems) == 1 else "problems"
        head = f"question bank rejected, {len(self.problems)} {plural}:"
        super().__init__("\n".join([head, *lines]))


def check_bank_size(count: int, where: str) -> None:
    if count == 0:
        raise BankError([f"{where} has no questions"])
    if count > MAX_BANK:
        raise BankError([f"{where} has more than {MAX_BANK} questions; split it into banks"])


def parse_bank_json(data: bytes | str) -> list[QuestionDraft]:
    """Validate a bank given as ``{"questions": [...]}`` or a bare list; all or nothing.

    Problems name the question by its place in the list, counted from 1.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            at = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
            raise BankError([f"{at} is not valid UTF-8 text (JSON must be UTF-8)"]) from exc
    try:
        document = json.loads(data.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise BankError([f"line {exc.lineno} column {exc.colno}: not JSON: {exc.msg}"]) from exc
    except RecursionError as exc:
        raise BankError(["the JSON is nested too deeply"]) from exc

    shape = 'the bank must be {"questions": [...]} or a list of questions'
    if isinstance(document, dict):
        unknown = sorted(k for k in document if k != "questions")
        if unknown:
            raise BankError([f"unknown key {', '.join(map(repr, unknown))}; {shape}"])
        if "questions" not in document:
            raise BankError([f'the key "questions" is missing; {shape}'])
        document = document["questions"]
        if not isinstance(document, list):
            raise BankError([f'"questions" must be a list, not {_json_type(document)}'])
    elif not isinstance(document, list):
        raise BankError([f"{shape}, not {_json_type(document)}"])
    check_bank_size(len(document), "the bank")

    drafts: list[QuestionDraft] = []
    problems: list[str] = []
    for number, raw in enumerate(document, start=1):
        try:
            drafts.append(parse_question(raw))
        except InvalidInput as exc:
            problems.append(f"question {number}: {exc.detail}")
    if problems:
        raise BankError(problems)
    return drafts


# --- answers, scores, counts, ranks -----------------------------------------------------------


def normalise_answer(kind: str, choice_count: int, raw: Any) -> frozenset[int]:
    """The choice indexes a member picked, from a JSON list of indexes (true_false: or a bool).

    Strict on purpose: a bool is not an index (except as true/false for true_false), a repeat or
    an index out of range is refused, never silently dropped.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown question kind {kind!r}")
    if not 2 <= choice_count <= MAX_CHOICES:
        raise ValueError(f"a question has 2 to {MAX_CHOICES} choices, not {choice_count}")
    true_false = kind == "true_false"
    shape = "a list of choice indexes like [0]" + (" or true/false" if true_false else "")
    if true_false and isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        raise InvalidInput(f"answer: must be {shape}, not {_json_type(raw)}")
    if len(raw) > choice_count:
        raise InvalidInput(f"answer: picks {len(raw)} choices; the question has {choice_count}")
    indexes: list[int] = []
    for item in raw:
        if true_false and isinstance(item, bool):
            indexes.append(0 if item else 1)
        elif isinstance(item, int) and not isinstance(item, bool):
            indexes.append(item)
        else:
            raise InvalidInput(f"answer: {item!r} is not a choice index; must be {shape}")
    try:
        return _choice_set(
            indexes,
            choice_count,
            exactly_one=kind != "multiple",
            one="pick exactly one choice",
            some="pick at least one choice",
        )
    except ValueError as exc:
        raise InvalidInput(f"answer: {exc}") from exc


@dataclass(frozen=True)
class Score:
    """What one answer earned: ``points`` is base plus ``speed_bonus``, 0 when wrong."""

    correct: bool
    points: int
    speed_bonus: int


def _microseconds(span: timedelta) -> int:
    return span // timedelta(microseconds=1)


def score(
    *,
    correct: frozenset[int],
    points: int,
    answer: frozenset[int],
    opened_at: datetime,
    closes_at: datetime,
    answered_at: datetime,
) -> Score:
    """Score one answer by the published rule (module docstring): exact set, speed bonus."""
    if answer != correct:
        return Score(correct=False, points=0, speed_bonus=0)
    window = _microseconds(closes_at - opened_at)
    bonus = 0
    if window > 0:
        remaining = min(max(_microseconds(closes_at - answered_at), 0), window)
        bonus = points * remaining // (2 * window)  # = floor(points * 0.5 * remaining / window)
    return Score(correct=True, points=points + bonus, speed_bonus=bonus)


def distribution(choice_count: int, answers: Iterable[frozenset[int]]) -> list[int]:
    """How many answers picked each choice (a multiple-choice answer counts for each pick)."""
    counts = [0] * choice_count
    for answer in answers:
        for index in answer:
            if not 0 <= index < choice_count:
                raise ValueError(f"choice index {index} out of range for {choice_count} choices")
            counts[index] += 1
    return counts


@dataclass(frozen=True)
class RankedEntry:
    """One line of a leaderboard; equal points share a rank."""

    key: str
    name: str
    points: int
    rank: int


def rank(totals: Mapping[str, tuple[str, int]]) -> list[RankedEntry]:
    """A leaderboard from ``key -> (name, points)``: most points first, then by name and key;
    competition ranking, so two at the top are both 1 and the next is 3."""
    ordered = sorted(totals.items(), key=lambda item: (-item[1][1], item[1][0], item[0]))
    entries: list[RankedEntry] = []
    for position, (key, (name, points)) in enumerate(ordered, start=1):
        place = entries[-1].rank if entries and entries[-1].points == points else position
        entries.append(RankedEntry(key=key, name=name, points=points, rank=place))
    return entries

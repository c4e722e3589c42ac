"""Quiz logic without I/O: question banks from JSON and CSV, answers, scores, counts and ranks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from attendance.errors import InvalidInput
from attendance.quiz import (
    DEFAULT_POINTS,
    DEFAULT_TIME_LIMIT_S,
    KINDS,
    MAX_BANK,
    MAX_CHOICES,
    TRUE_FALSE_CHOICES,
    BankError,
    QuestionDraft,
    RankedEntry,
    Score,
    distribution,
    normalise_answer,
    parse_bank_json,
    parse_question,
    rank,
    score,
)
from attendance.quiz_csv import parse_bank_csv

OPEN = datetime(2025, 3, 1, 9, 0, 0, tzinfo=UTC)
CLOSE = OPEN + timedelta(seconds=30)


def q(**fields: Any) -> dict[str, Any]:
    """A valid single-choice question, with ``fields`` replacing or adding keys."""
    base = {"prompt": "2 + 2 = ?", "kind": "single", "choices": ["3", "4", "5"], "correct": [1]}
    return base | fields


def refusal(raw: Any) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_question(raw)
    assert info.type is InvalidInput
    return info.value.detail


def bank_problems(
    data: bytes | str, *, csv: bool = False, encoding: str | None = None
) -> list[str]:
    with pytest.raises(BankError) as info:
        if csv:
            assert isinstance(data, bytes)
            parse_bank_csv(data, encoding)
        else:
            parse_bank_json(data)
    assert info.value.code == "invalid_question_bank"
    return info.value.problems


# --- one question -----------------------------------------------------------------------------


def test_each_kind_parses() -> None:
    assert KINDS == ("single", "multiple", "true_false")
    assert parse_question(q(prompt="  2 + 2 = ?\n", choices=[" 3", "4 ", "5"])) == QuestionDraft(
        "2 + 2 = ?", "single", ("3", "4", "5"), frozenset({1}), DEFAULT_POINTS, DEFAULT_TIME_LIMIT_S
    )
    multiple = {
        "prompt": "Even numbers?",
        "kind": "multiple",
        "choices": ["2", "3", "4", "6"],
        "correct": [0, 2, 3],
        "points": 0,
        "time_limit_s": 3600,
    }
    assert parse_question(multiple) == QuestionDraft(
        "Even numbers?", "multiple", ("2", "3", "4", "6"), frozenset({0, 2, 3}), 0, 3600
    )
    true_false = {"prompt": "天是蓝的", "kind": "true_false", "correct": True, "points": 1000}
    assert parse_question(true_false) == QuestionDraft(
        "天是蓝的", "true_false", TRUE_FALSE_CHOICES, frozenset({0}), 1000, 30
    )
    assert TRUE_FALSE_CHOICES == ("对 / True", "错 / False")
    labelled = true_false | {"choices": ["正确", "错误"], "correct": "错", "time_limit_s": 5}
    assert parse_question(labelled) == QuestionDraft(
        "天是蓝的", "true_false", ("正确", "错误"), frozenset({1}), 1000, 5
    )


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("single", "A", {0}),
        ("single", " c ", {2}),
        ("single", "Ｂ", {1}),  # full-width letter from a Chinese input method
        ("single", [3], {3}),
        ("multiple", "A,C", {0, 2}),
        ("multiple", "AC", {0, 2}),
        ("multiple", "a, c; d", {0, 2, 3}),
        ("multiple", "A、C", {0, 2}),
        ("multiple", "A，C", {0, 2}),
        ("multiple", [3, 0], {0, 3}),
        ("true_false", True, {0}),
        ("true_false", False, {1}),
        ("true_false", "true", {0}),
        ("true_false", "FALSE", {1}),
        ("true_false", "对", {0}),
        ("true_false", "错", {1}),
        ("true_false", "√", {0}),
        ("true_false", "×", {1}),
        ("true_false", 0, {0}),
        ("true_false", 1, {1}),
        ("true_false", [1], {1}),
        ("true_false", "B", {1}),
    ],
)
def test_answer_key_forms(kind: str, raw: Any, expected: set[int]) -> None:
    choices = None if kind == "true_false" else ["a", "b", "c", "d"]
    draft = parse_question({"prompt": "P", "kind": kind, "choices": choices, "correct": raw})
    assert draft.correct == frozenset(expected)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (q(prompt="   "), "prompt: the question text is empty"),
        (q(prompt="x" * 2001), "prompt: the question text is longer than 2000 characters"),
        (q(prompt=7), "prompt: Input should be a valid string"),
        (q(kind="单选"), "kind: Input should be 'single', 'multiple' or 'true_false'"),
        (q(choices=None), "choices: a single question needs 2 to 8 choices, not none"),
        (
            q(choices=["only"], correct=[0]),
            "choices: a single question needs 2 to 8 choices, not 1",
        ),
        (
            q(kind="multiple", choices=list("abcdefghi"), correct=[0]),
            "choices: a multiple question needs 2 to 8 choices, not 9",
        ),
        (q(choices=["3", " ", "4", "3"]), "choices: choice B is empty; choice D repeats choice A"),
        (q(choices=["3", "x" * 501]), "choices: choice B is longer than 500 characters"),
        (q(choices=["3", 4]), "choices.1: Input should be a valid string"),
        (q(choices="3,4"), "choices: Input should be a valid list"),
        (
            q(correct=[3]),
            "correct: D (index 3) is not a choice: the question has 3 choices "
            "(A to C, indexes 0 to 2)",
        ),
        (
            q(correct="D"),
            "correct: D (index 3) is not a choice: the question has 3 choices "
            "(A to C, indexes 0 to 2)",
        ),
        (
            q(correct=[-1]),
            "correct: index -1 is not a choice: the question has 3 choices "
            "(A to C, indexes 0 to 2)",
        ),
        (q(correct=[0, 2]), "correct: a single question has exactly one correct choice, not 2"),
        (q(correct="AB"), "correct: a single question has exactly one correct choice, not 2"),
        (q(correct=[]), "correct: a single question has exactly one correct choice, not 0"),
        (
            q(kind="multiple", correct=[]),
            "correct: a question needs at least one correct choice",
        ),
        (q(kind="multiple", correct="A,A"), "correct: lists A (index 0) twice"),
        (q(correct=[True]), "correct: True is not a choice index (0 = A); like [0, 2]"),
        (q(correct=["1"]), "correct: '1' is not a choice index (0 = A); like [0, 2]"),
        (q(correct=1), 'correct: give a list of choice indexes like [1] or letters like "A"'),
        (
            q(correct=True),
            'correct: true/false is only for true_false questions; give choice letters like "A"',
        ),
        (
            q(correct="对"),
            'correct: true/false is only for true_false questions; give choice letters like "A"',
        ),
        (
            q(correct="1"),
            'correct: \'1\' is neither choice letters A to H (like "A" or "A,C") nor true/false',
        ),
        (q(correct=" , "), 'correct: is empty; give the correct choice letters, like "A" or "A,C"'),
        (
            q(correct=None),
            'correct: must be a list of choice indexes like [0, 2] or letters like "A,C"',
        ),
        (q(correct=list(range(9))), "correct: lists 9 choices; a question has at most 8"),
        (q(points=1001), "points: Input should be less than or equal to 1000"),
        (q(points=-1), "points: Input should be greater than or equal to 0"),
        (q(points=True), "points: Input should be a valid integer"),
        (q(points=10.0), "points: Input should be a valid integer"),
        (q(points="10"), "points: Input should be a valid integer"),
        (q(time_limit_s=4), "time_limit_s: Input should be greater than or equal to 5"),
        (q(time_limit_s=3601), "time_limit_s: Input should be less than or equal to 3600"),
        (q(answer="B"), "answer: Extra inputs are not permitted"),
        (
            {"kind": "single", "choices": ["a", "b"]},
            "prompt: Field required; correct: Field required",
        ),
        (
            ["2 + 2 = ?"],
            "a question must be an object with prompt, kind, choices and correct, not a list",
        ),
        (
            {"prompt": "P", "kind": "true_false", "correct": 2},
            "correct: 2 is neither 0 (true, 对) nor 1 (false, 错)",
        ),
        (
            {"prompt": "P", "kind": "true_false", "correct": [0, 1]},
            "correct: a true_false question has exactly one correct choice, not 2",
        ),
        (
            {"prompt": "P", "kind": "true_false", "choices": ["对", "错", "不知道"], "correct": 0},
            "choices: a true_false question has 2 choices (true, then false), not 3; "
            "or leave choices out",
        ),
        (
            {"prompt": "P", "kind": "true_false", "choices": ["False", "True"], "correct": 0},
            "choices: choice A must be the true one (对) and choice B the false one (错)",
        ),
        (
            {"prompt": "P", "kind": "true_false", "correct": "maybe"},
            'correct: \'maybe\' is neither choice letters A to H (like "A" or "A,C") nor '
            "true/false",
        ),
    ],
)
def test_refusals_name_the_field(raw: Any, detail: str) -> None:
    assert refusal(raw) == detail


def test_every_bad_field_is_named_at_once() -> None:
    raw = {"prompt": "", "kind": "multi", "choices": ["a", "b"], "correct": "C", "extra": 1}
    assert refusal(raw) == (
        "prompt: the question text is empty; "
        "kind: Input should be 'single', 'multiple' or 'true_false'; "
        "correct: C (index 2) is not a choice: the question has 2 choices "
        "(A to B, indexes 0 to 1); "
        "extra: Extra inputs are not permitted"
    )


# --- JSON banks -------------------------------------------------------------------------------

BANK: list[dict[str, Any]] = [
    {"prompt": "2 + 2 = ?", "kind": "single", "choices": ["3", "4"], "correct": "B"},
    {"prompt": "偶数?", "kind": "multiple", "choices": ["2", "3", "4"], "correct": [0, 2]},
    {"prompt": "天是蓝的", "kind": "true_false", "correct": "对", "points": 5, "time_limit_s": 60},
]
PARSED = [
    QuestionDraft("2 + 2 = ?", "single", ("3", "4"), frozenset({1})),
    QuestionDraft("偶数?", "multiple", ("2", "3", "4"), frozenset({0, 2})),
    QuestionDraft("天是蓝的", "true_false", TRUE_FALSE_CHOICES, frozenset({0}), 5, 60),
]


def test_json_bank_as_object_list_bytes_and_bom() -> None:
    text = json.dumps({"questions": BANK}, ensure_ascii=False)
    assert parse_bank_json(text) == PARSED
    assert parse_bank_json(text.encode("utf-8")) == PARSED
    assert parse_bank_json(text.encode("utf-8-sig")) == PARSED
    assert parse_bank_json(json.dumps(BANK)) == PARSED


def test_json_bank_lists_every_bad_question_by_number() -> None:
    bank = [
        BANK[0],
        BANK[1] | {"correct": [0, 5]},
        BANK[2],
        "not a question",
        BANK[0] | {"kind": "true_false", "choices": None, "correct": "C", "points": 2000},
    ]
    assert bank_problems(json.dumps({"questions": bank})) == [
        "question 2: correct: F (index 5) is not a choice: the question has 3 choices "
        "(A to C, indexes 0 to 2)",
        "question 4: a question must be an object with prompt, kind, choices and correct, not text",
        "question 5: correct: C (index 2) is not a choice: the question has 2 choices "
        "(A to B, indexes 0 to 1); points: Input should be less than or equal to 1000",
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ('{"questions": [}', "line 1 column 16: not JSON: Expecting value"),
        ('{\n  "questions": [\n  1,\n]}', "line 4 column 1: not JSON: Expecting value"),
        (b'["\xff"]', "byte 0xff at offset 2 is not valid UTF-8 text (JSON must be UTF-8)"),
        ("[]", "the bank has no questions"),
        ('{"questions": []}', "the bank has no questions"),
        (
            "{}",
            'the key "questions" is missing; the bank must be {"questions": [...]} or a list of '
            "questions",
        ),
        (
            '{"questions": [], "title": "x", "author": "y"}',
            "unknown key 'author', 'title'; the bank must be {\"questions\": [...]} or a list of "
            "questions",
        ),
        ('{"questions": {"prompt": "P"}}', '"questions" must be a list, not an object'),
        ('"questions"', 'the bank must be {"questions": [...]} or a list of questions, not text'),
        ("[" * 100_000 + "]" * 100_000, "the JSON is nested too deeply"),
    ],
)
def test_json_bank_shape_refusals(data: str | bytes, problem: str) -> None:
    assert bank_problems(data) == [problem]


def test_json_bank_size_limit() -> None:
    assert len(parse_bank_json(json.dumps([BANK[0]] * MAX_BANK))) == MAX_BANK
    assert bank_problems(json.dumps([BANK[0]] * (MAX_BANK + 1))) == [
        "the bank has more than 500 questions; split it into banks"
    ]


def test_bank_error_detail_shows_the_first_20_problems() -> None:
    with pytest.raises(BankError) as info:
        parse_bank_json(json.dumps([BANK[0] | {"correct": "Z"}] * 23))
    error = info.value
    assert isinstance(error, InvalidInput)
    assert len(error.problems) == 23
    lines = error.detail.splitlines()
    assert lines[0] == "question bank rejected, 23 problems:"
    assert lines[1] == (
        'question 1: correct: \'Z\' is neither choice letters A to H (like "A" or "A,C") nor '
        "true/false"
    )
    assert lines[20].startswith("question 20: ")
    assert lines[21:] == ["... and 3 more"]
    assert len(lines) == 22


def test_bank_error_with_one_problem() -> None:
    with pytest.raises(BankError) as info:
        parse_bank_json("[]")
    assert info.value.detail == "question bank rejected, 1 problem:\nthe bank has no questions"


# --- CSV banks --------------------------------------------------------------------------------

ENGLISH_CSV = (
    "prompt,kind,choice_a,choice_b,choice_c,correct,points,time_limit_s\r\n"
    "2 + 2 = ?,single,3,4,,B,,\r\n"
    "\r\n"
    '"偶数?",multiple,2,3,4,"A,C",,\r\n'
    "天是蓝的,true_false,,,,true,5,60\r\n"
)
CHINESE_CSV = (
    "题目,类型,选项A,选项B,选项C,答案,分值,时限\n"
    "2 + 2 = ?,单选,3,4,,B,,\n"
    "偶数?,多选,2,3,4,AC,,\n"
    ",,,,,,,\n"
    "天是蓝的,判断,,,,对,5,60\n"
)


def test_csv_bank_english_and_chinese_headers() -> None:
    assert parse_bank_csv(ENGLISH_CSV.encode("utf-8")) == PARSED
    assert parse_bank_csv(CHINESE_CSV.encode("utf-8")) == PARSED


def test_csv_bank_header_spellings() -> None:
    data = "Question;TYPE;A;B;Answer;Score;Time Limit\nP;Multiple;x;y;A B;7;10\n"
    assert parse_bank_csv(data.encode()) == [
        QuestionDraft("P", "multiple", ("x", "y"), frozenset({0, 1}), 7, 10)
    ]
    tabs = "题干\t题型\t选项 A\t选项 B\t正确答案\t时限（秒）\nP\t单选题\tx\ty\tＢ\t15\n"
    assert parse_bank_csv(tabs.encode()) == [
        QuestionDraft("P", "single", ("x", "y"), frozenset({1}), 10, 15)
    ]


def test_csv_bank_with_bom() -> None:
    assert parse_bank_csv(CHINESE_CSV.encode("utf-8-sig")) == PARSED
    assert parse_bank_csv(ENGLISH_CSV.encode("utf-8-sig"), "utf-8") == PARSED


def test_csv_bank_gb18030_needs_the_hint() -> None:
    data = CHINESE_CSV.encode("gb18030")
    assert bank_problems(data, csv=True) == [
        "line 1: byte 0xcc is not valid UTF-8 text; a file saved by Excel on a Chinese system is "
        "often GB18030: try encoding gb18030"
    ]
    assert parse_bank_csv(data, encoding="gb18030") == PARSED
    with_bom = ("\ufeff" + CHINESE_CSV).encode("gb18030")
    assert parse_bank_csv(with_bom, encoding="gb18030") == PARSED
    later = ENGLISH_CSV.encode("gb18030")  # ASCII up to the Chinese prompt on line 4
    assert bank_problems(later, csv=True)[0].startswith("line 4: byte 0xca is not valid UTF-8")
    latin = b"prompt,kind,A,B,correct\nJos\xe9?,single,x,y,A\n"
    assert bank_problems(latin, encoding="ascii", csv=True) == [
        "line 2: byte 0xe9 is not valid ascii text"
    ]
    with pytest.raises(InvalidInput, match="unknown text encoding 'klingon'"):
        parse_bank_csv(data, encoding="klingon")


def test_csv_bank_lists_every_bad_line() -> None:
    data = (
        "prompt,kind,A,B,C,correct,points,time_limit_s\n"
        "ok,single,x,y,,A,,\n"
        "\n"
        "bad index,single,x,y,,C,,\n"
        "bad kind,sing,x,y,,A,,\n"
        "one choice,single,x,,,A,,\n"
        "gap,multiple,x,,z,A,,\n"
        "stray,single,x,y,,A,,,9\n"
        ",true_false,,,,maybe,,\n"
        'two for one,单选,x,y,z,"A,B",1.5,2\n'
        '"multi\nline",判断,,,,,,\n'
        "no answer,true_false,,,,,,\n"
    )
    assert bank_problems(data.encode(), csv=True) == [
        "line 4: correct: C (index 2) is not a choice: the question has 2 choices "
        "(A to B, indexes 0 to 1)",
        "line 5: kind: 'sing' is not a question type; use single, multiple or true_false "
        "(or 单选, 多选, 判断)",
        "line 6: choices: a single question needs 2 to 8 choices, not 1",
        "line 7: choices: choice B is empty",
        "line 8: value in column 9, which has no header",
        "line 9: prompt: the question text is empty; correct: 'maybe' is neither choice letters "
        'A to H (like "A" or "A,C") nor true/false',
        "line 10: points: '1.5' is not a whole number; correct: a single question has exactly "
        "one correct choice, not 2; time_limit_s: Input should be greater than or equal to 5",
        'line 11: correct: is empty; give the correct choice letters, like "A" or "A,C"',
        'line 13: correct: is empty; give the correct choice letters, like "A" or "A,C"',
    ]


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        (
            "prompt,kind,A,B,correct,colour,备注\nP,single,x,y,A,red,\n",
            [
                "line 1 (header): unknown column 'colour', '备注'; expected prompt, kind, "
                "choice_a to choice_h, correct, points, time_limit_s "
                "(or 题目, 类型, 选项A to 选项H, 答案, 分值, 时限)"
            ],
        ),
        (
            "\n\nprompt,A,选项A,answer\n",
            [
                "line 3 (header): columns 'A' and '选项A' both mean choice_a",
                "line 3 (header): required column missing: kind",
            ],
        ),
        (
            "name,phone\nAlice,123\n",
            [
                "line 1 (header): the first line must be a header such as "
                "prompt,kind,choice_a,choice_b,...,correct or 题目,类型,选项A,选项B,...,答案; "
                "found 'name,phone'"
            ],
        ),
        (
            "\n \n",
            [
                "the file is empty; its first line must be a header such as "
                "prompt,kind,choice_a,choice_b,...,correct or 题目,类型,选项A,选项B,...,答案"
            ],
        ),
        ("prompt,kind,correct\n\n", ["the file has no questions"]),
        (
            'prompt,kind,correct\nP,true_false,true\n"unclosed,true_false,true\n',
            ["line 3: malformed CSV: unexpected end of data"],
        ),
    ],
)
def test_csv_bank_file_refusals(data: str, problems: list[str]) -> None:
    assert bank_problems(data.encode(), csv=True) == problems


def test_csv_bank_size_limit_and_xlsx() -> None:
    header = "prompt,kind,correct\n"
    full = header + "P,true_false,对\n" * MAX_BANK
    assert len(parse_bank_csv(full.encode())) == MAX_BANK
    assert bank_problems((full + "P,true_false,错\n").encode(), csv=True) == [
        "the file has more than 500 questions; split it into banks"
    ]
    with pytest.raises(InvalidInput) as info:
        parse_bank_csv(b"PK\x03\x04rest of a workbook")
    assert info.value.detail == "this file is an XLSX workbook, not CSV; save it as CSV (UTF-8)"


def test_csv_bank_uses_all_eight_choices() -> None:
    header = "prompt,kind," + ",".join(f"choice_{c}" for c in "abcdefgh") + ",correct\n"
    data = header + "P,multiple,1,2,3,4,5,6,7,8,H;A\n"
    assert parse_bank_csv(data.encode()) == [
        QuestionDraft("P", "multiple", tuple("12345678"), frozenset({0, 7}))
    ]
    assert MAX_CHOICES == 8


# --- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "count", "raw", "expected"),
    [
        ("single", 4, [2], {2}),
        ("single", 4, [0], {0}),
        ("multiple", 4, [3, 0], {0, 3}),
        ("multiple", 4, [0, 1, 2, 3], {0, 1, 2, 3}),
        ("true_false", 2, True, {0}),
        ("true_false", 2, False, {1}),
        ("true_false", 2, [True], {0}),
        ("true_false", 2, [1], {1}),
    ],
)
def test_answers_are_normalised(kind: str, count: int, raw: Any, expected: set[int]) -> None:
    assert normalise_answer(kind, count, raw) == frozenset(expected)


@pytest.mark.parametrize(
    ("kind", "count", "raw", "detail"),
    [
        ("single", 4, [0, 1], "answer: pick exactly one choice, not 2"),
        ("single", 4, [], "answer: pick exactly one choice, not 0"),
        ("true_false", 2, [], "answer: pick exactly one choice, not 0"),
        ("true_false", 2, [True, 1], "answer: pick exactly one choice, not 2"),
        ("multiple", 4, [], "answer: pick at least one choice"),
        ("multiple", 4, [1, 1], "answer: lists B (index 1) twice"),
        (
            "multiple",
            4,
            [4],
            "answer: E (index 4) is not a choice: the question has 4 choices "
            "(A to D, indexes 0 to 3)",
        ),
        (
            "single",
            4,
            [-1],
            "answer: index -1 is not a choice: the question has 4 choices (A to D, indexes 0 to 3)",
        ),
        ("multiple", 3, [0, 1, 2, 0], "answer: picks 4 choices; the question has 3"),
        (
            "single",
            4,
            [True],
            "answer: True is not a choice index; must be a list of choice indexes like [0]",
        ),
        (
            "single",
            4,
            True,
            "answer: must be a list of choice indexes like [0], not true/false",
        ),
        ("single", 4, 1, "answer: must be a list of choice indexes like [0], not a number"),
        ("single", 4, "B", "answer: must be a list of choice indexes like [0], not text"),
        ("single", 4, None, "answer: must be a list of choice indexes like [0], not null"),
        (
            "single",
            4,
            {"choice": 1},
            "answer: must be a list of choice indexes like [0], not an object",
        ),
        (
            "single",
            4,
            [1.0],
            "answer: 1.0 is not a choice index; must be a list of choice indexes like [0]",
        ),
        (
            "multiple",
            4,
            ["1"],
            "answer: '1' is not a choice index; must be a list of choice indexes like [0]",
        ),
        (
            "true_false",
            2,
            1,
            "answer: must be a list of choice indexes like [0] or true/false, not a number",
        ),
        (
            "true_false",
            2,
            "对",
            "answer: must be a list of choice indexes like [0] or true/false, not text",
        ),
        (
            "true_false",
            2,
            [2],
            "answer: C (index 2) is not a choice: the question has 2 choices "
            "(A to B, indexes 0 to 1)",
        ),
    ],
)
def test_answers_are_refused(kind: str, count: int, raw: Any, detail: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_answer(kind, count, raw)
    assert info.value.detail == detail


def test_bad_question_shape_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown question kind 'essay'"):
        normalise_answer("essay", 4, [0])
    with pytest.raises(ValueError, match="a question has 2 to 8 choices, not 9"):
        normalise_answer("single", 9, [0])


# --- scoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "answer", "after", "expected"),
    [
        (10, {1}, 0, Score(True, 15, 5)),  # at open: the whole half
        (10, {1}, 15, Score(True, 12, 2)),  # mid-window: floor(10 * 0.5 * 15 / 30) = 2
        (10, {1}, 10, Score(True, 13, 3)),  # floor(3.33)
        (10, {1}, 29.999999, Score(True, 10, 0)),  # floor(0.0000002)
        (10, {1}, 30, Score(True, 10, 0)),  # at close
        (10, {1}, 45, Score(True, 10, 0)),  # after close: remaining clamps to 0
        (10, {1}, -5, Score(True, 15, 5)),  # before open (clock skew): clamps to the window
        (7, {1}, 0, Score(True, 10, 3)),  # odd points: floor(3.5)
        (1000, {1}, 6, Score(True, 1400, 400)),
        (0, {1}, 0, Score(True, 0, 0)),
        (10, {0}, 0, Score(False, 0, 0)),  # wrong, however fast
        (10, set(), 0, Score(False, 0, 0)),
    ],
)
def test_score_single(points: int, answer: set[int], after: float, expected: Score) -> None:
    result = score(
        correct=frozenset({1}),
        points=points,
        answer=frozenset(answer),
        opened_at=OPEN,
        closes_at=CLOSE,
        answered_at=OPEN + timedelta(seconds=after),
    )
    assert result == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({0, 2}, Score(True, 25, 5)),
        ({0}, Score(False, 0, 0)),  # a subset of the correct set earns nothing
        ({0, 1, 2}, Score(False, 0, 0)),  # so does a superset
        ({1}, Score(False, 0, 0)),
    ],
)
def test_score_multiple_has_no_partial_credit(answer: set[int], expected: Score) -> None:
    result = score(
        correct=frozenset({0, 2}),
        points=20,
        answer=frozenset(answer),
        opened_at=OPEN,
        closes_at=CLOSE,
        answered_at=OPEN + timedelta(seconds=15),
    )
    assert result == expected


@pytest.mark.parametrize("window", [timedelta(0), timedelta(seconds=-1)])
def test_score_without_a_window_has_no_bonus(window: timedelta) -> None:
    result = score(
        correct=frozenset({0}),
        points=10,
        answer=frozenset({0}),
        opened_at=OPEN,
        closes_at=OPEN + window,
        answered_at=OPEN,
    )
    assert result == Score(True, 10, 0)


def test_score_bonus_is_exact_where_floats_would_round() -> None:
    # In floats 3 * 0.5 * 0.6 / 0.9 is 0.9999999999999999, floored to 0; the rule says 1.
    result = score(
        correct=frozenset({0}),
        points=3,
        answer=frozenset({0}),
        opened_at=OPEN,
        closes_at=OPEN + timedelta(seconds=0.9),
        answered_at=OPEN + timedelta(seconds=0.3),
    )
    assert result == Score(True, 4, 1)


# --- distribution and ranking -----------------------------------------------------------------


def test_distribution_counts_each_pick() -> None:
    answers = [frozenset({0}), frozenset({0, 2}), frozenset({3}), frozenset({0, 2, 3})]
    assert distribution(4, answers) == [3, 0, 2, 2]
    assert distribution(2, []) == [0, 0]
    assert distribution(3, iter([frozenset({1})])) == [0, 1, 0]
    with pytest.raises(ValueError, match="choice index 4 out of range for 4 choices"):
        distribution(4, [frozenset({4})])


def test_rank_uses_competition_ranking() -> None:
    totals = {
        "m3": ("Carol", 30),
        "m1": ("Alice", 50),
        "m4": ("Bob", 50),
        "m2": ("Alice", 50),
        "m5": ("Dan", 30),
        "m6": ("Eve", 10),
        "m7": ("张三", 0),
    }
    assert rank(totals) == [
        RankedEntry("m1", "Alice", 50, 1),
        RankedEntry("m2", "Alice", 50, 1),
        RankedEntry("m4", "Bob", 50, 1),
        RankedEntry("m3", "Carol", 30, 4),
        RankedEntry("m5", "Dan", 30, 4),
        RankedEntry("m6", "Eve", 10, 6),
        RankedEntry("m7", "张三", 0, 7),
    ]
    assert rank({}) == []
    assert rank({"venue:hall": ("Main hall", 0)}) == [RankedEntry("venue:hall", "Main hall", 0, 1)]

"""How the scale benchmark judges its capacity steps (``bench/scale_rules.py``), and the relay
backlog it reads off a real socket (``bench/scale_sample.udp_backlog``)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from scale_report import capacity_summary
from scale_rules import BEHIND_KB, capacity, failing
from scale_sample import udp_backlog


def step(viewers: int, served: bool, fps: float = 30.0, backlog_kb: int = 2) -> dict[str, Any]:
    return {
        "viewers": viewers,
        "served": served,
        "fps_median": fps,
        "relay_backlog_kb": [0, backlog_kb],
    }


def test_a_step_failing_alone_is_measured_again_by_the_next() -> None:
    steps = [
        step(150, True),
        step(180, False, 27.0),  # alone: the next one is served
        step(210, True),
        step(240, False, 26.0),
        step(270, False, 20.0),  # two in a row: the run ends at 240
        step(300, True),
    ]
    got = capacity(steps, 1, keeping_up=False)
    assert (got["viewers"], got["missed_alone"], got["is_lower_bound"]) == (210, [180], False)
    assert got["at"] is steps[2]


def test_a_drained_backlog_after_a_failed_step_is_no_recovery() -> None:
    steps = [step(150, True), step(180, False, 25.0), step(210, True, 32.5), step(240, True)]
    assert failing(steps) == [False, True, True, False]
    assert capacity(steps, 1, keeping_up=False)["viewers"] == 150


def test_keeping_up_also_fails_a_step_that_ends_behind_live() -> None:
    late = BEHIND_KB + 1
    steps = [
        step(150, True),
        step(180, True, backlog_kb=late),
        step(210, True, backlog_kb=late),
        step(240, True),
    ]
    assert capacity(steps, 1, keeping_up=False)["viewers"] == 240
    behind = capacity(steps, 1, keeping_up=True)
    assert (behind["viewers"], behind["is_lower_bound"]) == (150, False)
    # At the limit is not behind; no step at all is a capacity of 0.
    assert capacity([step(150, True, backlog_kb=BEHIND_KB)], 1, keeping_up=True)["viewers"] == 150
    assert capacity([], 1, keeping_up=True)["viewers"] == 0


def test_the_backlog_is_what_waits_unread_on_a_process_socket() -> None:
    reader = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    writer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        reader.bind(("127.0.0.1", 0))
        before = udp_backlog([os.getpid()])
        for _ in range(40):  # well inside the default receive buffer (208 KB)
            writer.sendto(b"x" * 1100, reader.getsockname())
        queued = udp_backlog([os.getpid()])
        assert queued >= before + 40 * 1100  # kernel memory: at least the payloads
        reader.setblocking(False)
        for _ in range(40):
            reader.recv(2048)
        assert udp_backlog([os.getpid()]) <= before
    finally:
        reader.close()
        writer.close()


def test_runs_are_paired_side_by_side_in_either_order() -> None:
    def run(workers: int, viewers: int) -> dict[str, Any]:
        return {"workers": workers, "capacity": viewers, "steps": []}

    def pairs(*runs: dict[str, Any]) -> list[str]:
        return [line for line in capacity_summary(list(runs)) if line.startswith("pair ")]

    abab = pairs(run(1, 300), run(2, 540), run(1, 330), run(2, 600))
    assert [line.split(" = ")[1] for line in abab] == ["540/300", "600/330"]
    abba = pairs(run(1, 300), run(2, 540), run(2, 600), run(1, 330))
    assert [line.split(" = ")[1] for line in abba] == ["540/300", "600/330"]
    # A half that served not even its first step (or broke) measured nothing: its pair and its
    # figure are left out of the means, and the summary says so.
    broken = {"workers": 2, "failed": "the publisher exited", "steps": []}
    lines = list(
        capacity_summary([run(1, 300), run(2, 0), run(2, 600), run(1, 330), run(1, 340), broken])
    )
    assert [line.split(" = ")[1] for line in lines if line.startswith("pair ")] == ["600/330"]
    assert sum("a pair left out" in line for line in lines) == 2
    (means,) = [line for line in lines if line.startswith("capacity(2) / capacity(1)")]
    assert "= 600/323.333 = 1.86x" in means and "target >= 1.7x: met" in means


def test_start_is_one_count_or_one_per_worker_count() -> None:
    import argparse

    from bench_scale import parse_start

    assert parse_start("150") == {0: 150}
    assert parse_start("1=420,2=720") == {1: 420, 2: 720}
    for bad in ("1=a", "x", "1=420,2"):
        with pytest.raises(argparse.ArgumentTypeError, match="not N or W=N"):
            parse_start(bad)

"""The machine probe the scale benchmark prints beside its figures (``bench/core_scaling.py``)
runs its relay-like work for real: SRTP sessions, loopback sockets, processes at once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from core_scaling import VIEWERS, core_scaling, describe, relay_like_work


def test_relay_like_work_sends_and_reads_back_whole_rounds() -> None:
    packets = relay_like_work(0.3)
    assert packets > 0 and packets % VIEWERS == 0


def test_the_report_compares_processes_at_once_with_one_alone() -> None:
    report = core_scaling(1.0, 2)
    for name in ("relay_like", "arithmetic"):
        figures = report[name]
        assert figures["alone_per_s"] > 0 and len(figures["each_per_s"]) == 2
        assert abs(figures["together_per_s"] - sum(figures["each_per_s"])) <= 2  # rounding
        ratio = figures["together_per_s"] / figures["alone_per_s"]
        assert abs(figures["ratio"] - ratio) < 0.02
    assert describe(report).count("2 at once") == 2

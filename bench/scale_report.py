"""The tables and summaries ``bench_scale.py`` prints (Markdown, as pasted into RESULTS.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from scale_rules import BEHIND_KB, behind

TARGET_RATIO = 1.7


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def capacity_table(runs: list[dict[str, Any]]) -> Iterator[str]:
    head = [
        "workers",
        "viewers",
        "served (>= 95 % of 30 fps)",
        "fps median / min",
        "relay CPU % (per process)",
        "relay ms / viewer-s",
        "load CPU %",
        "load ms / viewer-s",
        "publisher %",
        "machine % of 200",
        "UDP drops relay / load",
        "relay backlog KB (start / end)",
        "published fps",
        "loop stalls >= 0.1 s (worst <=, s) per process",
    ]
    yield "| " + " | ".join(head) + " |"
    yield "|" + "---|" * len(head)
    for run in runs:
        for r in run["steps"]:
            mark = "" if r["served"] else " ✗"
            backlog = r.get("relay_backlog_kb") or ["-", "-"]
            late = " ⏳" if behind(r) else ""
            by_pid = ", ".join(map(str, r["relay_cpu_pct_by_pid"].values()))
            yield (
                f"| {run['workers']} | {r['viewers']} | {r['served_viewers']} "
                f"({r['served_share_pct']} %){mark} | {fmt(r['fps_median'])} / {fmt(r['fps_min'])}"
                f" | {r['relay_cpu_pct']} ({by_pid})"
                f" | {fmt(r['relay_ms_per_viewer_s'])} | {r['load_cpu_pct']} | "
                f"{fmt(r['load_ms_per_viewer_s'])} | {r['publisher_cpu_pct']} | "
                f"{r['machine_busy_pct']} | {r['udp_drops_relay']} / {r['udp_drops_load']} | "
                f"{backlog[0]} / {backlog[-1]}{late} | "
                f"{fmt(r.get('published_fps'))} | {lags(r.get('loop_lag'))} |"
            )


def lags(by_pid: dict[str, dict[str, Any]] | None) -> str:
    if not by_pid:
        return "-"
    return ", ".join(f"{v['stalls']} ({fmt(v['worst_le'])})" for v in by_pid.values())


def lag_text(lags: dict[str, dict[str, Any]]) -> str:
    """Per relay process: stalls (>= 0.1 s) and the bound of its worst lag in the window, and
    the viewers it refused or closed for being behind live, if any."""
    if not lags:
        return "-"

    def shedding(v: dict[str, Any]) -> str:
        if not (v.get("refused") or v.get("shed")):
            return ""
        return f", behind live so far: {v['refused']} refused, {v['shed']} shed"

    return ", ".join(
        f"{v['stalls']} stalls (worst <= {fmt(v['worst_le'])} s){shedding(v)}"
        for v in lags.values()
    )


def capacity_summary(runs: list[dict[str, Any]]) -> Iterator[str]:
    for run in runs:
        yield capacity_line(run)
    # Halves that measured something: not one whose first step failed, nor one that broke.
    ones = [r for r in runs if r["workers"] == 1 and r.get("capacity")]
    twos = [r for r in runs if r["workers"] == 2 and r.get("capacity")]
    # Runs side by side in order, a W=1 and a W=2 each: ``--workers 1,2,1,2`` and ``1,2,2,1``
    # (which cancels a drift of the host's speed over the run) both give two pairs.
    pairs = []
    waiting: dict[str, Any] | None = None
    for run in runs:
        if waiting is not None and {waiting["workers"], run["workers"]} == {1, 2}:
            one, two = (waiting, run) if waiting["workers"] == 1 else (run, waiting)
            if one.get("capacity") and two.get("capacity"):
                pairs.append((one, two))
            else:  # a half whose first step failed (or that failed to run) measured nothing
                yield "a pair left out: a half served not even its first step (start it lower)"
            waiting = None
        else:
            waiting = run
    for n, (one, two) in enumerate(pairs, 1):
        c1, c2 = one["capacity"], two["capacity"]
        line = f"pair {n}: capacity(2) / capacity(1) = {c2}/{c1} = {c2 / c1:.2f}x"
        k1, k2 = (r.get("keeping_up", {}).get("viewers") for r in (one, two))
        if k1 and k2:
            line += f"; keeping up (backlog <= {BEHIND_KB} KB): {k2}/{k1} = {k2 / k1:.2f}x"
        yield line
    if ones and twos:
        c1 = sum(r["capacity"] for r in ones) / len(ones)
        c2 = sum(r["capacity"] for r in twos) / len(twos)
        ratio = c2 / c1
        label = "capacity(2) / capacity(1)" + (" (means over the runs)" if len(runs) > 2 else "")
        yield (
            f"{label} = {c2:g}/{c1:g} = {ratio:.2f}x (target >= {TARGET_RATIO}x: "
            f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})"
        )
        kept = [(r.get("keeping_up") or {}).get("viewers") or 0 for r in (*ones, *twos)]
        if all(kept):
            k1 = sum(kept[: len(ones)]) / len(ones)
            k2 = sum(kept[len(ones) :]) / len(twos)
            yield (
                f"keeping up (no step ending over {BEHIND_KB} KB behind): "
                f"{k2:g}/{k1:g} = {k2 / k1:.2f}x (target >= {TARGET_RATIO}x: "
                f"{'met' if k2 / k1 >= TARGET_RATIO else 'NOT met'})"
            )
        v1 = per_core(ones)
        v2 = per_core(twos)
        if v1 and v2:
            yield (
                f"per relay core: {v1:g} viewers (workers 1) and {v2:g} (workers 2); with both "
                f"cores for the relay (load tool elsewhere) that is {v1:g} vs {2 * v2:g} viewers "
                f"= {2 * v2 / v1:.2f}x"
            )
    for run in runs:
        best = run.get("at_capacity") or {}
        load, relay = best.get("load_ms_per_viewer_s"), best.get("relay_ms_per_viewer_s")
        if load and relay:
            w = run["workers"]
            yield f"load / relay CPU per viewer at capacity(workers {w}): {load / relay:.2f}"


def capacity_line(run: dict[str, Any]) -> str:
    if "failed" in run:
        return f"capacity(workers {run['workers']}): not measured, the half failed: {run['failed']}"
    best = run.get("at_capacity") or {}
    bound = (
        " (the run did not end on failed steps: a lower bound)"
        if run.get("capacity_is_lower_bound")
        else ""
    )
    if run.get("missed_alone"):
        bound += f"; failed alone, the next step served: {run['missed_alone']}"
    keeping = run.get("keeping_up") or {}
    if keeping:
        bound += f"; keeping up: {keeping['viewers']}"
    return (
        f"capacity(workers {run['workers']}) = {run['capacity']} viewers{bound}; at it: relay "
        f"{fmt(best.get('relay_cpu_pct'))} % of a core = "
        f"{fmt(best.get('viewers_per_relay_core'))} viewers per relay core, "
        f"{fmt(best.get('relay_ms_per_viewer_s'))} ms relay and "
        f"{fmt(best.get('load_ms_per_viewer_s'))} ms load CPU per viewer-second; "
        + (
            f"spread {json.dumps(best['nodes'])}"
            if best.get("nodes")
            else f"spread after the last step {json.dumps(run.get('nodes_at_end'))}"
        )
    )


def per_core(runs: list[dict[str, Any]]) -> float | None:
    """Mean viewers per relay core at capacity over ``runs`` (None if any lacks it)."""
    found = [(r.get("at_capacity") or {}).get("viewers_per_relay_core") for r in runs]
    if not found or any(not v for v in found):
        return None
    return round(sum(found) / len(found))


def edge_summary(run: dict[str, Any]) -> Iterator[str]:
    w = run["windows"]
    yield "| window | run 1: origin CPU % | run 2: origin CPU % |"
    yield "|---|---:|---:|"
    names = {
        "a": "(a) broadcaster only",
        "b": f"(b) + {run['k']} viewers in one process",
        "v": f"(v) + {run['k']} viewers, a process each",
        "c": f"(c) + {run['k']} edges (1 viewer each)",
    }
    for key, name in names.items():
        cells = [fmt((w.get(f"{key}{i}") or {}).get("relay_cpu_pct")) for i in (1, 2)]
        yield f"| {name} | {cells[0]} | {cells[1]} |"
    apart = run.get("per_viewer_apart_pct") or [None] * len(run["per_edge_pct"])
    rows = zip(run["per_viewer_pct"], apart, run["per_edge_pct"], strict=True)
    for i, (v, va, e) in enumerate(rows, 1):
        ratio = f"{e / v:.2f}" if v > 0 else "-"
        line = f"run {i}: origin CPU per viewer {v} % (one process)"
        if va is not None:
            ratio_apart = f"{e / va:.2f}" if va > 0 else "-"
            line += f", {va} % (a process each)"
        line += f", per edge {e} % of a core; edge/viewer {ratio}"
        if va is not None:
            line += f" (one process), {ratio_apart} (a process each)"
        yield line

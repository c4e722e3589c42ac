"""The report of ``bench_relay.py``: its table, notes and verdict against the targets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from clip_publisher import FPS

TARGET_N = 100
TARGETS = {
    "cpu_ms_per_viewer_s": 5.0,
    "keyframe_p50_ms": 300.0,
    "rss_per_viewer_mb": 1.0,
}


def fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}{suffix}"
    return f"{value}{suffix}"


def table(results: list[dict[str, Any]]) -> list[str]:
    head = [
        "relay",
        "N",
        "joined/err",
        "CPU ms/viewer-s",
        "relay CPU % core (bcast only)",
        "RSS MB (bcast only)",
        "RSS MB/viewer",
        "fps/viewer median/min (% of 30)",
        ">=95 %",
        "1st keyframe p50/p95 ms (ramp)",
        "1st keyframe p50/max ms (5 late joiners)",
        "loss video/audio %",
        "load gen CPU %",
        "publisher CPU %",
        "machine busy % of 200 (others)",
    ]
    rows = [head, ["---"] * len(head)]
    for r in results:
        d = r.get("derived", {})
        w = r.get("window") or {}
        b = r.get("baseline") or {}
        lt = r.get("loadtest") or {}
        if "failed" in r and not lt:
            rows.append([r["relay"], str(r["viewers"]), "FAILED: " + r["failed"][:80]] + [""] * 12)
            continue
        fps = lt.get("fps_per_viewer") or {}
        key = lt.get("first_keyframe_ms") or {}
        loss = lt.get("packet_loss_percent") or {}
        probe = (r.get("probe") or {}).get("first_keyframe_ms") or {}
        rows.append(
            [
                r["relay"],
                str(r["viewers"]),
                f"{lt.get('viewers_joined', '-')}/{d.get('errors', '-')}",
                f"**{fmt(d.get('cpu_ms_per_viewer_s'))}**"
                f" ({fmt(d.get('cpu_ms_per_viewer_s_over_baseline'))} over bcast)",
                f"{fmt(w.get('relay_cpu_pct'))} ({fmt(b.get('relay_cpu_pct'))})",
                f"{fmt(r.get('relay_rss_mb'))} ({fmt(b.get('relay_rss_mb'))})",
                fmt(d.get("rss_per_viewer_mb")),
                f"{fmt(fps.get('median'))}/{fmt(fps.get('min'))} "
                f"({fmt(d.get('fps_median_share'))}/{fmt(d.get('fps_min_share'))} %)",
                f"{fmt(d.get('viewers_keeping_up'))}/{r['viewers']}",
                f"{fmt(key.get('p50'))}/{fmt(key.get('p95'))}",
                f"{fmt(probe.get('p50'))}/{fmt(probe.get('max'))}",
                f"{fmt(loss.get('video'))}/{fmt(loss.get('audio'))}",
                fmt(w.get("load_cpu_pct")),
                fmt(w.get("publisher_cpu_pct")),
                f"{fmt(w.get('machine_busy_pct'))} ({fmt(w.get('others_cpu_pct'))})",
            ]
        )
    return ["| " + " | ".join(row) + " |" for row in rows]


def notes(results: list[dict[str, Any]]) -> Iterator[str]:
    for r in results:
        tag = f"{r['relay']} N={r['viewers']}"
        if r.get("failed"):
            yield f"{tag}: failed: {r['failed']}"
        if r.get("aborted"):
            yield f"{tag}: window cut short: {r['aborted']}"
        at = r.get("viewers_at_relay") or {}
        if at and (at.get("start") != r["viewers"] or at.get("end") != at.get("start")):
            yield (
                f"{tag}: viewers at the relay: {at.get('start')} at window start, "
                f"{at.get('end')} at its end"
            )
        lt = r.get("loadtest") or {}
        if lt.get("errors"):
            yield f"{tag}: errors: {json.dumps(lt['errors'])}"
        pub = r.get("published")
        extra = []
        if pub:
            extra.append(
                f"published {pub['fps']} fps in the window; keyframe requests at the publisher: "
                f"{r.get('keyframe_requests_while_joining')} while the viewers joined, "
                f"{pub['keyframe_requests']} in the window"
            )
        rc = r.get("relay_counters")
        if rc:
            extra.append(
                f"relay sent {rc['packets_out_video']:g} video + {rc['packets_out_audio']:g} audio "
                f"pkt/s, {rc['nacks']:g} NACK/s, {rc['retransmissions']:g} retransmissions/s"
            )
            w = r.get("window") or {}
            pkts = rc["packets_out_video"] + rc["packets_out_audio"]
            if w.get("relay_kernel_pct") is not None:
                extra.append(
                    f"relay CPU in the kernel (stime): {w['relay_kernel_pct']} % of a core"
                )
            if pkts and w.get("relay_cpu_pct") is not None:
                extra.append(
                    f"{10_000 * w['relay_cpu_pct'] / pkts:.1f} µs relay CPU per packet out"
                )
        if lt:
            extra.append(
                f"first frame a keyframe: {lt['first_frame_keyframe']['yes']} yes / "
                f"{lt['first_frame_keyframe']['no']} no; answer p50/p95 "
                f"{fmt(lt['answer_ms']['p50'])}/{fmt(lt['answer_ms']['p95'])} ms; "
                f"join took {r.get('join_s')} s"
            )
        w = r.get("window") or {}
        if "udp_drops_relay" in w:
            extra.append(
                f"UDP datagrams dropped by the kernel in the window: {w['udp_drops_relay']} at "
                f"the relay's sockets, {w['udp_drops_viewers']} at the viewers' (machine-wide "
                f"{json.dumps(w['udp_errors_machine'])})"
            )
        probe = r.get("probe")
        if probe and probe.get("errors"):
            extra.append(f"late joiners' errors: {json.dumps(probe['errors'])}")
        if r.get("relay_rss_after_mb") is not None:
            extra.append(
                f"RSS max {r.get('relay_rss_max_mb')} MB, {r['relay_rss_after_mb']} MB 3 s after "
                f"the viewers left ({r.get('viewers_after')} viewers still listed)"
            )
        if extra:
            yield f"{tag}: " + "; ".join(extra)


def verdict(results: list[dict[str, Any]]) -> Iterator[str]:
    ours = {r["viewers"]: r for r in results if r["relay"] == "studycast" and "derived" in r}
    stock = {r["viewers"]: r for r in results if r["relay"] == "stock" and "derived" in r}
    for n in sorted(set(ours) & set(stock)):
        a = ours[n]["derived"].get("cpu_ms_per_viewer_s")
        b = stock[n]["derived"].get("cpu_ms_per_viewer_s")
        if a and b:
            yield f"N={n}: stock/studycast CPU per viewer-second = {b:g}/{a:g} = {b / a:.1f}x"
    norec = {r["viewers"]: r for r in results if r["relay"] == "studycast-norec" and "derived" in r}
    for n in sorted(set(ours) & set(norec)):
        on = ours[n]["derived"].get("cpu_ms_per_viewer_s")
        off = norec[n]["derived"].get("cpu_ms_per_viewer_s")
        if on and off:
            yield (
                f"N={n}: relay CPU per viewer-second with recording {on:g} ms, without {off:g} "
                f"ms: recording adds {(on / off - 1) * 100:+.1f}% (target <= +10%)"
            )
    r = ours.get(TARGET_N)
    if r is None:
        yield f"targets: no studycast run at N={TARGET_N}"
        return
    d = r["derived"]
    lt = r.get("loadtest") or {}
    checks: list[tuple[str, Any, Callable[[Any], bool]]] = [
        (
            f"CPU per viewer-second <= {TARGETS['cpu_ms_per_viewer_s']:g} ms",
            d.get("cpu_ms_per_viewer_s"),
            lambda v: v <= TARGETS["cpu_ms_per_viewer_s"],
        ),
        (
            f"all {TARGET_N} viewers at >= 95 % of {FPS} fps",
            d.get("viewers_keeping_up"),
            lambda v: v >= TARGET_N,
        ),
        (
            f"first keyframe p50 <= {TARGETS['keyframe_p50_ms']:g} ms",
            (lt.get("first_keyframe_ms") or {}).get("p50"),
            lambda v: v <= TARGETS["keyframe_p50_ms"],
        ),
        (
            f"RSS per viewer <= {TARGETS['rss_per_viewer_mb']:g} MB",
            d.get("rss_per_viewer_mb"),
            lambda v: v <= TARGETS["rss_per_viewer_mb"],
        ),
    ]
    for what, value, ok in checks:
        state = "no figure" if value is None else ("met" if ok(value) else "MISSED")
        yield f"target at N={TARGET_N}: {what}: {fmt(value)} -> {state}"

"""``studycast publish`` against a real ``studycast serve --demo`` on loopback.

Clips are written to disk with PyAV, every picture carrying its frame number
(``client.clip.draw_frame``); the command runs as a subprocess, and a WHEP viewer on a real
aiortc peer decodes what the relay forwards and reads the numbers back. What the command
reported lands in the server's record store, read here read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import av
import click
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.frame import PictureType
from web_session_support import STUDYCAST, DemoServer, Organiser, demo_server, wait_until

from attendance.errors import InvalidInput
from client.broadcast import Broadcaster, PublishFailed, Status, events_url, next_delay
from client.clip import draw_frame, read_frame_number
from client.outbox import Outbox
from client.publisher import delete_resource, post_offer
from client.sources import FileSource, Timeline
from server.cli.publish import format_status, parse_bitrate, parse_size, publish
from server.relay.ice import advertise_addresses, rtc_configuration

FPS = 15
SECONDS = 6
FRAMES = FPS * SECONDS
GOP = FPS  # a keyframe every second
WAIT = 30.0  # upper bound for any single wait in this file


@pytest.fixture(scope="module", autouse=True)
def loopback_ice() -> None:
    """The viewers offer 127.0.0.1 only (the command gets ``--ice-address 127.0.0.1``)."""
    advertise_addresses(["127.0.0.1"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("demo")) as running:
        yield running


@pytest.fixture(scope="module")
def organiser(server: DemoServer) -> Organiser:
    return Organiser(server.base, "organiser", server.logins["organiser"])


# --- clips on disk ----------------------------------------------------------------------------


def write_clip(path: Path, codec: str, frames: int = FRAMES) -> Path:
    """A numbered clip with an Opus tone: VP8 in WebM or constrained-baseline H.264 in MP4."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libvpx" if codec == "vp8" else "libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.bit_rate = 300_000
        video.gop_size = GOP
        if codec == "vp8":
            video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        else:
            video.options = {
                "profile": "baseline",
                "preset": "veryfast",
                "tune": "zerolatency",
                "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0",
            }
        audio = out.add_stream("libopus", rate=48_000)
        audio.layout = "stereo"
        for number in range(frames):
            frame = draw_frame(number, 320, 240)
            frame.pts, frame.time_base = number, fractions.Fraction(1, FPS)
            frame.pict_type = PictureType.I if number % GOP == 0 else PictureType.NONE
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = np.arange(frames * 48_000 // FPS)
        tone = (0.2 * np.sin(2 * np.pi * 440 * samples / 48_000) * 32767).astype(np.int16)
        for start in range(0, len(tone), 960):
            chunk = np.repeat(tone[start : start + 960], 2).reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
            sound.sample_rate, sound.pts = 48_000, start
            sound.time_base = fractions.Fraction(1, 48_000)
            out.mux(audio.encode(sound))
        out.mux(audio.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "vp8": write_clip(folder / "numbered.webm", "vp8"),
        "h264": write_clip(folder / "numbered.mp4", "h264"),
    }


# --- sessions, the command, the record -------------------------------------------------------


def new_session(organiser: Organiser, codec: str) -> dict[str, Any]:
    """A fresh session of ``codec`` (a codec is fixed once broadcast); returns its links."""
    now = datetime.now(UTC)
    created = organiser.post(
        "/api/sessions",
        {
            "title": f"publish test {codec} {time.monotonic_ns()}",
            "scheduled_start": now.isoformat(),
            "scheduled_end": (now + timedelta(hours=2)).isoformat(),
            "video_codec": codec,
            "recording_enabled": False,
        },
    )
    links: dict[str, Any] = organiser.get(f"/api/sessions/{created['id']}/links")
    return links


async def start_publish(*args: str, outbox: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(STUDYCAST),
        "publish",
        *args,
        "--outbox",
        str(outbox),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def finish(proc: asyncio.subprocess.Process, within: float = WAIT) -> tuple[int, str]:
    """Wait for the command's end; its exit code and everything it printed."""
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"publish still running after {within} s:\n{err.decode()}")
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


def publish_args(links: dict[str, Any], clip: Path, *more: str) -> list[str]:
    return [
        links["whip_url"],
        "--token",
        links["whip_token"],
        "--file",
        str(clip),
        "--ice-address",
        "127.0.0.1",
        "--no-status",
        *more,
    ]


def recorded(server: DemoServer | Path, session_id: int) -> list[dict[str, Any]]:
    """Every broadcaster_status event the server stored for the session, in order."""
    data_dir = server if isinstance(server, Path) else server.data_dir
    db = sqlite3.connect(f"file:{data_dir / 'studycast.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT payload FROM attendance_events WHERE session_id = ? AND kind = ? ORDER BY id",
            (session_id, "broadcaster_status"),
        ).fetchall()
    finally:
        db.close()
    payloads = [json.loads(raw) if isinstance(raw, str) else raw for (raw,) in rows]
    assert all(p["status"] == "accepted" for p in payloads), payloads
    return payloads


def recorded_states(server: DemoServer, session_id: int) -> list[tuple[str, str]]:
    """(state, detail) of every broadcaster_status event the server stored, in order."""
    return [(p["state"], p.get("detail", "")) for p in recorded(server, session_id)]


def receiving(stats: dict[str, Any]) -> bool:
    """Whether the relay has had a second of video from a connected broadcaster."""
    broadcaster = stats["broadcaster"]
    return bool(
        broadcaster and broadcaster["connection"] == "connected" and broadcaster["frames_in"] > FPS
    )


# --- a decoding WHEP viewer -------------------------------------------------------------------


@dataclass
class Viewer:
    """What one WHEP viewer decoded: the frame numbers drawn in the pictures, in order."""

    pc: RTCPeerConnection
    resource_url: str = ""
    numbers: list[int] = field(default_factory=list)
    audio_frames: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def _consume(track: MediaStreamTrack, viewer: Viewer) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            if isinstance(frame, av.VideoFrame):
                viewer.numbers.append(read_frame_number(frame))
            else:
                viewer.audio_frames += 1


@contextlib.asynccontextmanager
async def watching(links: dict[str, Any]) -> AsyncIterator[Viewer]:
    """A recvonly viewer of the session (aiortc's jitter buffer and decoder), closed after."""
    pc = RTCPeerConnection(configuration=rtc_configuration())
    viewer = Viewer(pc)
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    pc.on("track", lambda track: viewer.tasks.append(asyncio.create_task(_consume(track, viewer))))
    async with aiohttp.ClientSession() as http:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer, viewer.resource_url = await post_offer(
                http, links["whep_url"], links["whep_token"], pc.localDescription.sdp
            )
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            yield viewer
        finally:
            with contextlib.suppress(Exception):
                await delete_resource(http, viewer.resource_url, links["whep_token"])
            await pc.close()
            if viewer.tasks:
                _, pending = await asyncio.wait(viewer.tasks, timeout=2.0)
                for task in pending:
                    task.cancel()


def assert_frame_for_frame(numbers: list[int], published: int) -> None:
    """Consecutive numbers from the first picture on, and at least 95% of those published."""
    assert numbers, "the viewer decoded nothing"
    first = numbers[0]
    assert numbers == list(range(first, first + len(numbers))), numbers
    assert len(numbers) >= 0.95 * (published - first), (first, len(numbers), published)


# --- pure parts -------------------------------------------------------------------------------


def test_the_events_url_comes_from_the_whip_url() -> None:
    assert events_url("http://h:8080/whip/12") == "http://h:8080/api/sessions/12/events"
    assert events_url("https://h/edge/whip/3/?x=1") == "https://h/edge/api/sessions/3/events"
    for bad in ("not-a-url", "ftp://h/whip/1", "http://h/whep/1", "http:///whip/1", "http://h/1"):
        with pytest.raises(InvalidInput, match="not a WHIP URL"):
            events_url(bad)


def test_retries_back_off_from_one_to_ten_seconds() -> None:
    delays = [next_delay(None)]
    for _ in range(5):
        delays.append(next_delay(delays[-1]))
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_sizes_and_bitrates_are_read_or_refused() -> None:
    ctx, param = click.Context(publish), click.Option(["--x"])
    assert parse_size(ctx, param, "1280x720") == (1280, 720)
    assert parse_size(ctx, param, None) is None
    for bad in ("1280", "1281x720", "32x32", "8000x720", "axb"):
        with pytest.raises(click.BadParameter):
            parse_size(ctx, param, bad)
    read = [parse_bitrate(ctx, param, v) for v in ("2M", "800k", "1.5M", "300000", "2.5Mbps")]
    assert read == [2_000_000, 800_000, 1_500_000, 300_000, 2_500_000]
    for bad in ("fast", "50k", "100M", "2G"):
        with pytest.raises(click.BadParameter):
            parse_bitrate(ctx, param, bad)


def test_the_status_line() -> None:
    live = Status("clip.webm", "live", bitrate_kbps=1520.0, fps=29.97, rtt_ms=3.4, live_since=0.0)
    assert (
        format_status(live, 3725.0)
        == "live · 1.52 Mbit/s · 30.0 fps · RTT 3 ms · 1:02:05 · clip.webm"
    )
    away = Status("camera 0", "reconnecting", detail="cannot reach h:80: connection refused")
    assert format_status(away, 0.0) == (
        "reconnecting · camera 0 · cannot reach h:80: connection refused"
    )
    assert away.event_fields() == {
        "state": "reconnecting",
        "source": "camera 0",
        "detail": "cannot reach h:80: connection refused",
    }
    assert live.event_fields() == {
        "state": "live",
        "source": "clip.webm",
        "bitrate_kbps": 1520.0,
        "fps": 30.0,
        "rtt_ms": 3.4,
    }


def test_the_timeline_runs_on_across_a_jump_and_a_stall() -> None:
    now = [100.0]
    timeline = Timeline(max_lag=0.5, clock=lambda: now[0])
    assert timeline.delay(0.0) == 0.0  # the first item sets the schedule
    timeline.sent("video", 0.0)
    assert timeline.delay(0.1) == pytest.approx(0.1)
    now[0] += 0.1
    timeline.sent("video", 0.1)
    timeline.jump_to(2.0)  # the next keyframe is 1.9 s of content ahead
    assert 2.0 - timeline.skip == pytest.approx(0.2)  # ...but it is sent one step later
    now[0] += 5.0  # the consumer stalls: the schedule moves, nothing is due in a burst
    assert timeline.delay(0.3) == 0.0
    assert timeline.delay(0.4) == pytest.approx(0.1)


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("session_codec", "clip", "how"),
    [
        ("vp8", "vp8", "sent as it is"),  # the file's own packets: no re-encoding
        ("h264", "h264", "sent as it is"),
        ("h264", "vp8", "encoded by aiortc"),  # --reencode: decoded, then aiortc's encoder
    ],
)
async def test_a_file_is_received_frame_for_frame_and_recorded(
    server: DemoServer,
    organiser: Organiser,
    clips: dict[str, Path],
    tmp_path: Path,
    session_codec: str,
    clip: str,
    how: str,
) -> None:
    links = await asyncio.to_thread(new_session, organiser, session_codec)
    extra = ["--reencode"] if how == "encoded by aiortc" else []
    async with watching(links) as viewer:
        started = time.monotonic()
        proc = await start_publish(
            *publish_args(links, clips[clip], "--no-loop", *extra), outbox=tmp_path / "outbox.db"
        )
        code, output = await finish(proc)
        assert code == 0, output
        assert how in output.splitlines()[0]
        assert "ended: the file has been sent" in output
        await asyncio.sleep(0.5)  # the last frames through the viewer's jitter buffer
    assert time.monotonic() - started >= SECONDS - 0.5  # paced in real time, not flooded
    assert_frame_for_frame(viewer.numbers, FRAMES)
    assert viewer.numbers[-1] >= FRAMES - 2
    assert viewer.audio_frames > 0
    assert recorded_states(server, links["id"]) == [
        ("connecting", ""),
        ("live", ""),
        ("ended", "the file has been sent"),
    ]


@pytest.mark.slow
async def test_ctrl_c_ends_the_broadcast_and_the_relay_lets_it_go(
    server: DemoServer, organiser: Organiser, clips: dict[str, Path], tmp_path: Path
) -> None:
    links = await asyncio.to_thread(new_session, organiser, "h264")
    stats_path = f"/api/sessions/{links['id']}/stats"

    def stats() -> dict[str, Any]:
        body: dict[str, Any] = organiser.get(stats_path)
        return body

    proc = await start_publish(
        *publish_args(links, clips["h264"], "--loop"), outbox=tmp_path / "outbox.db"
    )
    try:
        await asyncio.to_thread(wait_until, lambda: receiving(stats()), WAIT, "media at the relay")
    finally:
        proc.send_signal(signal.SIGINT)
    code, output = await finish(proc, 10.0)
    assert code == 0, output
    assert "ended: stopped by SIGINT" in output
    after = await asyncio.to_thread(stats)
    assert (after["broadcaster"], after["state"]) == (None, "paused")
    assert recorded_states(server, links["id"]) == [
        ("connecting", ""),
        ("live", ""),
        ("ended", "stopped by SIGINT"),
    ]


@pytest.mark.slow
async def test_the_status_and_its_record_while_live(
    server: DemoServer, organiser: Organiser, clips: dict[str, Path], tmp_path: Path
) -> None:
    """In process: the status figures, and a live event every ``report_interval`` with them."""
    links = await asyncio.to_thread(new_session, organiser, "h264")
    source = FileSource(clips["h264"], loop=True)
    await source.start()
    outbox = Outbox(
        tmp_path / "outbox.db",
        events_url=events_url(links["whip_url"]),
        token=links["whip_token"],
        owner="broadcaster",
    )
    seen: list[Status] = []
    measured = asyncio.Event()

    def on_status(status: Status) -> None:
        seen.append(replace(status, history=[]))
        if sum(s.rtt_ms is not None for s in seen) >= 4:
            measured.set()

    try:
        async with aiohttp.ClientSession() as http:
            broadcaster = Broadcaster(
                links["whip_url"],
                links["whip_token"],
                source,
                http=http,
                bitrate=1_000_000,
                outbox=outbox,
                on_status=on_status,
                report_interval=1.5,
            )
            run = asyncio.create_task(broadcaster.run())
            async with asyncio.timeout(WAIT):
                await measured.wait()
            broadcaster.stop("enough")
            async with asyncio.timeout(WAIT):
                assert await run == "enough"
            assert (await outbox.flush(http)).pending == 0
    finally:
        outbox.close()
        await source.close()
    assert broadcaster.status.history == ["connecting", "live", "ended"]
    figures = [s for s in seen if s.state == "live" and s.fps is not None]
    assert all(s.bitrate_kbps and 50 < s.bitrate_kbps < 1000 for s in figures), figures
    assert all(12 <= (s.fps or 0) <= 18 for s in figures), figures
    events = recorded(server, links["id"])
    assert [e["state"] for e in events][:2] == ["connecting", "live"]
    assert events[-1]["state"] == "ended" and events[-1]["detail"] == "enough"
    periodic = [e for e in events[2:-1] if e["state"] == "live"]
    assert len(periodic) >= 2, events
    assert all({"bitrate_kbps", "fps"} <= set(e) for e in periodic), periodic
    # The round trip is known from the server's first receiver report on: not always by the
    # first periodic report, always by a later one.
    assert "rtt_ms" in periodic[-1], periodic
    assert all(e["source"] == "numbered.mp4" for e in events)


@pytest.mark.slow
async def test_two_broadcasters_do_not_take_a_session_from_each_other(
    server: DemoServer, organiser: Organiser, clips: dict[str, Path]
) -> None:
    """The second ``publish`` of one session takes it over; the first one's reconnect is
    refused (it was replaced, not cut off) and it ends saying so, instead of taking the session
    back and being taken over again, for ever. Run again, it takes the session back."""
    links = await asyncio.to_thread(new_session, organiser, "vp8")
    sources = [FileSource(clips["vp8"], loop=True) for _ in range(3)]
    for source in sources:
        await source.start()
    try:
        async with aiohttp.ClientSession() as http:

            def broadcaster(source: FileSource) -> Broadcaster:
                return Broadcaster(
                    links["whip_url"], links["whip_token"], source, http=http, bitrate=1_000_000
                )

            async def live(b: Broadcaster) -> None:
                async with asyncio.timeout(WAIT):
                    while b.status.state != "live":  # noqa: ASYNC110 (a status field)
                        await asyncio.sleep(0.1)

            first, second = broadcaster(sources[0]), broadcaster(sources[1])
            first_run = asyncio.create_task(first.run())
            await live(first)
            second_run = asyncio.create_task(second.run())
            await live(second)
            async with asyncio.timeout(WAIT):
                with pytest.raises(PublishFailed, match="another broadcaster took this session"):
                    await first_run
            assert "connect again without reconnect= to take it back" in str(first_run.exception())
            assert first.status.history[:3] == ["connecting", "live", "reconnecting"]
            await asyncio.sleep(3)  # the second one stays, untouched
            assert second.status.state == "live" and second.status.reconnects == 0

            again = broadcaster(sources[2])  # the first device, run again: takes it back
            again_run = asyncio.create_task(again.run())
            await live(again)
            async with asyncio.timeout(WAIT):
                with pytest.raises(PublishFailed, match="another broadcaster took this session"):
                    await second_run
            again.stop("done")
            async with asyncio.timeout(WAIT):
                assert await again_run == "done"
    finally:
        for source in sources:
            await source.close()


ERRORS = {
    "not a URL": (["not-a-url"], 2, "error: not a WHIP URL: 'not-a-url'"),
    "nothing listening": (["http://127.0.0.1:{dead}/whip/1"], 1, "error: cannot reach 127.0.0.1:"),
    "refused token": (["{whip_url}", "--token", "not-a-token"], 1, "error: the server refused"),
    "unknown camera": (["{whip_url}", "--camera", "97"], 1, "error: no camera at index 97"),
    "missing file": (["{whip_url}", "--file", "{tmp}/missing.webm"], 1, "error: cannot read"),
    "not media": (["{whip_url}", "--file", "{tmp}/notes.mp4"], 1, "error: cannot read"),
    "codec mismatch": (["{whip_url}", "--file", "{vp8}"], 1, "error: the session does not take"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ERRORS))
async def test_errors_exit_non_zero_with_one_readable_line(
    server: DemoServer, organiser: Organiser, clips: dict[str, Path], tmp_path: Path, case: str
) -> None:
    links = await asyncio.to_thread(new_session, organiser, "h264")
    (tmp_path / "notes.mp4").write_text("not a video at all\n")
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    argv, expected_code, expected = ERRORS[case]
    values = {
        "whip_url": links["whip_url"],
        "dead": str(dead),
        "tmp": str(tmp_path),
        "vp8": str(clips["vp8"]),
    }
    args = [a.format(**values) for a in argv]
    if "--token" not in args:
        args += ["--token", links["whip_token"]]
    if "--camera" not in args and "--file" not in args:
        args += ["--file", str(clips["h264"])]
    proc = await start_publish(*args, "--ice-address", "127.0.0.1", outbox=tmp_path / "o.db")
    code, output = await finish(proc, 20.0)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert (code, len(errors)) == (expected_code, 1), output
    assert errors[0].startswith(expected), output
    assert "Traceback" not in output
    # Nothing was accepted, so nothing waits to be sent (and nothing reached the record).
    assert recorded_states(server, links["id"]) == []


# --- surviving a server restart ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_on(data_dir: Path, port: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``studycast serve --demo`` on a fixed port (so it can come back at the same URL)."""
    proc = subprocess.Popen(
        [
            str(STUDYCAST),
            "serve",
            "--demo",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ice-address",
            "127.0.0.1",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(data_dir / f"server-{time.monotonic_ns()}.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(base + "/healthz", timeout=2) as r,
        ):
            return bool(r.status == 200)
        return False

    try:
        wait_until(healthy, 60, "the server to answer /healthz")
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["terminate", "kill"])
async def test_a_server_restart_is_survived(
    tmp_path_factory: pytest.TempPathFactory, clips: dict[str, Path], tmp_path: Path, how: str
) -> None:
    """A stopped server closes the peer; a killed one just falls silent (no receiver reports)."""
    data_dir = tmp_path_factory.mktemp("restart")
    data_dir.mkdir(exist_ok=True)
    port = _free_port()
    first = serve_on(data_dir, port)
    base, server_proc = await asyncio.to_thread(first.__enter__)
    logins = json.loads((data_dir / "demo-logins.json").read_text())
    password = next(x["password"] for x in logins if x["username"] == "organiser")
    organiser = await asyncio.to_thread(Organiser, base, "organiser", password)
    links = await asyncio.to_thread(new_session, organiser, "h264")
    proc = await start_publish(
        *publish_args(links, clips["h264"], "--loop"), outbox=tmp_path / "outbox.db"
    )
    try:
        stats_path = f"/api/sessions/{links['id']}/stats"
        await asyncio.to_thread(
            wait_until, lambda: receiving(organiser.get(stats_path)), WAIT, "media at the relay"
        )
        if how == "kill":
            server_proc.kill()
        await asyncio.to_thread(first.__exit__, None, None, None)
        await asyncio.sleep(2.0)  # the command notices and retries against nothing
        with serve_on(data_dir, port):
            again = await asyncio.to_thread(Organiser, base, "organiser", password)
            await asyncio.to_thread(
                wait_until,
                lambda: receiving(again.get(stats_path)),
                WAIT,
                "media at the restarted relay",
            )
            proc.send_signal(signal.SIGINT)
            code, output = await finish(proc, 10.0)
            # What happened while the server was away reached the record once it was back.
            states = [e["state"] for e in recorded(data_dir, links["id"])]
    finally:
        if proc.returncode is None:
            proc.kill()
            _, err = await proc.communicate()
            print(err.decode())  # what the command saw, for the failure report
    assert code == 0, output
    print(output)  # shown with -s: how the reconnection went
    shown = re.findall(r"^\d\d:\d\d:\d\d (\w+) · ", output, re.MULTILINE)
    assert shown == ["connecting", "live", "reconnecting", "live"], output
    assert "WARNING" not in output
    assert states == ["connecting", "live", "reconnecting", "live", "ended"]

"""A ``kill -9`` of the real server in the middle of a recording leaves a segment file that plays
to within a few seconds of the kill, and the server's next start completes the segment's
catalogue row from that file (end, duration, size, SHA-256), as the recordings API then shows,
and pauses the broadcast the kill left live as of about the kill, not of the next start.

The server is ``studycast serve`` in a process group of its own, prepared with the commands an
organiser would use (``session create`` gives the WHIP token, ``user add`` the login that reads
the catalogue back); the broadcaster is a real aiortc peer publishing the pre-encoded test clip
over WHIP in real time. Nothing of the server runs in the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

import aiohttp
import av
import pytest
from relay_support import CLIP_FPS, PASSWORD, shared_clip, wait_for
from sqlalchemy import select
from support import broadcast_changes

from attendance.models import Recording
from attendance.store import Store
from client.clip import read_frame_number
from client.publisher import publish
from server.broadcast_state import RESTART_REASON
from server.settings import Settings

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CODECS = pytest.mark.parametrize("codec", ["vp8", "h264"])
STUDYCAST = Path(sys.executable).with_name("studycast")
RUNNING = re.compile(r"studycast is running at (http://127\.0\.0\.1:\d+)/")
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PUBLISH_S = 6.0
# What a kill may cost: the cluster being built (closed every second) and what was queued.
ALLOWED_LOSS_S = 3.0
OUTAGE_S = 3.0


@dataclass(frozen=True)
class Place:
    """Where the server keeps its files and its record store."""

    root: Path
    database_url: str

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def command(self, *args: str) -> list[str]:
        return [
            str(STUDYCAST),
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            self.database_url,
            *args,
        ]


def _environment() -> dict[str, str]:
    """This environment without any STUDYCAST_* setting that could point elsewhere."""
    ours = {f"STUDYCAST_{name.upper()}" for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def studycast(place: Place, *args: str, stdin: str | None = None) -> dict[str, Any]:
    """Run one ``studycast ... --json`` command to completion; its JSON answer."""
    process = await asyncio.create_subprocess_exec(
        *place.command(*args, "--json"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=place.root,  # no .env of the repository
        env=_environment(),
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            out, err = await process.communicate(None if stdin is None else stdin.encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"studycast {' '.join(args)}: {err.decode(errors='replace')}"
    answer: dict[str, Any] = json.loads(out)
    return answer


@dataclass
class Server:
    """A running ``studycast serve``, leader of its own process group."""

    base: str
    process: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    async def kill(self) -> int:
        """SIGKILL to the server and anything it started; its exit status."""
        self.signal_group(signal.SIGKILL)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            return await self.process.wait()

    async def stop(self) -> int:
        """SIGTERM (a clean shutdown), SIGKILL if it does not end in time; its exit status."""
        if self.process.returncode is not None:
            return self.process.returncode
        self.signal_group(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                return await self.process.wait()
        except TimeoutError:
            return await self.kill()


@contextlib.asynccontextmanager
async def running_server(place: Place, name: str) -> AsyncIterator[Server]:
    """``studycast serve`` on a free loopback port, offering 127.0.0.1 to WebRTC peers;
    stopped (if still running) on the way out."""
    log_path = place.root / f"{name}.log"
    log: IO[bytes] = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        *place.command("serve", "--host", "127.0.0.1", "--port", "0", "--ice-address", "127.0.0.1"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        cwd=place.root,
        env=_environment(),
        start_new_session=True,  # its own process group: the kill reaches all of it
    )
    server = Server("", process, log_path)
    try:
        assert process.stdout is not None
        seen = ""
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while not (match := RUNNING.search(seen)):
                    line = await process.stdout.readline()
                    assert line, f"serve ended before it ran:\n{seen}\n{server.log()}"
                    seen += line.decode(errors="replace")
        except TimeoutError:
            raise AssertionError(f"serve did not start:\n{seen}\n{server.log()}") from None
        server.base = match.group(1)
        yield server
    finally:
        await server.stop()
        log.close()


async def catalogue_rows(database_url: str, session_id: int) -> list[Recording]:
    store = Store(database_url)
    try:
        async with store.read() as db:
            return list(
                await db.scalars(
                    select(Recording)
                    .where(Recording.session_id == session_id)
                    .order_by(Recording.segment_index)
                )
            )
    finally:
        await store.close()


@dataclass(frozen=True)
class Decoded:
    numbers: list[int]  # drawn into each decoded picture, in decoding order
    pts: list[int]  # of each decoded picture, in its stream's time base
    end_s: float  # the end of the last picture, from the start of the file
    audio_s: float  # decoded audio, in seconds


def decode_segment(path: Path) -> Decoded:
    """Decode every picture and audio frame of a segment file (an FFmpeg error fails)."""
    with av.open(str(path)) as media:
        assert [s.type for s in media.streams] == ["video", "audio"]
        time_base = media.streams.video[0].time_base
        assert time_base is not None
        numbers: list[int] = []
        pts: list[int] = []
        for frame in media.decode(video=0):
            assert frame.pts is not None
            numbers.append(read_frame_number(frame))
            pts.append(frame.pts)
        end_s = float(pts[-1] * time_base) + 1 / CLIP_FPS if pts else 0.0
    with av.open(str(path)) as media:
        audio_s = sum(f.samples for f in media.decode(audio=0)) / 48_000
    return Decoded(numbers, pts, end_s, audio_s)


@SQLITE_ONLY
@CODECS
async def test_a_server_killed_mid_recording_leaves_a_readable_file_completed_on_restart(
    database_url: str, tmp_path: Path, codec: str
) -> None:
    place = Place(tmp_path, database_url)
    created = await studycast(
        place,
        "session",
        "create",
        f"kill -9 mid-recording ({codec})",
        "--start",
        datetime.now(UTC).isoformat(timespec="seconds"),
        "--duration",
        "60",
        "--video-codec",
        codec,
    )
    assert created["recording_enabled"] is True
    session_id, whip_token = int(created["id"]), str(created["whip_token"])
    await studycast(
        place, "user", "add", "olga", "--role", "organiser", "--password-stdin", stdin=PASSWORD
    )
    ext = {"vp8": "webm", "h264": "mkv"}[codec]
    relative = f"recordings/{session_id}/0.{ext}"
    segment = place.data_dir / relative
    clip = shared_clip(codec)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with running_server(place, "first-run") as server:
            publication = await publish(
                f"{server.base}/whip/{session_id}", whip_token, clip, http=http
            )
            try:
                await publication.wait_connected(10)
                await wait_for(segment.is_file, 10, f"{relative} to be opened ({server.log()})")
                # The file grows while the broadcast runs: a cluster is flushed every second.
                sizes = [segment.stat().st_size]
                async with asyncio.timeout(PUBLISH_S + 10):
                    while publication.video.packets_sent < PUBLISH_S * CLIP_FPS:
                        await asyncio.sleep(0.25)
                        sizes.append(segment.stat().st_size)
                published = publication.video.packets_sent
                killed_at = datetime.now(UTC)
                status = await server.kill()
            finally:
                await publication.pc.close()
            assert status == -signal.SIGKILL, server.log()
        assert sizes == sorted(sizes), sizes
        assert len(set(sizes)) >= PUBLISH_S - 2, f"the file grew only as {sizes}"
        assert publication.video.jumps == 0, "the clip was sent from its start, without a jump"

        # What the kill left: an open catalogue row, and a file that plays up to near the kill.
        [left_open] = await catalogue_rows(database_url, session_id)
        assert (left_open.segment_index, left_open.path, left_open.container) == (
            0,
            relative,
            {"vp8": "webm", "h264": "matroska"}[codec],
        )
        assert (left_open.ended_at, left_open.duration_s, left_open.sha256) == (None, None, None)
        body = segment.read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        decoded = decode_segment(segment)
        published_s = published / CLIP_FPS
        assert len(decoded.numbers) >= (published_s - ALLOWED_LOSS_S) * CLIP_FPS, (
            len(decoded.numbers),
            published,
        )
        assert decoded.numbers == list(range(len(decoded.numbers))), "a whole prefix of the clip"
        assert all(a < b for a, b in pairwise(decoded.pts)), "picture timestamps grow"
        assert decoded.pts[0] == 0
        assert decoded.audio_s >= published_s - ALLOWED_LOSS_S, (decoded.audio_s, published_s)

        # The next start completes the row from the file, and leaves the file as it was.
        await asyncio.sleep(OUTAGE_S)  # the outage: no live time
        async with running_server(place, "second-run") as again:
            async with http.post(
                f"{again.base}/api/login", json={"username": "olga", "password": PASSWORD}
            ) as r:
                assert r.status == 200, await r.text()
            base = f"{again.base}/api/sessions/{session_id}/recordings"
            async with http.get(base) as r:
                assert r.status == 200, await r.text()
                listing = await r.json()
            async with http.get(f"{base}/0/file") as r:
                assert r.status == 200
                served = await r.read()
            async with http.get(f"{again.base}/api/sessions/{session_id}") as r:
                assert r.status == 200, await r.text()
                state_after = (await r.json())["state"]
            assert await again.stop() == 0, again.log()

    [row] = listing["segments"]
    assert (row["index"], row["deleted"], row["video_codec"], row["audio_codec"]) == (
        0,
        False,
        codec,
        "opus",
    )
    assert (row["size_bytes"], row["sha256"]) == (len(body), digest)
    assert row["ended_at"] is not None and row["duration_s"] is not None
    assert abs(row["duration_s"] - decoded.end_s) < 0.3, (row["duration_s"], decoded.end_s)
    ended = datetime.fromisoformat(row["ended_at"]) - datetime.fromisoformat(row["started_at"])
    assert abs(ended.total_seconds() - row["duration_s"]) < 0.001
    assert listing["total_duration_s"] == row["duration_s"]
    assert served == body == segment.read_bytes(), "recovery and playback leave the file alone"

    [recovered] = await catalogue_rows(database_url, session_id)
    assert (recovered.size_bytes, recovered.sha256, recovered.duration_s) == (
        len(body),
        digest,
        row["duration_s"],
    )
    assert recovered.deleted_at is None

    # The broadcast the kill left live is paused as of its last sign (the recording's end, or
    # the node's last report), before the kill and not at the next start.
    assert state_after == "paused"
    store = Store(database_url)
    try:
        changes = await broadcast_changes(store, session_id)
    finally:
        await store.close()
    assert [c["state"] for c in changes] == ["live", "paused"], changes
    assert changes[1]["reason"] == RESTART_REASON
    paused_at = datetime.fromisoformat(changes[1]["at"])
    # (+ 1 s: the recording's end is its start plus the media's duration, which may run a
    # little ahead of the wall clock)
    early, late = timedelta(seconds=ALLOWED_LOSS_S + 3), timedelta(seconds=1)
    assert killed_at - early <= paused_at <= killed_at + late, (
        paused_at,
        killed_at,
    )

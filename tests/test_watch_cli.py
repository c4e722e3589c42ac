"""``studycast watch``: its pure parts, then the real command against ``studycast serve --demo``.

The first tests drive ``Liveness`` (when to wait, when to reconnect) with a fixed clock, and the
small pure helpers (URL parsing, error judging, the sound buffer, the composed picture with its
QR code). The rest run the command as a subprocess on loopback against a real server whose demo
session a Python WHIP publisher broadcasts: headless playback recorded as venue uptime and venue
heartbeats, every error case, the OpenCV window under Xvfb, and a server killed and started again
on the same data dir and port while ``watch`` goes on (it runs last: it restarts the server).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from conftest import missing_service
from web_session_support import STUDYCAST, Broadcast, Organiser, clip_for, wait_until

from client.audio import (
    BYTES_PER_FRAME,
    PcmBuffer,
    PcmConverter,
    SilentSink,
    open_audio_output,
)
from client.clip import draw_frame, read_frame_number
from client.liveness import Liveness, Verdict
from client.publisher import MAX_RETRY_AFTER_S, SignallingError, retry_after_seconds
from client.screen import CheckinCode, compose
from client.watch import Target, Watcher, WatchError, judge, parse_target
from server.relay.ice import advertise_addresses
from server.tokens import TokenRole, issue

VENUE = "bj-chaoyang-1"
START_WITHIN_S = 60.0
WAIT_S = 30.0  # upper bound for any single wait on the server or the command
XVFB = Path("/usr/bin/Xvfb")
XVFB_ARGS = ["-screen", "0", "1280x720x24", "-nolisten", "tcp"]
SERVE = ["serve", "--demo", "--host", "127.0.0.1", "--ice-address", "127.0.0.1"]
HEADLESS = ["--headless", "--ice-address", "127.0.0.1", "--status-every", "0.5"]
STATUS = re.compile(
    r"(?P<state>\w+) (?P<size>\d+x\d+) (?P<fps>[\d.]+) fps frames=(?P<frames>\d+) "
    r"uptime=(?P<uptime>\d\d:\d\d:\d\d) reconnects=(?P<reconnects>\d+)"
)
C, P, W, R, E = Verdict  # connecting, playing, waiting, reconnect, ended


# --- Liveness: what a connection is doing -----------------------------------------------------


def run_script(
    liveness: Liveness, script: list[tuple[float, Callable[[float], Any] | None]]
) -> list[Verdict]:
    """Apply each step at its time (``None``: only ask), collecting the verdict after each."""
    verdicts = []
    for now, step in script:
        if step is not None:
            step(now)
        verdicts.append(liveness.verdict(now))
    return verdicts


def test_a_paused_broadcast_waits_and_a_silent_live_one_reconnects() -> None:
    live = Liveness(stall_s=5, playing_gap_s=1.5, connect_within_s=15)
    verdicts = run_script(
        live,
        [
            (0.0, lambda t: (live.session_state("live", t), live.opened(t))),
            (0.5, None),
            (1.0, live.connected),
            (1.2, live.media),
            (2.0, live.media),
            (4.0, None),  # 2 s without media: not playing, not lost yet
            (4.5, lambda t: live.session_state("paused", t)),
            (60.0, None),  # paused: waits as long as it takes
            (61.0, lambda t: live.session_state("live", t)),
            (65.9, None),  # live again: media gets stall_s to come back
            (66.0, None),
        ],
    )
    assert verdicts == [C, C, W, P, P, W, W, W, W, W, R]
    assert live.reason == "no media although the broadcast is live (5 s)"


def test_a_lost_server_reconnects_and_so_does_one_that_came_back() -> None:
    live = Liveness(stall_s=5, playing_gap_s=1.5)
    verdicts = run_script(
        live,
        [
            (0.0, lambda t: (live.session_state("live", t), live.opened(t), live.connected(t))),
            (1.0, live.media),
            (2.0, lambda t: live.stream_lost()),
            (4.0, None),
            (6.0, None),  # 5 s since the last media, the stream gone: the server is
        ],
    )
    assert verdicts == [W, P, P, W, R]
    assert live.reason == "the server is out of reach (5 s)"
    # A new connection is made while the stream is still down; the stream then comes back.
    verdicts = run_script(
        live,
        [
            (7.0, lambda t: (live.opened(t), live.connected(t))),
            (8.0, lambda t: live.session_state("paused", t)),  # snapshot after the loss
            (9.0, lambda t: (live.opened(t), live.connected(t))),
            (30.0, None),
        ],
    )
    assert verdicts == [W, R, W, W]
    assert live.reason == "the server came back"


def test_ice_failure_slow_ice_unknown_state_and_the_end() -> None:
    live = Liveness(stall_s=5, blind_stall_s=20, connect_within_s=15)
    assert run_script(
        live,
        [
            (0.0, live.opened),
            (14.9, None),
            (15.0, None),
        ],
    ) == [C, C, R]
    assert live.reason == "not connected within 15 s"
    assert run_script(
        live,
        [
            (20.0, lambda t: (live.opened(t), live.connected(t))),
            (39.9, None),  # state unknown (a shared viewer token reads no event stream)
            (40.0, None),
            (
                41.0,
                lambda t: (live.opened(t), live.connected(t), live.failed("the connection failed")),
            ),
            (42.0, lambda t: (live.opened(t), live.connected(t), live.session_state("ended", t))),
        ],
    ) == [W, W, R, R, E]


# --- small pure parts -------------------------------------------------------------------------


def test_the_whep_url_names_the_server_and_the_session() -> None:
    token = issue(
        "k" * 48,
        session_id=7,
        role=TokenRole.VENUE,
        subject=f"venue:{VENUE}",
        now=datetime.now(UTC),
    )
    target = parse_target("https://example.org/studycast/whep/7/", token)
    assert target == Target(
        "https://example.org/studycast/whep/7/",
        "https://example.org/studycast",
        7,
        "venue",
        f"venue:{VENUE}",
    )
    assert target.api("events") == "https://example.org/studycast/api/sessions/7/events"
    assert (target.venue, target.reports) == (VENUE, True)
    viewer = parse_target("http://127.0.0.1:8080/whep/7", "not a jwt")
    assert (viewer.base, viewer.venue, viewer.reports) == ("http://127.0.0.1:8080", None, False)
    for bad in (
        "not-a-url",
        "ftp://h/whep/7",
        "http://h/whip/7",
        "http://h/whep/x",
        "http:///whep/1",
    ):
        with pytest.raises(WatchError, match="is not a WHEP URL"):
            parse_target(bad, token)


def test_failed_offers_are_judged_final_or_retried() -> None:
    def outcome(status: int | None, code: str = "x", *, first: bool = False) -> object:
        result = judge(SignallingError("d", status=status, code=code, url="U"), first=first)
        return result.code if isinstance(result, WatchError) else result

    assert [outcome(s) for s in (401, 403, 404, 400, 503, 500, 429)] == [
        "refused",
        "refused",
        "not_found",
        "x",
        None,
        None,
        None,
    ]
    assert outcome(None, "unreachable", first=True) == "watch_failed"  # a typo, not an outage
    assert outcome(None, "unreachable") is None
    assert outcome(409, "session_ended", first=True) == "session_ended"
    assert outcome(409, "session_ended") is Verdict.ENDED


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    now = datetime(2026, 12, 7, 22, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("30", now) == 30.0
    assert retry_after_seconds(" 5 ", now) == 5.0
    assert retry_after_seconds("Mon, 07 Dec 2026 22:01:30 GMT", now) == 90.0
    assert retry_after_seconds("Mon, 07 Dec 2026 21:00:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds("9" * 5000, now) == 365 * 86_400  # absurd, not a crash
    for unreadable in (None, "", "soon", "-5", "1.5", "\u0663\u0660"):  # "٣٠": digits, not ASCII
        assert retry_after_seconds(unreadable, now) is None, unreadable


def test_a_long_retry_after_is_capped_and_a_short_one_does_not_shorten_the_backoff() -> None:
    said: list[str] = []
    player = Watcher(None, parse_target("http://h/whep/1", "x"), "x", say=said.append)  # type: ignore[arg-type]
    player._retry_after = 3600.0
    assert player._next_wait(1.0) == MAX_RETRY_AFTER_S == 150.0
    assert said and said[0].startswith("the server asked to try again in 150 s")
    player._retry_after = 0.5
    assert player._next_wait(4.0) == 4.0
    assert player._next_wait(2.0) == 2.0  # asked once, for the next attempt only


def test_sound_is_buffered_briefly_and_converted_to_s16_stereo() -> None:
    buffer = PcmBuffer(8 * BYTES_PER_FRAME)
    buffer.write(bytes(range(1, 25)))  # 6 sample frames
    buffer.write(bytes(range(25, 41)))  # 4 more: the oldest 2 are dropped
    assert (len(buffer), buffer.dropped) == (32, 8)
    assert buffer.read(8) == bytes(range(9, 17))
    assert buffer.read(40) == bytes(range(17, 41)) + bytes(16)  # then silence
    assert buffer.underruns == 1
    frame = av.AudioFrame.from_ndarray(
        np.zeros((2, 960), dtype=np.float32), format="fltp", layout="stereo"
    )
    frame.sample_rate = 48_000
    assert len(PcmConverter().convert(frame)) == 960 * BYTES_PER_FRAME


def test_the_picture_is_letterboxed_with_a_readable_checkin_code() -> None:
    url = "http://127.0.0.1:8080/member.html#checkin=7.bj-chaoyang-1.59712345.0123456789abcdef"
    code = CheckinCode(url, "123456", datetime.now(UTC))
    frame = draw_frame(1234, 640, 480)
    canvas = compose(frame.to_ndarray(format="bgr24"), (1280, 720), code=code)
    assert canvas.shape == (720, 1280, 3)
    assert canvas[:, :150].max() == 0 and canvas[:, 1130:].max() > 0  # bars left, panel right
    assert read_frame_number(video_region(canvas)) == 1234
    assert decode_qr(canvas) == url
    card = compose(None, (640, 360), title="waiting for the broadcast")
    assert card.shape == (360, 640, 3) and card.max() == 255  # the white title


def decode_qr(picture: np.ndarray[Any, Any]) -> str:
    """The text of the QR code in ``picture``: OpenCV's classic detector misses a few percent of
    perfectly good codes (whatever their size), so its ArUco-based one gets a second look."""
    return str(
        cv2.QRCodeDetector().detectAndDecode(picture)[0]
        or cv2.QRCodeDetectorAruco().detectAndDecode(picture)[0]
    )


def video_region(picture: np.ndarray[Any, Any], source: tuple[int, int] = (640, 480)) -> Any:
    """Where ``compose`` puts a ``source``-sized picture on this one, as a frame to read."""
    height, width = picture.shape[:2]
    scale = min(width / source[0], height / source[1])
    w, h = round(source[0] * scale), round(source[1] * scale)
    x, y = (width - w) // 2, (height - h) // 2
    region = np.ascontiguousarray(picture[y : y + h, x : x + w])
    return av.VideoFrame.from_ndarray(region, format="bgr24")


# --- a server that can be restarted -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoProcess:
    """``studycast serve --demo`` on 127.0.0.1 at a fixed port, so that it can be stopped and
    started again on the same data dir and port (what a restart is)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.session_id = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._organiser: Organiser | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "STUDYCAST_TICK_INTERVAL_S": "0.2",
            "STUDYCAST_EVIDENCE_INTERVAL_S": "1",
        }
        command = [
            str(STUDYCAST),
            *SERVE,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        self.starts += 1
        self._organiser = None
        log = (self.data_dir / f"server-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        banner = self._banner()
        if self.session_id == 0:
            found = re.search(r"demo session id:\s+(\d+)", banner)
            assert found, banner
            self.session_id = int(found.group(1))

    def _banner(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        text = ""
        deadline = time.monotonic() + START_WITHIN_S
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(timeout=left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                text += chunk.decode(errors="replace")
                if "Press Ctrl-C to stop." in text:
                    return text
        raise AssertionError(f"the server did not start (exit code {self.proc.poll()}):\n{text}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.send_signal(sig)
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT_S)
        assert proc.stdout is not None
        proc.stdout.close()

    def organiser(self) -> Organiser:
        """The demo organiser, logged in again after each start."""
        if self._organiser is None:
            logins = json.loads((self.data_dir / "demo-logins.json").read_text(encoding="utf-8"))
            password = next(x["password"] for x in logins if x["username"] == "organiser")
            self._organiser = Organiser(self.base, "organiser", password)
        return self._organiser

    def token(self, session_id: int, role: TokenRole, subject: str) -> str:
        """A token signed with the server's own key (for sessions it does not have)."""
        secret = (self.data_dir / "secret_key").read_text(encoding="utf-8").strip()
        return issue(
            secret, session_id=session_id, role=role, subject=subject, now=datetime.now(UTC)
        )

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the record store's SQLite file (read-only, beside the running server)."""
        db = sqlite3.connect(f"file:{self.data_dir / 'studycast.db'}?mode=ro", uri=True)
        try:
            return list(db.execute(sql, args))
        finally:
            db.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    advertise_addresses(["127.0.0.1"])  # the test's publisher: loopback only, as the server
    demo = DemoProcess(tmp_path_factory.mktemp("watch-demo"))
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def venue_token(server: DemoProcess) -> str:
    links = server.organiser().get(f"/api/sessions/{server.session_id}/member-links")
    url = next(v["url"] for v in links["venues"] if v["slug"] == VENUE)
    return str(url.split("&t=", 1)[1])


@pytest.fixture(scope="module")
def broadcast(server: DemoProcess) -> Iterator[Broadcast]:
    organiser = server.organiser()
    session = organiser.get(f"/api/sessions/{server.session_id}")
    links = organiser.get(f"/api/sessions/{server.session_id}/links")
    b = Broadcast(links["whip_url"], links["whip_token"], clip_for(session["video_codec"]))
    b.start()
    try:
        yield b
    finally:
        b.close()


# --- the command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """One status line of ``--headless``, with when it was read."""

    at: float
    state: str
    size: str
    fps: float
    frames: int
    uptime_s: int
    reconnects: int

    @classmethod
    def parse(cls, at: float, line: str) -> Status | None:
        m = STATUS.match(line)
        if m is None:
            return None
        h, mi, sec = (int(x) for x in m["uptime"].split(":"))
        fps, frames, reconnects = float(m["fps"]), int(m["frames"]), int(m["reconnects"])
        return cls(at, m["state"], m["size"], fps, frames, h * 3600 + mi * 60 + sec, reconnects)


class WatchProcess:
    """``studycast watch ...`` as a subprocess; its output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(STUDYCAST), "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[tuple[float, str]]) -> None:
        for line in stream:
            into.append((time.monotonic(), line.rstrip("\n")))

    def statuses(self) -> list[Status]:
        return [s for at, line in list(self.out) if (s := Status.parse(at, line)) is not None]

    def wait_for(
        self, check: Callable[[Status], bool], what: str, within: float = WAIT_S
    ) -> Status:
        def seen() -> Status | None:
            assert self.proc.poll() is None, f"watch exited ({self.proc.returncode}): {self.stderr}"
            return next((s for s in reversed(self.statuses()) if check(s)), None)

        found: Status = wait_until(seen, within, what)
        return found

    def finish(self, within: float = WAIT_S) -> int:
        code = self.proc.wait(timeout=within)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT_S)


def headless(server: DemoProcess, outbox: Path, *extra: str) -> list[str]:
    whep = f"{server.base}/whep/{server.session_id}"
    return [whep, *HEADLESS, *extra, "--outbox", str(outbox)]


def venue_figures(server: DemoProcess) -> dict[str, Any]:
    report = server.organiser().get(f"/api/sessions/{server.session_id}/report/venues")
    return dict(next(v for v in report["venues"] if v["venue"] == VENUE))


def venue_viewers(server: DemoProcess) -> int:
    stats = server.organiser().get(f"/api/sessions/{server.session_id}/stats")
    return int(stats["viewers"]["by_kind"].get("venue", 0))


def states(statuses: list[Status]) -> list[str]:
    """The states a watch went through, each run of one state once."""
    seen: list[str] = []
    for s in statuses:
        if not seen or seen[-1] != s.state:
            seen.append(s.state)
    return seen


# --- headless playback, recorded ----------------------------------------------------------------


@pytest.mark.slow
def test_headless_watch_plays_and_is_recorded_as_venue_uptime(
    server: DemoProcess, broadcast: Broadcast, venue_token: str, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    watch = WatchProcess(
        headless(server, outbox, "--max-seconds", "10"), {"STUDYCAST_WATCH_TOKEN": venue_token}
    )
    try:
        watch.wait_for(lambda s: s.state == "playing" and s.frames > 30, "frames")
        assert venue_viewers(server) == 1
        assert watch.finish() == 0, watch.stderr
    finally:
        watch.close()
    statuses = watch.statuses()
    assert states(statuses) in (["playing"], ["connecting", "playing"])
    playing = [s for s in statuses if s.state == "playing"]
    frames = [s.frames for s in playing]
    assert len(frames) >= 10 and frames == sorted(frames) and frames[-1] - frames[0] > 150
    assert {s.size for s in playing} == {"640x480"}
    assert playing[-1].uptime_s >= 7 and 20 <= playing[-1].fps <= 40
    assert {s.reconnects for s in statuses} == {0}
    assert "Traceback" not in watch.stderr
    # The WHEP resource was deleted on the way out, and the relay's evidence made uptime.
    wait_until(lambda: venue_viewers(server) == 0, 5, "the viewer to be gone")
    figures = wait_until(
        lambda: (v := venue_figures(server))["uptime_s"] >= 5 and v, 10, "venue uptime"
    )
    assert figures["uptime_s"] <= figures["live_s"]
    # The screen's own view: a venue heartbeat, sent through the outbox and answered.
    heartbeats = server.rows(
        "SELECT payload FROM attendance_events WHERE session_id = ? AND kind = 'heartbeat' "
        "AND source = ?",
        server.session_id,
        f"venue:{VENUE}",
    )
    assert [json.loads(p)["visible"] for (p,) in heartbeats] == [True]
    db = sqlite3.connect(outbox)
    assert [s for (s,) in db.execute("SELECT status FROM outbox")] == ["accepted"]
    db.close()


@pytest.mark.slow
def test_a_member_and_a_shared_viewer_token_watch_too(
    server: DemoProcess, broadcast: Broadcast, tmp_path: Path
) -> None:
    organiser = server.organiser()
    links = organiser.get(f"/api/sessions/{server.session_id}/member-links")
    member = links["members"][0]
    member_token = member["url"].split("&t=", 1)[1]
    viewer_token = organiser.get(f"/api/sessions/{server.session_id}/links")["whep_token"]
    watches = [
        WatchProcess(
            headless(server, tmp_path / f"{name}.db", "--max-seconds", "6"),
            {"STUDYCAST_WATCH_TOKEN": token},
        )
        for name, token in (("member", member_token), ("viewer", viewer_token))
    ]
    try:
        codes = [w.finish() for w in watches]
    finally:
        for w in watches:
            w.close()
    assert codes == [0, 0], [w.stderr for w in watches]
    for w in watches:
        assert w.statuses()[-1].state == "playing" and w.statuses()[-1].frames > 60
    # A member watching alone reports their own heartbeats; a shared link reports nothing.
    heartbeats = server.rows(
        "SELECT source FROM attendance_events WHERE session_id = ? AND kind = 'heartbeat' "
        "AND source LIKE 'member:%'",
        server.session_id,
    )
    assert heartbeats == [(f"member:{member['member_no']}",)]
    assert "record: a shared viewer token; the screen sends no heartbeats" in watches[1].stderr
    assert not (tmp_path / "viewer.db").exists()


def test_sound_goes_to_a_device_or_says_once_why_not() -> None:
    said: list[str] = []
    assert isinstance(open_audio_output(enabled=False, say=said.append), SilentSink)
    assert said == []
    sink = open_audio_output(enabled=True, say=said.append)
    try:
        if isinstance(sink, SilentSink):  # no sounddevice, no PortAudio or no device here
            assert len(said) == 1 and said[0].startswith("audio: "), said
        else:
            assert said == []
    finally:
        sink.close()


# --- errors -------------------------------------------------------------------------------------


ERRORS = {
    "bad url": (lambda s, t: ["not-a-url", "--token", t, "--headless"], "is not a WHEP URL"),
    "nothing listening": (
        lambda s, t: [f"http://127.0.0.1:{free_port()}/whep/1", "--token", t, "--headless"],
        "cannot reach http://127.0.0.1:",
    ),
    "malformed token": (
        lambda s, t: [f"{s.base}/whep/{s.session_id}", "--token", "garbage", "--headless"],
        "the server refused the token (HTTP 401 invalid_token)",
    ),
    "broadcaster token": (
        lambda s, t: [
            f"{s.base}/whep/{s.session_id}",
            "--token",
            s.token(s.session_id, TokenRole.BROADCASTER, f"session:{s.session_id}"),
            "--headless",
        ],
        "the server refused the token (HTTP 403 wrong_role)",
    ),
    "no such session": (
        lambda s, t: [
            f"{s.base}/whep/987654",
            "--token",
            s.token(987654, TokenRole.VENUE, f"venue:{VENUE}"),
            "--headless",
        ],
        "no such session at http://127.0.0.1:",
    ),
    "bad ice address": (
        lambda s, t: ["http://h/whep/1", "--token", t, "--headless", "--ice-address", "nope"],
        "ICE address 'nope' is not an IP address",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_end_the_watch_with_one_readable_message(
    case: str, server: DemoProcess, venue_token: str, tmp_path: Path
) -> None:
    make_args, message = ERRORS[case]
    args = [*make_args(server, venue_token), "--outbox", str(tmp_path / "o.db")]
    watch = WatchProcess([*args, "--max-seconds", "20"])
    try:
        code = watch.finish()
    finally:
        watch.close()
    assert code != 0
    errors = [line for _, line in watch.err if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], watch.stderr
    assert "Traceback" not in watch.stderr
    assert watch.statuses() == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("display", "message"),
    [(None, "there is no display (DISPLAY is not set)"), (":4271", "cannot open the display")],
)
def test_a_window_without_a_display_suggests_headless(
    display: str | None, message: str, server: DemoProcess, venue_token: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    if display is not None:
        env["DISPLAY"] = display
    args = [f"{server.base}/whep/{server.session_id}", "--token", venue_token]
    result = subprocess.run(
        [str(STUDYCAST), "watch", *args, "--outbox", str(tmp_path / "o.db")],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT_S,
    )
    assert result.returncode != 0
    assert message in result.stderr and "use --headless" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- the window ---------------------------------------------------------------------------------


@contextmanager
def xvfb() -> Iterator[str]:
    """A virtual X screen of 1280x720 (``DISPLAY`` value); skipped, or failed in CI, without
    Xvfb."""
    if not XVFB.exists():
        missing_service(f"the window test needs Xvfb at {XVFB} (apt-get install xvfb)")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [str(XVFB), "-displayfd", str(write_end), *XVFB_ARGS],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(read_end, selectors.EVENT_READ)
            assert sel.select(timeout=WAIT_S), "Xvfb did not start"
        number = os.read(read_end, 64).decode().strip()
        assert number.isdigit(), f"Xvfb said {number!r}"
        yield f":{number}"
    finally:
        os.close(read_end)
        proc.terminate()
        proc.wait(timeout=WAIT_S)


class XImage(ctypes.Structure):
    """The start of Xlib's XImage: enough to read the pixels."""

    _fields_ = (
        [(name, ctypes.c_int) for name in ("width", "height", "xoffset", "format")]
        + [("data", ctypes.POINTER(ctypes.c_ubyte))]
        + [(name, ctypes.c_int) for name in ("byte_order", "bitmap_unit", "bitmap_bit_order")]
        + [(name, ctypes.c_int) for name in ("bitmap_pad", "depth", "bytes_per_line")]
        + [("bits_per_pixel", ctypes.c_int)]
    )


def screenshot(display: str, size: tuple[int, int] = (1280, 720)) -> np.ndarray[Any, Any]:
    """The whole X screen as a BGR image, read with libX11's XGetImage (24-bit TrueColor)."""
    x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XDefaultRootWindow.restype = ctypes.c_ulong
    x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x11.XGetImage.restype = ctypes.POINTER(XImage)
    x11.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, *[ctypes.c_int] * 2]
    x11.XGetImage.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
    x11.XDestroyImage.argtypes = [ctypes.POINTER(XImage)]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = x11.XOpenDisplay(display.encode())
    assert handle, f"cannot open {display}"
    try:
        width, height = size
        image = x11.XGetImage(
            handle, x11.XDefaultRootWindow(handle), 0, 0, width, height, 2**32 - 1, 2
        )
        info = image.contents
        assert info.bits_per_pixel == 32, info.bits_per_pixel
        raw = ctypes.string_at(info.data, info.bytes_per_line * height)
        x11.XDestroyImage(image)
    finally:
        x11.XCloseDisplay(handle)
    rows = np.frombuffer(raw, np.uint8).reshape(height, -1)[:, : width * 4]
    return np.ascontiguousarray(rows.reshape(height, width, 4)[:, :, :3])


@pytest.mark.slow
def test_the_window_shows_the_video_and_the_venue_checkin_code(
    server: DemoProcess, broadcast: Broadcast, venue_token: str, tmp_path: Path
) -> None:
    snapshot = tmp_path / "last.png"
    with xvfb() as display:
        args = [
            f"{server.base}/whep/{server.session_id}",
            "--fullscreen",
            "--ice-address",
            "127.0.0.1",
            "--outbox",
            str(tmp_path / "outbox.db"),
            "--max-seconds",
            "12",
            "--snapshot",
            str(snapshot),
        ]
        watch = WatchProcess(args, {"DISPLAY": display, "STUDYCAST_WATCH_TOKEN": venue_token})
        try:
            shots: list[np.ndarray[Any, Any]] = []

            def moving_video() -> list[int] | None:
                assert watch.proc.poll() is None, watch.stderr
                shots.append(screenshot(display))
                numbers = [read_frame_number(video_region(shot)) for shot in shots[-3:]]
                # The clip has 120 frames; a waiting card reads as one number over and over.
                return numbers if len(set(numbers)) > 1 and max(numbers) < 120 else None

            numbers = wait_until(moving_video, WAIT_S, "moving video on the screen", every=0.3)
            url = decode_qr(shots[-1])
            assert watch.finish() == 0, watch.stderr
        finally:
            watch.close()
    assert len(numbers) == 3
    # The QR code in the corner is the venue's current check-in code: a member scans it in.
    prefix = f"{server.base}/member.html#checkin={server.session_id}.{VENUE}."
    assert url.startswith(prefix), url
    window, sig = url.removeprefix(prefix).split(".")
    organiser = server.organiser()
    links = organiser.get(f"/api/sessions/{server.session_id}/member-links")
    member_token = links["members"][0]["url"].split("&t=", 1)[1]
    answer = post_json(
        f"{server.base}/api/sessions/{server.session_id}/events",
        member_token,
        {
            "events": [
                {
                    "id": "5d8f5d6e-6a5e-4b9e-9a53-0d5c3f4b2a11",
                    "type": "check_in",
                    "at": datetime.now(UTC).isoformat(),
                    "venue": VENUE,
                    "session": server.session_id,
                    "window": int(window),
                    "sig": sig,
                }
            ]
        },
    )
    assert answer["results"][0]["status"] == "accepted", answer
    # What the window showed last was saved, and it is the same kind of picture.
    saved = cv2.imread(str(snapshot))
    assert saved is not None and saved.shape == (720, 1280, 3)
    assert decode_qr(saved).startswith(prefix)
    assert read_frame_number(video_region(saved)) < 120
    assert "Traceback" not in watch.stderr


def post_json(url: str, token: str, body: Any) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        return json.loads(response.read())


# --- a server restart ---------------------------------------------------------------------------


@pytest.mark.slow
def test_watch_survives_a_server_restart_and_uptime_resumes(
    server: DemoProcess, broadcast: Broadcast, venue_token: str, tmp_path: Path
) -> None:
    watch = WatchProcess(
        headless(server, tmp_path / "outbox.db", "--max-seconds", "120"),
        {"STUDYCAST_WATCH_TOKEN": venue_token},
    )
    try:
        watch.wait_for(lambda s: s.state == "playing" and s.frames > 60, "frames")
        time.sleep(1.5)  # one more evidence sample
        uptime_before = venue_figures(server)["uptime_s"]
        killed_at = time.monotonic()
        server.stop(signal.SIGKILL)  # a crash: no goodbye to anyone
        lost = watch.wait_for(
            lambda s: s.at > killed_at and s.state == "reconnecting", "the watch to notice"
        )
        time.sleep(2.0)  # it keeps trying while nothing listens, without giving up
        assert watch.proc.poll() is None, watch.stderr
        server.start()
        broadcast.stop()  # the broadcaster reconnects too (its old resource is gone)
        broadcast.start()
        watch.wait_for(
            lambda s: s.state == "playing" and s.reconnects >= 1 and s.frames > lost.frames + 90,
            "frames after the restart",
            within=45,
        )
        watch.proc.send_signal(signal.SIGINT)
        assert watch.finish() == 0, watch.stderr
    finally:
        watch.close()
    seen = states(watch.statuses())
    assert seen[seen.index("playing") :][:1] == ["playing"] and seen[-1] == "playing", seen
    assert "reconnecting" in seen and set(seen) <= {
        "connecting",
        "playing",
        "waiting",
        "reconnecting",
    }
    assert "Traceback" not in watch.stderr
    assert "reconnecting: " in watch.stderr  # it said why
    wait_until(
        lambda: venue_figures(server)["uptime_s"] >= uptime_before + 2,
        15,
        "venue uptime to grow after the restart",
    )

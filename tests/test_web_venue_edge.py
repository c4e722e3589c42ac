"""Killing one edge makes its venue screens play from the origin within 5 s.

Real processes on a fresh PostgreSQL database: an origin (``studycast serve --demo``) and an
edge of it (``serve --origin --node-token``), sharing the store and the secret key. The demo
venue is assigned the edge with the CLI; the Python WHIP publisher broadcasts to the origin; a
real Chromium opens the venue link, which points at the edge. Then the edge gets SIGKILL, and the
screen must show frames from the origin within 5 s; started again, the edge gets its screen back.

The time is measured in the page: every presented frame (``requestVideoFrameCallback``) is
stamped with the wall clock and the node the player plays from; the kill is stamped by the
test on the same clock.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright
from web_session_support import (
    STUDYCAST,
    Broadcast,
    Organiser,
    clip_for,
    launch_chromium,
    playing,
    wait_until,
)

from server.settings import Settings

pytestmark = pytest.mark.slow

VENUE = "bj-chaoyang-1"
SECRET = "venue-edge-test-secret-0123456789abcdef"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
FAILOVER_LIMIT_S = 5.0
WAIT_MS = 20_000

# Stamps every frame the venue screen presents: wall clock, the node played from, and the
# MediaStream it came from (a frame of the old stream may still be shown after a switch).
FRAME_LOG_JS = """
(() => {
  window.frameLog = [];
  const ids = new WeakMap();
  let streams = 0;
  window.streamId = (stream) => {
    if (!stream) return 0;
    if (!ids.has(stream)) ids.set(stream, ++streams);
    return ids.get(stream);
  };
  const hook = () => {
    const video = document.getElementById('video');
    if (!video) return setTimeout(hook, 20);
    const seen = (_now, meta) => {
      const player = window.studycastPlayer;
      window.frameLog.push({
        at: Date.now(),
        node: player ? player.node : -1,
        stream: window.streamId(video.srcObject),
      });
      if (window.frameLog.length > 4000) window.frameLog.splice(0, 2000);
      video.requestVideoFrameCallback(seen);
    };
    video.requestVideoFrameCallback(seen);
  };
  document.addEventListener('DOMContentLoaded', hook);
})();
"""


STREAM_JS = "window.streamId(document.getElementById('video').srcObject)"
TIME_JS = """() => {
  const video = document.getElementById('video');
  return {
    stream: window.streamId(video.srcObject),
    time: video.currentTime,
    width: video.videoWidth,
  };
}"""


PLAYER_JS = """() => {
  const video = document.getElementById('video');
  const player = window.studycastPlayer;
  return {
    state: player && player.state,
    node: player && player.node,
    pc: player && player._pc && player._pc.connectionState,
    frames: video.getVideoPlaybackQuality().totalVideoFrames,
    time: video.currentTime,
    log: (window.frameLog || []).slice(-5),
    banner: document.getElementById('banner').dataset.banner,
  };
}"""


@dataclass
class Node:
    """One ``studycast serve`` process and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    log_path: Path
    session_id: int | None


def node_env(database_url: str) -> dict[str, str]:
    """The environment every node and CLI run of the test shares: store, key, fast ticks."""
    ours = {f"STUDYCAST_{name.upper()}" for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "STUDYCAST_DATABASE_URL": database_url,
            "STUDYCAST_SECRET_KEY": SECRET,
            "STUDYCAST_TICK_INTERVAL_S": "0.2",
            "STUDYCAST_EVIDENCE_INTERVAL_S": "1",
        }
    )
    return env


def studycast(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [str(STUDYCAST), *args], cwd=cwd, env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout.decode()


def start_node(name: str, env: dict[str, str], data_dir: Path, *args: str, port: int = 0) -> Node:
    """``studycast serve ARGS`` on 127.0.0.1, one process; returns once it says where it runs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    command = [
        str(STUDYCAST),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",  # one process: SIGKILL takes the whole node down
        "--ice-address",
        "127.0.0.1",
        "--data-dir",
        str(data_dir),
        *args,
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, cwd=data_dir, stdout=subprocess.PIPE, stderr=log, env=env)
    text = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            base = re.search(r"studycast is running at (http://[^\s/]+)", text)
            session = re.search(r"demo session id:\s+(\d+)", text)
            if base and (session or "--demo" not in args) and "Press Ctrl-C" in text:
                return Node(
                    name, proc, base.group(1), log_path, int(session.group(1)) if session else None
                )
    stop_node(Node(name, proc, "", log_path, None))
    raise AssertionError(
        f"{name} did not start (exit code {proc.poll()}):\n{text}\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


def stop_node(node: Node) -> None:
    if node.proc.poll() is None:
        node.proc.terminate()
        try:
            node.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(timeout=STOP_TIMEOUT_S)
    if node.proc.stdout is not None:
        node.proc.stdout.close()


@dataclass
class Deployment:
    origin: Node
    edge: Node
    session_id: int
    organiser: Organiser
    env: dict[str, str]
    edge_args: tuple[str, ...]
    root: Path
    nodes: list[Node]

    def restart_edge(self) -> None:
        """The edge again, on the port it had (the venue's edge URL)."""
        port = int(self.edge.base.rpartition(":")[2])
        self.edge = start_node("edge-1", self.env, self.root / "edge-1", *self.edge_args, port=port)
        self.nodes.append(self.edge)


@contextmanager
def origin_and_edge(database_url: str, root: Path) -> Iterator[Deployment]:
    """An origin with the demo organisation and one edge of it, ``edge-1``; the demo venue
    plays from the edge. Both stopped afterwards (the edge may be dead already)."""
    env = node_env(database_url)
    nodes: list[Node] = []  # every process started, the restarted edge too
    try:
        origin = start_node("origin", env, root / "origin", "--demo")
        nodes.append(origin)
        token = studycast(env, root, "node", "token", "edge-1").strip()
        edge_args = ("--origin", origin.base, "--node-token", token, "--node-name", "edge-1")
        edge = start_node("edge-1", env, root / "edge-1", *edge_args)
        nodes.append(edge)
        assigned = studycast(env, root, "venue", "edge", VENUE, edge.base)
        assert assigned == f"venue {VENUE} plays from the edge {edge.base}\n"
        assert origin.session_id is not None
        logins = (root / "origin" / "demo-logins.json").read_text(encoding="utf-8")
        password = next(x["password"] for x in json.loads(logins) if x["username"] == "organiser")
        yield Deployment(
            origin,
            edge,
            origin.session_id,
            Organiser(origin.base, "organiser", password),
            env,
            edge_args,
            root,
            nodes,
        )
    finally:
        for node in reversed(nodes):
            stop_node(node)


def node_row(organiser: Organiser, name: str) -> dict[str, Any]:
    rows = organiser.get("/api/nodes")["nodes"]
    return next((r for r in rows if r["name"] == name), {})


def served(organiser: Organiser, name: str, session_id: int) -> dict[str, int]:
    """The viewers by kind a node reports for the session."""
    row = node_row(organiser, name)
    return dict(row.get("sessions", {}).get(str(session_id), {}).get("by_kind", {}))


def advancing(page: Any, within: float = 10.0) -> None:
    """The picture's time advances by half a second within one stream (a new stream starts
    at 0 again, so ``web_session_support.playing`` cannot tell right after a switch)."""
    first = page.evaluate(TIME_JS)

    def moved() -> bool:
        nonlocal first
        now = page.evaluate(TIME_JS)
        if now["stream"] != first["stream"] or now["width"] == 0:
            first = now
            return False
        return bool(now["time"] > first["time"] + 0.5)

    wait_until(moved, within, "the picture's time to advance")


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    with origin_and_edge(pg_url, tmp_path / "nodes") as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def test_killing_the_edge_moves_its_venue_screen_to_the_origin_within_5_s(
    deployment: Deployment, browser: Any, tmp_path: Path
) -> None:
    d, sid = deployment, deployment.session_id
    organiser = d.organiser
    organiser.request("PATCH", f"/api/sessions/{sid}", {"video_codec": "vp8"})
    whip = organiser.get(f"/api/sessions/{sid}/links")
    assert whip["whip_url"].startswith(d.origin.base + "/whip/")
    broadcast = Broadcast(whip["whip_url"], whip["whip_token"], clip_for("vp8"))
    broadcast.start()
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    try:
        venues = organiser.get(f"/api/sessions/{sid}/member-links")["venues"]
        link = next(v for v in venues if v["slug"] == VENUE)
        # The venue's link opens the screen on its edge, naming the origin to fall back to.
        assert link["edge_url"] == d.edge.base
        assert link["url"].startswith(f"{d.edge.base}/venue.html#s={sid}&o={d.origin.base}&t=")
        assert link["fallback_url"].startswith(f"{d.origin.base}/venue.html#s={sid}&t=")

        context.add_init_script(FRAME_LOG_JS)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(link["url"])
        status = page.locator("#node-status")

        # 1. Playing from the edge: the page says so, and the edge serves the venue's viewer.
        playing(page, within=30)
        expect(status).to_have_attribute("data-node", "edge")
        expect(status).to_have_text(f"Playing from edge {d.edge.base.removeprefix('http://')}")
        wait_until(
            lambda: served(organiser, "edge-1", sid) == {"venue": 1},
            15,
            "the edge to report the venue's viewer",
        )
        wait_until(
            lambda: served(organiser, "origin", sid) == {"edge": 1},
            15,
            "the origin to report one edge pulling the session (and no venue)",
        )
        page.screenshot(path=str(tmp_path / "1-playing-from-the-edge.png"))

        # 2. SIGKILL of the edge: no goodbye, no closed connections.
        edge_stream = page.evaluate(STREAM_JS)
        killed_at_ms = time.time() * 1000
        os.kill(d.edge.proc.pid, signal.SIGKILL)
        d.edge.proc.wait(timeout=STOP_TIMEOUT_S)
        page.wait_for_timeout(800)
        page.screenshot(path=str(tmp_path / "2-edge-killed.png"))

        # 3. Frames again, from the origin, within 5 s of the kill.
        def first_frame_from(node: int, since_ms: float, old_stream: int) -> Any:
            """When the first frame of a new stream from ``node`` was shown."""
            log = page.evaluate("window.frameLog")
            after = [
                f["at"]
                for f in log
                if f["node"] == node and f["at"] > since_ms and f["stream"] != old_stream
            ]
            return min(after) if after else None

        back_at = wait_until(
            lambda: first_frame_from(1, killed_at_ms, edge_stream), 15, "a frame from the origin"
        )
        failover_s = (back_at - killed_at_ms) / 1000
        print(f"\nvenue screen failover: frames from the origin {failover_s:.2f} s after SIGKILL")
        advancing(page)  # and it keeps playing
        frames_from_origin = sum(
            1 for f in page.evaluate("window.frameLog") if f["node"] == 1 and f["at"] >= back_at
        )
        assert frames_from_origin > 10, frames_from_origin
        expect(status).to_have_attribute("data-node", "origin")
        expect(status).to_contain_text(
            f"Playing from origin {d.origin.base.removeprefix('http://')}"
        )
        expect(status).to_contain_text("the edge is unreachable")
        page.screenshot(path=str(tmp_path / "3-playing-from-the-origin.png"))
        assert failover_s < FAILOVER_LIMIT_S, f"the failover took {failover_s:.2f} s"

        # The origin now serves the venue's viewer itself.
        wait_until(
            lambda: served(organiser, "origin", sid).get("venue") == 1,
            15,
            "the origin to report the venue's viewer",
        )
        # Its live events come from the origin too: a presence check opened there shows.
        check = organiser.post(f"/api/sessions/{sid}/presence-checks", {"window_s": 30})
        overlay = page.locator("#presence-overlay")
        expect(overlay).to_be_visible(timeout=15_000)
        expect(page.locator("#presence-code")).to_have_text(check["code"])
        page.screenshot(path=str(tmp_path / "3b-presence-check-from-the-origin.png"))
        page.locator("button[data-lang='zh-CN']").click()
        expect(status).to_have_text(
            f"经源站 {d.origin.base.removeprefix('http://')} 播放：边缘节点无法连接"
        )
        page.screenshot(path=str(tmp_path / "4-origin-serves-the-venue-zh.png"))
        page.locator("button[data-lang='en']").click()

        # 4. The edge is back: within the primary's probe interval (15 s), the screen returns.
        origin_stream = page.evaluate(STREAM_JS)
        restarted_at_ms = time.time() * 1000
        d.restart_edge()
        returned_at = wait_until(
            lambda: first_frame_from(0, restarted_at_ms, origin_stream),
            30,
            "a frame from the edge again",
        )
        print(f"back on the edge {(returned_at - restarted_at_ms) / 1000:.2f} s after its restart")
        expect(status).to_have_attribute("data-node", "edge")
        advancing(page)
        wait_until(
            lambda: served(organiser, "edge-1", sid) == {"venue": 1},
            15,
            "the restarted edge to report the venue's viewer",
        )
        page.screenshot(path=str(tmp_path / "5-back-on-the-edge.png"))
        assert errors == []
    except BaseException:
        for page in context.pages:
            page.screenshot(path=str(tmp_path / "failed.png"))
            print("page at the failure:", page.evaluate(PLAYER_JS))
        raise
    finally:
        context.close()
        broadcast.close()

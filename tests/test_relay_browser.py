"""Chromium against the real relay: it publishes over WHIP and plays over WHEP, for both codecs.

Chromium is the broadcaster or viewer most people will use; these tests drive Debian's Chromium
with its fake camera (Playwright), against the server in this process, over loopback only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from browser import CHROMIUM
from conftest import missing_service

from attendance.migrate import upgrade
from attendance.sessions import create_session, parse_draft
from attendance.store import Store
from client.clip import make_clip
from client.publisher import publish
from server.app import create_app
from server.auth import SETTINGS
from server.links import session_links
from server.relay.ice import advertise_addresses
from server.settings import Settings
from server.whip import RELAY

pytestmark = pytest.mark.slow

CHROMIUM_WEBRTC_ARGS = [
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-background-networking",
    "--autoplay-policy=no-user-gesture-required",
]

# Non-trickle WHIP/WHEP the way a page does it: gather, POST the offer, apply the answer.
NEGOTIATE = """
async function negotiate(pc, url, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    setTimeout(done, 3000);
  });
  const res = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
    headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token}});
  if (res.status !== 201) return res.status + ' ' + await res.text();
  await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
  return 'ok';
}
"""
WATCH = (
    NEGOTIATE
    + """
return (async ([url, token]) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; document.body.appendChild(video);
  pc.ontrack = (e) => { video.srcObject = e.streams[0] || new MediaStream([e.track]); };
  window.watching = {pc, video};
  return negotiate(pc, url, token);
})(args);
"""
)
BROADCAST = (
    NEGOTIATE
    + """
return (async ([url, token]) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480},
                                                            audio: true});
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, {direction: 'sendonly'});
  window.broadcasting = pc;
  return negotiate(pc, url, token);
})(args);
"""
)
PLAYBACK = """() => ({
  width: window.watching.video.videoWidth,
  frames: window.watching.video.getVideoPlaybackQuality().totalVideoFrames,
  time: window.watching.video.currentTime,
  connection: window.watching.pc.connectionState,
})"""


def run_js(body: str) -> str:
    return "(args) => { " + body + " }"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """The media path does not depend on the store: one SQLite file is enough here."""
    s = Store(f"sqlite:///{tmp_path}/studycast.db")
    await upgrade(s)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def relay_server(
    store: Store, tmp_path: Path, now: datetime
) -> AsyncIterator[tuple[str, web.Application]]:
    advertise_addresses(["127.0.0.1"])
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", ice_addresses=["127.0.0.1"])
    app = create_app(settings, store)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        missing_service(f"browser tests need Chromium at {CHROMIUM}")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_WEBRTC_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def new_session(store: Store, now: datetime, codec: str) -> int:
    draft = parse_draft(
        {
            "title": "直播测试",
            "scheduled_start": now,
            "scheduled_end": now + timedelta(hours=1),
            "video_codec": codec,
        }
    )
    async with store.write() as db:
        return (await create_session(db, draft, now=now, actor="test", user_id=None)).id


async def played(page: Any, within: float) -> dict[str, Any]:
    """Playback figures once the video has shown frames for a while (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + within
    info: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        info = await page.evaluate(PLAYBACK)
        if info["frames"] >= 60:
            return info
        await asyncio.sleep(0.25)
    return info


@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize("broadcaster", ["chromium", "aiortc"])
async def test_chromium_plays_what_the_relay_forwards(
    store: Store,
    now: datetime,
    relay_server: tuple[str, web.Application],
    chromium: Any,
    codec: str,
    broadcaster: str,
) -> None:
    base, app = relay_server
    session_id = await new_session(store, now, codec)
    links = session_links(app[SETTINGS], session_id, now=now, base_url=base)
    viewer = await chromium.new_page()
    await viewer.goto(f"{base}/healthz")
    publication = None
    if broadcaster == "chromium":
        studio = await chromium.new_page()
        await studio.goto(f"{base}/healthz")
        assert (
            await studio.evaluate(run_js(BROADCAST), [links["whip_url"], links["whip_token"]])
            == "ok"
        )
    else:
        publication = await publish(links["whip_url"], links["whip_token"], make_clip(codec, 4))
    try:
        assert (
            await viewer.evaluate(run_js(WATCH), [links["whep_url"], links["whep_token"]]) == "ok"
        )
        info = await played(viewer, within=15)
        assert info["connection"] == "connected"
        assert info["width"] == 640, info
        assert info["frames"] >= 60, info
        hub = app[RELAY].sessions[session_id]
        assert hub.ingest is not None
        assert hub.ingest.video_codec_name == codec.upper()
    finally:
        if publication is not None:
            await publication.close()

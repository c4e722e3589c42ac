"""aiortc's stock ``MediaRelay`` behind WHIP/WHEP: the baseline ``bench_relay.py`` compares with.

This is what a relay built the obvious way on aiortc does: the server receives the broadcaster's
tracks (aiortc depacketises and **decodes** them once), ``MediaRelay.subscribe(track)`` hands the
decoded frames to every viewer, and each viewer's sender **encodes** them again (VP8 and Opus,
one encoder per viewer). Same URL shapes and conventions as the studycast relay (RFC 9725:
``POST /whip/{session}`` and ``POST /whep/{session}`` answer ``201 Created`` with an
``application/sdp`` answer and a ``Location``; ``DELETE`` on it hangs up), but no tokens, no
store, no keyframe policy: a minimal benchmark server, not a product.

``GET /stats`` answers JSON: ``{"broadcaster": bool, "viewers": n, "connected": n}``.

Peers offer only ``--ice-address`` (default 127.0.0.1) as ICE host candidate and ask no STUN
server. ``--lifetime`` bounds how long the server runs (it also stops on SIGINT/SIGTERM).

    .venv/bin/python bench/stock_relay.py --port 0 [--lifetime 900]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from server.relay.ice import advertise_addresses, rtc_configuration

log = logging.getLogger("stock_relay")

SDP = "application/sdp"
MAX_SDP_BYTES = 32 * 1024
MAX_VIEWERS = 1000
CLOSE_TIMEOUT_S = 10.0


@dataclass
class Session:
    """One session: the broadcaster's peer and received tracks, and the viewers' peers."""

    relay: MediaRelay = field(default_factory=MediaRelay)
    broadcaster: RTCPeerConnection | None = None
    broadcaster_id: str | None = None
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    viewers: dict[str, RTCPeerConnection] = field(default_factory=dict)


SESSIONS = web.AppKey("stock.sessions", dict)

routes = web.RouteTableDef()


def _session(request: web.Request) -> tuple[str, Session]:
    name = request.match_info["session_id"]
    sessions: dict[str, Session] = request.app[SESSIONS]
    if name not in sessions:
        sessions[name] = Session()
    return name, sessions[name]


async def _offer(request: web.Request) -> RTCSessionDescription:
    if request.content_type != SDP:
        raise web.HTTPUnsupportedMediaType(text=f"the offer must be {SDP}")
    body = await request.content.read(MAX_SDP_BYTES + 1)
    if len(body) > MAX_SDP_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_SDP_BYTES, actual_size=len(body))
    return RTCSessionDescription(sdp=body.decode("utf-8", "replace"), type="offer")


def _created(location: str, pc: RTCPeerConnection) -> web.Response:
    return web.Response(
        status=201, text=pc.localDescription.sdp, content_type=SDP, headers={"Location": location}
    )


@routes.post("/whip/{session_id}")
async def whip(request: web.Request) -> web.Response:
    name, session = _session(request)
    offer = await _offer(request)
    pc = RTCPeerConnection(rtc_configuration())
    tracks: dict[str, MediaStreamTrack] = {}

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tracks[track.kind] = track

    try:
        await pc.setRemoteDescription(offer)
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await pc.close()
        raise web.HTTPBadRequest(text=f"cannot negotiate: {exc}") from None
    if "video" not in tracks:
        await pc.close()
        raise web.HTTPBadRequest(text="the offer has no video")
    previous = session.broadcaster
    session.broadcaster = pc
    session.broadcaster_id = secrets.token_urlsafe(12)
    session.tracks = tracks
    if previous is not None:
        await previous.close()  # viewers of the old tracks stall: minimal server, no handover
    log.info("session %s: broadcaster %s", name, session.broadcaster_id)
    return _created(f"/whip/{name}/{session.broadcaster_id}", pc)


@routes.post("/whep/{session_id}")
async def whep(request: web.Request) -> web.Response:
    name, session = _session(request)
    if not session.tracks:
        raise web.HTTPConflict(text="nobody is broadcasting yet")
    if sum(len(s.viewers) for s in request.app[SESSIONS].values()) >= MAX_VIEWERS:
        raise web.HTTPServiceUnavailable(text="too many viewers")
    offer = await _offer(request)
    pc = RTCPeerConnection(rtc_configuration())
    resource = secrets.token_urlsafe(12)
    try:
        await pc.setRemoteDescription(offer)
        for kind in ("video", "audio"):
            track = session.tracks.get(kind)
            if track is not None:
                # The stock way: one decoded source, one proxy (and so one encoder) per viewer.
                pc.addTrack(session.relay.subscribe(track))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await pc.close()
        raise web.HTTPBadRequest(text=f"cannot negotiate: {exc}") from None
    session.viewers[resource] = pc

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            session.viewers.pop(resource, None)
            await pc.close()

    return _created(f"/whep/{name}/{resource}", pc)


@routes.delete("/whip/{session_id}/{resource}")
async def whip_delete(request: web.Request) -> web.Response:
    _, session = _session(request)
    if session.broadcaster is None or session.broadcaster_id != request.match_info["resource"]:
        raise web.HTTPNotFound()
    pc, session.broadcaster, session.broadcaster_id = session.broadcaster, None, None
    session.tracks = {}
    await pc.close()
    return web.Response(status=200)


@routes.delete("/whep/{session_id}/{resource}")
async def whep_delete(request: web.Request) -> web.Response:
    _, session = _session(request)
    pc = session.viewers.pop(request.match_info["resource"], None)
    if pc is None:
        raise web.HTTPNotFound()
    await pc.close()
    return web.Response(status=200)


@routes.get("/stats")
async def stats(request: web.Request) -> web.Response:
    sessions: dict[str, Session] = request.app[SESSIONS]
    viewers = [pc for s in sessions.values() for pc in s.viewers.values()]
    return web.json_response(
        {
            "broadcaster": any(s.broadcaster is not None for s in sessions.values()),
            "viewers": len(viewers),
            "connected": sum(1 for pc in viewers if pc.connectionState == "connected"),
        }
    )


async def _close_all(app: web.Application) -> None:
    peers: list[Any] = []
    for session in app[SESSIONS].values():
        peers.extend(session.viewers.values())
        if session.broadcaster is not None:
            peers.append(session.broadcaster)
        session.viewers.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True)


def make_app() -> web.Application:
    app = web.Application()
    app[SESSIONS] = {}
    app.add_routes(routes)
    app.on_shutdown.append(_close_all)
    return app


async def serve(host: str, port: int, lifetime: float) -> None:
    runner = web.AppRunner(make_app(), handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = next((a[1] for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2), port)
        print(f"stock relay is running at http://{host}:{bound}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(lifetime):
                await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--ice-address", action="append", dest="ice_addresses")
    parser.add_argument(
        "--lifetime", type=float, default=900.0, help="stop after this many seconds (900)"
    )
    args = parser.parse_args()
    if not 1 <= args.lifetime <= 24 * 3600:
        parser.error("--lifetime must be 1..86400 seconds")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    advertise_addresses(args.ice_addresses or ["127.0.0.1"])
    asyncio.run(serve(args.host, args.port, args.lifetime))


if __name__ == "__main__":
    main()

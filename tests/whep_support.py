"""An aiortc WHEP endpoint for the load tools' tests: it sends a ``PacedPacketTrack`` of a clip
(audio and video) to every viewer that POSTs an offer with the right token, and counts DELETEs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from client.clip import EncodedClip
from client.publisher import (
    PacedPacketTrack,
    audio_codec_preferences,
    hook_keyframe_requests,
    video_codec_preferences,
)
from server.relay.ice import rtc_configuration

TOKEN = "viewer-token"
WAIT = 10.0


@dataclass
class Served:
    pc: RTCPeerConnection
    senders: dict[str, RTCRtpSender]
    tracks: dict[str, PacedPacketTrack]


@dataclass
class WhepEndpoint:
    url: str
    clip: EncodedClip
    served: dict[str, Served] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def whep_endpoint(clip: EncodedClip) -> AsyncIterator[WhepEndpoint]:
    """Serves ``clip`` to every WHEP viewer on a loopback port; every peer closed after."""
    numbers = itertools.count(1)
    endpoint = WhepEndpoint(url="", clip=clip)

    async def post(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized", "detail": "bad token"}, status=401)
        pc = RTCPeerConnection(configuration=rtc_configuration())
        served = Served(pc, {}, {})
        for kind in ("audio", "video"):
            track = PacedPacketTrack(kind, endpoint.clip)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(
                audio_codec_preferences()
                if kind == "audio"
                else video_codec_preferences(endpoint.clip)
            )
            served.senders[kind], served.tracks[kind] = transceiver.sender, track
        hook_keyframe_requests(served.senders["video"], served.tracks["video"])
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        resource = f"{request.match_info['session']}/{next(numbers)}"
        endpoint.served[resource] = served
        return web.Response(
            status=201,
            body=pc.localDescription.sdp.encode(),
            content_type="application/sdp",
            headers={"Location": f"{endpoint.url}/{resource.split('/')[1]}"},  # absolute
        )

    async def delete(request: web.Request) -> web.Response:
        resource = f"{request.match_info['session']}/{request.match_info['n']}"
        if resource not in endpoint.served:
            return web.json_response({"error": "not_found", "detail": "no such"}, status=404)
        endpoint.deleted.append(resource)
        await endpoint.served[resource].pc.close()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/whep/{session}", post)
    app.router.add_delete("/whep/{session}/{n}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}/whep/s1"
    try:
        yield endpoint
    finally:
        for served in endpoint.served.values():
            await served.pc.close()
        await runner.cleanup()


async def eventually(condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def remote_reports(sender: RTCRtpSender) -> list[Any]:
    """Receiver reports the sender got back (aiortc files them as remote-inbound-rtp)."""
    return [s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp"]

"""Publishing a clip: real-time pacing, keyframe jumps, and WHIP against a real aiortc answerer.

The WHIP endpoint below is a tiny aiohttp app whose answerer receives with aiortc's normal
jitter buffer and decoder, then reads the frame number drawn into every decoded picture.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport

from client.clip import EncodedClip, VideoCodec, make_clip, read_frame_number
from client.publisher import PacedPacketTrack, SignallingError, publish
from client.stream_counter import payload_codecs
from server.relay.ice import advertise_addresses, rtc_configuration

TOKEN = "publish-token"
WAIT = 10.0  # upper bound for any single wait in this file


@pytest.fixture(scope="module", autouse=True)
def loopback_ice() -> None:
    """Peers offer 127.0.0.1 only. Never undone: no test may reach beyond loopback."""
    advertise_addresses(["127.0.0.1"])


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


def small_clip(
    codec: VideoCodec, cache: Path, seconds: float = 6.0, gop: float = 1.0
) -> EncodedClip:
    return make_clip(codec, seconds, 30, 320, 240, 400_000, gop, cache_dir=cache)


async def eventually(condition: object, within: float = WAIT, what: str = "condition") -> None:
    """Poll ``condition()`` until true; fail the test after ``within`` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


# --- pacing -----------------------------------------------------------------------------------


async def drain(track: PacedPacketTrack, seconds: float) -> list[tuple[float, int]]:
    """(arrival time, pts) of every packet the track releases in ``seconds``."""
    got: list[tuple[float, int]] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        packet = await asyncio.wait_for(track.recv(), 1.0)
        assert packet.pts is not None
        got.append((time.monotonic() - start, packet.pts))
    return got


async def test_tracks_release_packets_in_real_time_across_loops(clip_cache: Path) -> None:
    clip = small_clip("vp8", clip_cache, seconds=1.0)
    video, audio = PacedPacketTrack("video", clip), PacedPacketTrack("audio", clip)
    seconds = 2.5
    v, a = await asyncio.gather(drain(video, seconds), drain(audio, seconds))
    for got, rate, step in ((v, 30, 3000), (a, 50, 960)):
        assert len(got) == pytest.approx(seconds * rate, rel=0.06)
        # Never ahead of the schedule: packet n is not released before n / rate seconds.
        assert all(t >= n / rate - 0.005 for n, (t, _) in enumerate(got))
        # Timestamps run on through the loops, one packet duration apart.
        assert [pts for _, pts in got] == [n * step for n in range(len(got))]
    assert (video.loops, audio.loops) == (2, 2)
    video.stop()
    audio.stop()


async def test_a_stalled_consumer_gets_no_burst_afterwards(clip_cache: Path) -> None:
    track = PacedPacketTrack("video", small_clip("vp8", clip_cache, seconds=1.0))
    for _ in range(3):
        await track.recv()
    await asyncio.sleep(0.8)  # 24 frames late
    start = time.monotonic()
    for _ in range(10):
        await asyncio.wait_for(track.recv(), 1.0)
    assert time.monotonic() - start >= 9 / 30 - 0.01
    track.stop()


async def test_keyframe_request_jumps_to_the_next_gop(clip_cache: Path) -> None:
    clip = small_clip("h264", clip_cache, seconds=2.0, gop=0.5)
    assert clip.keyframe_indices == (0, 15, 30, 45)
    track = PacedPacketTrack("video", clip)
    track.request_keyframe()  # the next packet is a keyframe already: nothing to skip
    pts = [(await track.recv()).pts for _ in range(3)]
    assert (track.position, track.jumps) == (3, 0)
    track.request_keyframe()
    track.request_keyframe()  # coalesced: one jump
    jumped = await track.recv()
    assert (track.position - 1, clip.video[track.position - 1].keyframe) == (15, True)
    assert bytes(jumped) == clip.video[15].data
    assert [*pts, jumped.pts] == [0, 3000, 6000, 9000]  # time runs on, content skips
    track.request_keyframe()  # from frame 16: on to the next GOP, 30
    await track.recv()
    assert (track.position, track.keyframe_requests, track.jumps) == (31, 4, 2)
    track.stop()

    audio = PacedPacketTrack("audio", clip)
    audio.request_keyframe()
    await audio.recv()
    assert (audio.position, audio.keyframe_requests, audio.jumps) == (1, 1, 0)
    audio.stop()


async def test_without_loop_the_track_ends(clip_cache: Path) -> None:
    clip = small_clip("vp8", clip_cache, seconds=0.2)
    track = PacedPacketTrack("video", clip, loop=False)
    assert len([await track.recv() for _ in range(6)]) == 6
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended"


# --- a WHIP endpoint to publish to ---------------------------------------------------------


@dataclass
class Ingest:
    """What the endpoint's answerer received from one publisher."""

    pc: RTCPeerConnection
    video_numbers: list[int] = field(default_factory=list)
    audio_frames: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def video_receiver(self) -> RTCRtpReceiver:
        return next(t.receiver for t in self.pc.getTransceivers() if t.kind == "video")


@dataclass
class WhipEndpoint:
    url: str
    ingests: dict[str, Ingest] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


async def consume(track: MediaStreamTrack, ingest: Ingest) -> None:
    try:
        while True:
            frame = await track.recv()
            if isinstance(frame, av.VideoFrame):
                ingest.video_numbers.append(read_frame_number(frame))
            else:
                ingest.audio_frames += 1
    except MediaStreamError:
        pass


@pytest.fixture
async def whip() -> AsyncIterator[WhipEndpoint]:
    numbers = itertools.count(1)
    endpoint = WhipEndpoint(url="")

    async def post(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized", "detail": "bad token"}, status=401)
        if request.content_type != "application/sdp":
            return web.json_response(
                {"error": "unsupported_media_type", "detail": "sdp"}, status=415
            )
        pc = RTCPeerConnection(configuration=rtc_configuration())
        ingest = Ingest(pc)
        pc.on(
            "track", lambda track: ingest.tasks.append(asyncio.create_task(consume(track, ingest)))
        )
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        resource = f"{request.match_info['session']}/{next(numbers)}"
        endpoint.ingests[resource] = ingest
        return web.Response(
            status=201,
            body=pc.localDescription.sdp.encode(),
            content_type="application/sdp",
            headers={"Location": f"/whip/{resource}"},  # relative, as RFC 9725 allows
        )

    async def delete(request: web.Request) -> web.Response:
        resource = f"{request.match_info['session']}/{request.match_info['n']}"
        ingest = endpoint.ingests.get(resource)
        if ingest is None:
            return web.json_response({"error": "not_found", "detail": "no such"}, status=404)
        endpoint.deleted.append(resource)
        await ingest.pc.close()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/whip/{session}", post)
    app.router.add_delete("/whip/{session}/{n}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    endpoint.url = f"http://127.0.0.1:{port}/whip/s1"
    try:
        yield endpoint
    finally:
        for ingest in endpoint.ingests.values():
            await ingest.pc.close()
            # A receiver that never started (peer gone before DTLS) never ends its track.
            if ingest.tasks:
                _, pending = await asyncio.wait(ingest.tasks, timeout=2.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await runner.cleanup()


# --- publishing ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_publish_delivers_decodable_frames_in_order_and_answers_pli(
    whip: WhipEndpoint, clip_cache: Path, codec: VideoCodec
) -> None:
    clip = small_clip(codec, clip_cache)
    pub = await asyncio.wait_for(publish(whip.url, TOKEN, clip), WAIT)
    try:
        assert pub.resource_url == whip.url + "/1"
        codecs = payload_codecs(pub.answer_sdp)
        assert set(codecs["video"].values()) == {codec, "rtx"}
        assert set(codecs["audio"].values()) == {"opus"}
        await pub.wait_connected(WAIT)
        (ingest,) = whip.ingests.values()
        await eventually(lambda: len(ingest.video_numbers) >= 15, what="15 decoded frames")
        requests_at_start = pub.keyframe_requests

        receiver = ingest.video_receiver()
        (source,) = receiver.getSynchronizationSources()
        await receiver._send_rtcp_pli(source.source)  # what a relay does when a viewer joins
        await eventually(lambda: pub.video.jumps >= 1, what="the keyframe jump")
        seen = len(ingest.video_numbers)
        await eventually(lambda: len(ingest.video_numbers) >= seen + 10, what="frames after PLI")
    finally:
        await pub.close()

    numbers = ingest.video_numbers
    assert numbers[0] == 0
    assert all(b > a for a, b in itertools.pairwise(numbers)), numbers
    jumps = [(a, b) for a, b in itertools.pairwise(numbers) if b - a > 1]
    assert len(jumps) == 1 and jumps[0][1] % clip.gop_frames == 0, jumps
    assert pub.keyframe_requests == requests_at_start + 1
    assert ingest.audio_frames > 20
    assert whip.deleted == ["s1/1"]
    assert pub.closed and pub.close_error is None
    assert ingest.pc.connectionState == "closed" and pub.pc.connectionState == "closed"
    await pub.close()  # idempotent
    assert whip.deleted == ["s1/1"]


async def test_publish_with_seconds_ends_by_itself(whip: WhipEndpoint, clip_cache: Path) -> None:
    pub = await asyncio.wait_for(
        publish(whip.url, TOKEN, small_clip("vp8", clip_cache), seconds=1), WAIT
    )
    await asyncio.wait_for(pub.wait_closed(), WAIT)
    assert whip.deleted == ["s1/1"] and pub.pc.connectionState == "closed"


async def test_refusals_raise_with_the_servers_error_and_detail(
    whip: WhipEndpoint, clip_cache: Path
) -> None:
    clip = small_clip("vp8", clip_cache)
    with pytest.raises(SignallingError) as refused:
        await asyncio.wait_for(publish(whip.url, "wrong", clip), WAIT)
    assert (refused.value.status, refused.value.code, refused.value.detail) == (
        401,
        "unauthorized",
        "bad token",
    )
    assert str(refused.value) == f"HTTP 401 unauthorized from {whip.url}: bad token"

    with pytest.raises(SignallingError) as missing:
        await asyncio.wait_for(publish(whip.url + "/x/y", TOKEN, clip), WAIT)
    assert (missing.value.status, missing.value.code) == (404, "http_error")
    assert "Not Found" in missing.value.detail

    closed_port = whip.url.replace("/whip/s1", "").rsplit(":", 1)[0] + ":1/whip/s1"
    with pytest.raises(SignallingError) as unreachable:
        await asyncio.wait_for(publish(closed_port, TOKEN, clip), WAIT)
    assert unreachable.value.code == "unreachable"
    assert whip.ingests == {}


async def test_close_survives_a_failing_delete(whip: WhipEndpoint, clip_cache: Path) -> None:
    pub = await asyncio.wait_for(publish(whip.url, TOKEN, small_clip("vp8", clip_cache)), WAIT)
    await pub.wait_connected(WAIT)
    pub.resource_url += "-gone"
    await pub.close()
    assert isinstance(pub.close_error, SignallingError) and pub.close_error.status == 404
    assert pub.pc.connectionState == "closed"


# --- the aiortc internals we patch --------------------------------------------------------


def test_aiortc_internals_we_rely_on_are_still_there() -> None:
    """If this fails after an aiortc upgrade, re-read rtcrtpsender.py before changing it."""
    assert list(inspect.signature(RTCRtpSender._send_keyframe).parameters) == ["self"]
    assert "self._send_keyframe()" in inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    # Pre-encoded av.Packet objects go through the codec's pack(), not its encoder.
    next_frame = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "self.__encoder.pack(data)" in next_frame
    assert "isinstance(data, Frame)" in next_frame
    # aiortc's PLI sender, which the WHIP test uses to play a relay.
    assert list(inspect.signature(RTCRtpReceiver._send_rtcp_pli).parameters) == [
        "self",
        "media_ssrc",
    ]
    assert "_handle_rtp_packet" in inspect.getsource(RTCDtlsTransport._handle_rtp_data)

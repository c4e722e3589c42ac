"""Support for the relay tests: a relay app over a real record store with a session and its
tokens, WHEP viewers on real aiortc peers that log every RTP packet they receive (and, if asked,
decode the video and read back the frame numbers drawn into the clip), and a relay server in a
subprocess that reports whether it ever built an encoder or a decoder.

Every peer in a test process offers only 127.0.0.1 and asks no STUN server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, is_rtcp

from attendance.models import Role
from attendance.sessions import create_session, parse_draft
from attendance.store import Store
from attendance.users import add_user
from client.clip import EncodedClip, make_clip, read_frame_number
from client.publisher import Publication, delete_resource, post_offer, publish
from server.app import create_app
from server.auth import public
from server.relay.fanout import SessionRelay
from server.relay.ice import advertise_addresses, rtc_configuration
from server.settings import Settings
from server.tokens import TokenRole, issue
from server.whip import RELAY

ICE_ADDRESSES = ["127.0.0.1"]
SECRET = "relay-tests-secret-0123456789abcdefghijklmnop"
PASSWORD = "correct horse battery staple"
# Small and slow enough for several decoding viewers on a 2-core machine; long enough that no
# test loops the clip (frame numbers then only grow).
CLIP_FPS = 15
CLIP_GOP_S = 1.0
CLIP_SECONDS = 40.0
FRAME_TICKS = 90_000 // CLIP_FPS

advertise_addresses(ICE_ADDRESSES)


@functools.cache
def shared_clip(codec: str) -> EncodedClip:
    """The shared test clip of one codec (cached on disk by ``make_clip``)."""
    return make_clip(
        codec,  # type: ignore[arg-type]
        CLIP_SECONDS,
        fps=CLIP_FPS,
        width=320,
        height=240,
        bitrate=300_000,
        gop_seconds=CLIP_GOP_S,
    )


def clip_from(clip: EncodedClip, start: int) -> EncodedClip:
    """The clip from video frame ``start`` on (mid-GOP if it is not a keyframe), reindexed so
    that the publisher's keyframe jumps still work. The pictures keep their drawn numbers."""
    video = tuple(replace(p, index=i) for i, p in enumerate(clip.video[start:]))
    return replace(clip, video=video)


async def wait_for(
    predicate: Callable[[], object], within: float, what: str, interval: float = 0.02
) -> float:
    """Poll until ``predicate()`` is true; returns the seconds it took, fails after ``within`` s."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


# --- what a viewer receives ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpRecord:
    """One RTP packet as it reached a viewer (before aiortc's jitter buffer)."""

    kind: str
    ssrc: int
    seq: int
    timestamp: int
    marker: bool
    payload: bytes
    at: float


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    pts: int
    number: int  # drawn into the picture by the clip
    at: float


def _codec_parameters(codec: str) -> RTCRtpCodecParameters:
    name = {"vp8": "VP8", "h264": "H264"}[codec]
    return RTCRtpCodecParameters(mimeType=f"video/{name}", clockRate=90000, payloadType=96)


def decode_alone(codec: str, packets: list[RtpRecord]) -> list[av.VideoFrame]:
    """Decode one frame's RTP packets with a fresh decoder: a frame that is not a complete
    keyframe (a delta frame, or a keyframe without its start) gives no picture."""
    parameters = _codec_parameters(codec)
    data = b"".join(depayload(parameters, p.payload) for p in packets)
    context = av.CodecContext.create(codec, "r")
    try:
        frames = list(context.decode(av.Packet(data)))
        frames += list(context.decode(None))
    except av.FFmpegError:
        return []
    return [f for f in frames if isinstance(f, av.VideoFrame)]


def frame_packets(packets: list[RtpRecord], timestamp: int) -> list[RtpRecord]:
    """The packets of one video frame, in sequence order, duplicates dropped."""
    seen: dict[int, RtpRecord] = {}
    for p in packets:
        if p.timestamp == timestamp:
            seen.setdefault(p.seq, p)
    return sorted(seen.values(), key=lambda p: (p.seq - packets[0].seq) & 0xFFFF)


def first_arrivals(packets: list[RtpRecord]) -> list[RtpRecord]:
    """Packets in arrival order without repeats (retransmissions) of a sequence number."""
    seen: set[int] = set()
    out = []
    for p in packets:
        if p.seq not in seen:
            seen.add(p.seq)
            out.append(p)
    return out


def sequence_steps(packets: list[RtpRecord]) -> list[int]:
    """The sequence-number step from each packet to the next (mod 2^16)."""
    return [(b.seq - a.seq) & 0xFFFF for a, b in itertools.pairwise(packets)]


def timestamp_steps(timestamps: list[int]) -> list[int]:
    """The RTP timestamp step from each value to the next (mod 2^32)."""
    return [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(timestamps)]


class Watcher:
    """A WHEP viewer on a real aiortc peer (recvonly video and audio).

    Every RTP packet is logged on arrival, then handed to aiortc as usual (so the viewer sends
    its own receiver reports, NACKs and PLIs). With ``decode=True`` the video is decoded and the
    frame numbers drawn into the clip are read back; otherwise aiortc's decoder threads are
    stopped before any frame reaches them, which keeps many viewers cheap.
    """

    def __init__(self, *, decode: bool = False) -> None:
        self.decode = decode
        self.pc = RTCPeerConnection(rtc_configuration())
        self.video = self.pc.addTransceiver("video", direction="recvonly")
        self.audio = self.pc.addTransceiver("audio", direction="recvonly")
        self.packets: list[RtpRecord] = []
        self.frames: list[DecodedFrame] = []
        self.resource_url: str | None = None
        self.answer_sdp = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._tap(self.video.receiver, "video", keep_decoder=decode)
        self._tap(self.audio.receiver, "audio", keep_decoder=False)
        self.pc.on("track", self._on_track)

    def _tap(self, receiver: RTCRtpReceiver, kind: str, *, keep_decoder: bool) -> None:
        original_handle = receiver._handle_rtp_packet
        original_receive = receiver.receive
        packets = self.packets

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            packets.append(
                RtpRecord(
                    kind,
                    packet.ssrc,
                    packet.sequence_number,
                    packet.timestamp,
                    bool(packet.marker),
                    packet.payload,
                    time.monotonic(),
                )
            )
            await original_handle(packet, arrival_time_ms)

        async def receive(parameters: Any) -> None:
            await original_receive(parameters)
            if not keep_decoder:
                receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
        receiver.receive = receive  # type: ignore[method-assign]

    def _on_track(self, track: Any) -> None:
        if track.kind == "video" and self.decode:
            task = asyncio.ensure_future(self._read_frames(track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read_frames(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # MediaStreamError: the track ended
                return
            self.frames.append(DecodedFrame(frame.pts, read_frame_number(frame), time.monotonic()))

    async def start(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        """Offer, POST it to the WHEP endpoint, apply the answer."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.answer_sdp, self.resource_url = await post_offer(
            http, url, token, self.pc.localDescription.sdp
        )
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer_sdp, "answer"))

    async def wait_connected(self, within: float = 10.0) -> None:
        await wait_for(lambda: self.pc.connectionState == "connected", within, "viewer ICE/DTLS")

    def of(self, kind: str) -> list[RtpRecord]:
        return [p for p in self.packets if p.kind == kind]

    def frame_starts(self) -> list[int]:
        """Video RTP timestamps in order of first arrival."""
        return list(dict.fromkeys(p.timestamp for p in self.of("video")))

    async def send_nack(self, seqs: list[int]) -> None:
        """Ask the relay to resend video packets (an RTCP generic NACK, as aiortc sends it)."""
        ssrc = self.of("video")[0].ssrc
        await self.video.receiver._send_rtcp_nack(ssrc, seqs)

    def lose(self, seq: int) -> asyncio.Future[RtpRecord]:
        """Drop the next datagram carrying video packet ``seq`` before it is decrypted, as a
        lossy network would. The future gets its (clear) RTP header fields."""
        ice = self.video.receiver.transport.transport
        receive = ice._recv
        ssrc = self.of("video")[0].ssrc
        lost: asyncio.Future[RtpRecord] = asyncio.get_running_loop().create_future()

        async def lossy() -> bytes:
            while True:
                data = await receive()
                if (
                    not lost.done()
                    and len(data) >= 12
                    and 128 <= data[0] < 192
                    and not is_rtcp(data)
                    and int.from_bytes(data[2:4], "big") == seq
                    and int.from_bytes(data[8:12], "big") == ssrc
                ):
                    timestamp = int.from_bytes(data[4:8], "big")
                    marker = bool(data[1] & 0x80)
                    lost.set_result(
                        RtpRecord("video", ssrc, seq, timestamp, marker, b"", time.monotonic())
                    )
                    continue
                return data

        ice._recv = lossy  # type: ignore[method-assign]
        return lost

    async def hang_up(self, http: aiohttp.ClientSession, token: str) -> None:
        """DELETE the WHEP resource, then close the peer."""
        try:
            if self.resource_url is not None:
                await delete_resource(http, self.resource_url, token)
        finally:
            await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.pc.close()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- a relay over a real store, with a session and its tokens -----------------------------------


async def create_study_session(store: Store, now: datetime, codec: str) -> int:
    draft = parse_draft(
        {
            "title": f"relay test ({codec})",
            "scheduled_start": now,
            "scheduled_end": now + timedelta(hours=2),
            "video_codec": codec,
        }
    )
    async with store.write() as db:
        session = await create_session(db, draft, now=now, actor="test", user_id=None)
        return int(session.id)


def token(session_id: int, role: TokenRole, now: datetime, **kwargs: Any) -> str:
    return issue(
        kwargs.pop("secret", SECRET),
        session_id=session_id,
        role=role,
        subject=f"{role.value}:test",
        now=now,
        **kwargs,
    )


def relay_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        secret_key=SECRET,
        ice_addresses=ICE_ADDRESSES,
        **overrides,
    )


@dataclass
class Stage:
    """A running relay app (real HTTP server on loopback) with one session of ``codec``."""

    client: TestClient[web.Request, web.Application]
    store: Store
    session_id: int
    codec: str
    now: datetime
    publications: list[Publication] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.client.session

    @property
    def hub(self) -> SessionRelay:
        return self.app[RELAY].session(self.session_id, self.codec)

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))

    def token(self, role: TokenRole, session_id: int | None = None, **kwargs: Any) -> str:
        sid = self.session_id if session_id is None else session_id
        return token(sid, role, self.now, **kwargs)

    async def publish(self, clip: EncodedClip | None = None, **options: Any) -> Publication:
        """Publish ``clip`` (the session codec's shared clip); ``options`` go to ``publish``."""
        publication = await publish(
            self.url(f"/whip/{self.session_id}"),
            self.token(TokenRole.BROADCASTER),
            clip or shared_clip(self.codec),
            http=self.http,
            **options,
        )
        self.publications.append(publication)
        return publication

    async def watch(self, *, decode: bool = False, connect: bool = True) -> Watcher:
        watcher = Watcher(decode=decode)
        self.watchers.append(watcher)
        await watcher.start(self.http, self.url(f"/whep/{self.session_id}"), self.viewer_token)
        if connect:
            await watcher.wait_connected()
        return watcher

    @property
    def viewer_token(self) -> str:
        return self.token(TokenRole.VIEWER)

    async def session_state(self) -> str:
        """The session's state as the organiser's API shows it."""
        r = await self.client.get(f"/api/sessions/{self.session_id}")
        assert r.status == 200, await r.text()
        return str((await r.json())["state"])

    async def log_in_organiser(self) -> str:
        async with self.store.write() as db:
            await add_user(
                db,
                username="olga",
                role=Role.ORGANISER,
                password=PASSWORD,
                now=self.now,
                actor="test",
            )
        r = await self.client.post("/api/login", json={"username": "olga", "password": PASSWORD})
        assert r.status == 200, await r.text()
        return str((await r.json())["csrf_token"])

    async def close_peers(self) -> None:
        await asyncio.gather(
            *(w.close() for w in self.watchers),
            *(p.pc.close() for p in self.publications),
            return_exceptions=True,
        )


@contextlib.asynccontextmanager
async def relay_stage(
    store: Store, tmp_path: Path, now: datetime, codec: str, clock: Any = None, **settings: Any
) -> AsyncIterator[Stage]:
    """A relay app on a real loopback HTTP server with one session; every peer closed after."""
    session_id = await create_study_session(store, now, codec)
    app = create_app(relay_settings(tmp_path, **settings), store, clock=clock or (lambda: now))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        stage = Stage(client, store, session_id, codec, now)
        try:
            yield stage
        finally:
            await stage.close_peers()


# --- counting codec use ------------------------------------------------------------------------


@dataclass
class CodecUse:
    """Counts every encoder/decoder aiortc builds and every encode/decode call, process-wide."""

    made: dict[str, int] = field(default_factory=lambda: {"encoders": 0, "decoders": 0})
    calls: dict[str, int] = field(default_factory=lambda: {"encode": 0, "decode": 0})
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def install(self) -> None:
        import aiortc.codecs as codecs_module
        import aiortc.codecs.h264 as h264
        import aiortc.codecs.opus as opus
        import aiortc.codecs.vpx as vpx
        import aiortc.rtcrtpreceiver as receiver_module
        import aiortc.rtcrtpsender as sender_module

        def patch(owner: Any, name: str, wrapper: Any) -> None:
            original = getattr(owner, name)
            setattr(owner, name, wrapper(original))
            self._undo.append(lambda: setattr(owner, name, original))

        def counting_factory(kind: str) -> Callable[[Any], Any]:
            def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
                def factory(*args: Any, **kwargs: Any) -> Any:
                    self.made[kind] += 1
                    return original(*args, **kwargs)

                return factory

            return wrap

        def counting_method(kind: str) -> Callable[[Any], Any]:
            def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
                def method(*args: Any, **kwargs: Any) -> Any:
                    self.calls[kind] += 1
                    return original(*args, **kwargs)

                return method

            return wrap

        for module in (codecs_module, receiver_module):
            patch(module, "get_decoder", counting_factory("decoders"))
        for module in (codecs_module, sender_module):
            patch(module, "get_encoder", counting_factory("encoders"))
        for cls in (vpx.Vp8Decoder, h264.H264Decoder, opus.OpusDecoder):
            patch(cls, "decode", counting_method("decode"))
        for cls in (vpx.Vp8Encoder, h264.H264Encoder, opus.OpusEncoder):
            patch(cls, "encode", counting_method("encode"))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    @contextlib.contextmanager
    def installed(self) -> Iterator[CodecUse]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def report(self) -> dict[str, Any]:
        return {
            "made": dict(self.made),
            "calls": dict(self.calls),
            "decoder_threads": sorted(
                t.name for t in threading.enumerate() if t.name.endswith("-decoder")
            ),
        }


# --- the relay in a subprocess -------------------------------------------------------------------


@dataclass
class RelayProcess:
    base_url: str
    process: asyncio.subprocess.Process

    async def codec_use(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.base_url}/_test/codec-use") as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())


@contextlib.asynccontextmanager
async def relay_process(tmp_path: Path, database_url: str) -> AsyncIterator[RelayProcess]:
    """``studycast``'s app served by a child process that counts its own codec use."""
    log = (tmp_path / "relay-process.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--database-url",
        database_url,
        "--data-dir",
        str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("PORT "), f"relay process said {line!r} (see {log.name})"
        yield RelayProcess(f"http://127.0.0.1:{int(line.split()[1])}", process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _serve(database_url: str, data_dir: Path) -> None:
    use = CodecUse()
    use.install()
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=database_url,
        secret_key=SECRET,
        ice_addresses=ICE_ADDRESSES,
    )
    app = create_app(settings, Store(database_url))

    @public
    async def codec_use(request: web.Request) -> web.Response:
        return web.json_response({**use.report(), "relay": request.app[RELAY].totals()})

    app.router.add_get("/_test/codec-use", codec_use)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="relay server for the relay tests")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.database_url, args.data_dir))

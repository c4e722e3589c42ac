"""What ``studycast publish`` sends: a camera (OpenCV) or a media file (PyAV), as aiortc tracks.

A source lives for the whole broadcast; ``tracks()`` gives fresh tracks for each WebRTC
connection (aiortc stops a sender's track when its connection closes), and they carry on where
the previous connection stopped.

- **Camera**: a capture thread reads ``cv2.VideoCapture`` and converts every picture to
  yuv420p at the chosen size; the track hands the newest picture to aiortc at most ``fps`` times
  a second, and aiortc encodes it (and answers keyframe requests itself).
- **File**: a reader thread demuxes the file. A video stream already in VP8, or in H.264 baseline
  (no B-frames, which WebRTC cannot carry), is sent as it is, paced in real time (``passthrough``);
  a keyframe request makes the video jump to the file's next keyframe, as ``PacedPacketTrack``
  does. Opus audio is sent as it is too. Anything else is decoded here and encoded by aiortc.
  Audio and video share one schedule, so they stay in step across stalls, jumps and loops; the
  file pauses while no connection takes its media.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.bitstream import BitStreamFilterContext
from av.container import InputContainer
from av.packet import Packet
from av.video.frame import VideoFrame

from attendance.errors import InvalidInput
from client.publisher import CLOCK_RATES, DEFAULT_MAX_LAG

log = logging.getLogger(__name__)

Kind = Literal["audio", "video"]
Payload: TypeAlias = "Packet[Any] | VideoFrame | AudioFrame"

# How far the reader may run ahead, in items: packets are small, decoded pictures are not.
QUEUE_AHEAD = {"passthrough": 240, "decoded": 12, "audio": 500}
# H.264 profiles sent as they are, with the profile-level-id offered for them.
PASSTHROUGH_H264 = {"Constrained Baseline": "42e01f", "Baseline": "42001f"}


class SourceError(InvalidInput):
    """The camera or file cannot be used (missing, unreadable, no video)."""

    code = "bad_source"


# --- the shared schedule ----------------------------------------------------------------------


class Timeline:
    """When each item of a file is due, for all its tracks together.

    Items carry their time in the file (plus the loops before). ``skip`` is the content skipped
    by keyframe jumps, so output time runs on without a hole; ``origin`` maps output time to the
    monotonic clock and moves forward when the consumer stalls, so nothing bursts afterwards.
    """

    def __init__(
        self, *, max_lag: float = DEFAULT_MAX_LAG, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.origin: float | None = None
        self.skip = 0.0
        self.last_out: dict[str, float] = {}
        self.video_step = 1 / 30
        self._max_lag = max_lag
        self._clock = clock

    def jump_to(self, t: float) -> None:
        """Video continues with the item at file time ``t`` right after the last one sent."""
        last = self.last_out.get("video")
        if last is not None:
            self.skip = max(self.skip, t - (last + self.video_step))

    def delay(self, out_t: float) -> float:
        """Seconds to wait before output time ``out_t`` is due (moving the schedule if late)."""
        now = self._clock()
        if self.origin is None or now - (self.origin + out_t) > self._max_lag:
            self.origin = now - out_t
        return max(0.0, self.origin + out_t - now)

    def sent(self, kind: str, out_t: float) -> None:
        last = self.last_out.get(kind)
        if kind == "video" and last is not None and 0 < out_t - last < 1:
            self.video_step = out_t - last
        self.last_out[kind] = out_t


@dataclass(slots=True)
class Item:
    """One packet or decoded frame of a file; ``t`` in seconds since the first pass began."""

    kind: Kind
    payload: Payload
    t: float
    keyframe: bool


# --- sources ----------------------------------------------------------------------------------


class MediaSource(ABC):
    """A camera or file. ``start()`` opens it (``SourceError`` if it cannot), ``tracks()`` makes
    the tracks for one connection, ``close()`` (idempotent) releases it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.passthrough: str | None = None  # "vp8" or "h264" when video is sent as it is
        self.h264_profile = "42e01f"
        self.has_audio = False
        self.frames_sent = 0
        self.error: str | None = None
        self.ended = asyncio.Event()  # everything sent (a file without loop), or failed

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    def tracks(self) -> list[MediaStreamTrack]: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def describe(self) -> str:
        """One line for the operator: what is sent and how."""

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self.ended.set()


# --- file -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilePlan:
    """How each stream of a file is sent, decided once when the file is opened."""

    video_codec: str  # the file's
    video_passthrough: bool
    h264_profile: str  # offered for passthrough H.264
    width: int
    height: int
    fps: float
    audio_codec: str | None
    audio_passthrough: bool


def plan_file(container: InputContainer, *, reencode: bool = False) -> FilePlan:
    """Which streams to send and whether as they are (see the module docstring)."""
    if not container.streams.video:
        raise InvalidInput("it has no video stream")
    video = container.streams.video[0]
    ctx = video.codec_context
    name = ctx.name
    profile = str(ctx.profile or "")
    if name == "vp8":
        passthrough = True
    elif name == "h264":
        passthrough = profile in PASSTHROUGH_H264 and not ctx.has_b_frames
    else:
        passthrough = False
    audio = container.streams.audio[0] if container.streams.audio else None
    rate = video.average_rate or video.guessed_rate or 30
    return FilePlan(
        video_codec=name,
        video_passthrough=passthrough and not reencode,
        h264_profile=PASSTHROUGH_H264.get(profile, "42e01f"),
        width=ctx.width,
        height=ctx.height,
        fps=float(rate),
        audio_codec=None if audio is None else audio.codec_context.name,
        audio_passthrough=audio is not None and audio.codec_context.name == "opus" and not reencode,
    )


class FileSource(MediaSource):
    """A media file, read by a thread ahead of its tracks, once or looping."""

    def __init__(
        self,
        path: Path,
        *,
        loop: bool = False,
        size: tuple[int, int] | None = None,
        reencode: bool = False,
        max_lag: float = DEFAULT_MAX_LAG,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(path.name)
        self.path = path
        self.looping = loop
        self.size = size
        self.reencode = reencode
        self.plan: FilePlan | None = None
        self.timeline = Timeline(max_lag=max_lag, clock=clock)
        self.jumps = 0  # keyframe requests that skipped content
        self._queues: dict[Kind, asyncio.Queue[Item | None]] = {}
        self._held: dict[str, Item] = {}
        self._finished: set[str] = set()
        self._reader: _Reader | None = None

    async def start(self) -> None:
        self.plan = await asyncio.to_thread(self._probe)
        self.passthrough = self.plan.video_codec if self.plan.video_passthrough else None
        self.h264_profile = self.plan.h264_profile
        self.has_audio = self.plan.audio_codec is not None
        video_ahead = QUEUE_AHEAD["passthrough" if self.passthrough else "decoded"]
        self._queues = {"video": asyncio.Queue(video_ahead)}
        if self.has_audio:
            self._queues["audio"] = asyncio.Queue(QUEUE_AHEAD["audio"])
        self._reader = _Reader(self, asyncio.get_running_loop())
        self._reader.start()

    def _probe(self) -> FilePlan:
        try:
            with av.open(str(self.path)) as container:
                assert isinstance(container, InputContainer)
                return plan_file(container, reencode=self.reencode)
        except FileNotFoundError:
            raise SourceError(f"cannot read {self.path}: no such file") from None
        except (OSError, av.FFmpegError, InvalidInput) as exc:
            raise SourceError(f"cannot read {self.path}: {_reason(exc)}") from None

    def tracks(self) -> list[MediaStreamTrack]:
        return [_FileTrack(kind, self) for kind in self._queues]

    async def take(self, kind: Kind) -> Item | None:
        """The next item of ``kind``; None once that kind has ended."""
        if kind in self._finished:
            return None
        held = self._held.pop(kind, None)
        return held if held is not None else await self._queues[kind].get()

    def hold(self, kind: str, item: Item) -> None:
        """Keep an item taken by a track whose connection went away, for the next track."""
        self._held[kind] = item

    def finish(self, kind: str) -> None:
        self._finished.add(kind)
        if self._finished >= set(self._queues):
            if self._reader is not None and self._reader.error:
                self._fail(self._reader.error)
            self.ended.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.stopping.set()
            await asyncio.to_thread(self._reader.join, 5.0)
            self._reader = None

    def describe(self) -> str:
        plan = self.plan
        if plan is None:
            return self.name
        size = f"{plan.width}x{plan.height}"
        if plan.video_passthrough:
            video = f"video {plan.video_codec.upper()} {size} sent as it is"
        else:
            to = f" scaled to {self.size[0]}x{self.size[1]}" if self.size else ""
            video = f"video {plan.video_codec} {size} decoded{to} and encoded by aiortc"
        if plan.audio_codec is None:
            audio = "no audio"
        elif plan.audio_passthrough:
            audio = "Opus audio sent as it is"
        else:
            audio = f"audio {plan.audio_codec} decoded and encoded to Opus"
        once = "looping" if self.looping else "once"
        return f"{self.name}: {video}, {audio}, {once}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InvalidInput):
        return exc.detail
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or str(exc)
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class _FileTrack(MediaStreamTrack):
    """One kind of a file's media, released on the shared ``Timeline``."""

    def __init__(self, kind: Kind, source: FileSource) -> None:
        super().__init__()
        self.kind = self._kind = kind
        self._source = source
        self._rate = CLOCK_RATES[kind]
        # A new connection's video starts at a keyframe; so does video after a request.
        self._want_keyframe = kind == "video" and source.passthrough is not None

    def request_keyframe(self) -> None:
        """Make the next video item a keyframe: skip ahead to the file's next one."""
        if self.kind == "video":
            self._want_keyframe = True

    async def recv(self) -> Payload:
        source, timeline = self._source, self._source.timeline
        skipped = 0
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item = await source.take(self._kind)
            if item is None:
                source.finish(self.kind)
                self.stop()
                raise MediaStreamError
            if self._want_keyframe:
                if not item.keyframe:
                    skipped += 1
                    continue
                self._want_keyframe = False
                source.jumps += skipped > 0
                timeline.jump_to(item.t)
            out_t = item.t - timeline.skip
            last = timeline.last_out.get(self.kind)
            if self.kind == "audio" and last is not None and out_t < last:
                continue  # audio of content the video jumped over
            try:
                await asyncio.sleep(timeline.delay(out_t))
                if self.readyState != "live":
                    raise MediaStreamError
            except (asyncio.CancelledError, MediaStreamError):
                source.hold(self.kind, item)
                raise
            timeline.sent(self.kind, out_t)
            if self.kind == "video":
                source.frames_sent += 1
            payload = item.payload
            payload.pts = round(out_t * self._rate)
            payload.time_base = fractions.Fraction(1, self._rate)
            return payload


class _Stopped(Exception):
    """The source is closing: the reader thread leaves."""


class _Reader(threading.Thread):
    """Reads (and if needed decodes) the file ahead of the tracks, pass after pass if looping."""

    def __init__(self, source: FileSource, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"read-{source.name}", daemon=True)
        self.source = source
        self.loop = loop
        self.stopping = threading.Event()
        self.error: str | None = None
        assert source.plan is not None
        self.plan = source.plan

    def run(self) -> None:
        offset = 0.0
        try:
            while True:
                end = self._one_pass(offset)
                if not self.source.looping or end <= offset:
                    break
                offset = end
        except _Stopped:
            return
        except Exception as exc:  # whatever stops the reader ends the file, with the reason
            self.error = f"cannot read {self.source.path}: {_reason(exc)}"
            log.warning("%s", self.error, exc_info=not isinstance(exc, OSError | av.FFmpegError))
        with contextlib.suppress(_Stopped):
            for kind in self.source._queues:
                self._put(kind, None)

    def _put(self, kind: Kind, item: Item | None) -> None:
        """Queue an item, waiting while the queue is full; ``_Stopped`` once closing."""
        try:
            future = asyncio.run_coroutine_threadsafe(
                self.source._queues[kind].put(item), self.loop
            )
        except RuntimeError:
            raise _Stopped from None  # the event loop is closed
        while True:
            if self.stopping.is_set():
                future.cancel()
                raise _Stopped
            try:
                future.result(timeout=0.25)
                return
            except TimeoutError:
                continue

    def _one_pass(self, offset: float) -> float:
        """Send the whole file once, its times shifted by ``offset``; returns where it ended."""
        plan = self.plan
        with av.open(str(self.source.path)) as container:
            assert isinstance(container, InputContainer)
            video = container.streams.video[0]
            audio = container.streams.audio[0] if plan.audio_codec is not None else None
            video.codec_context.thread_type = "AUTO"
            streams = [video] if audio is None else [video, audio]
            state = _PassState(offset)
            for item in self._items(container, streams, video, audio, state):
                self._put(item.kind, item)
                if self.stopping.is_set():
                    raise _Stopped
            return state.end

    def _items(
        self,
        container: InputContainer,
        streams: list[Any],
        video: Any,
        audio: Any,
        state: _PassState,
    ) -> Iterator[Item]:
        plan = self.plan
        bsf = (
            BitStreamFilterContext("h264_mp4toannexb", video)
            if plan.video_passthrough and plan.video_codec == "h264"
            else None
        )
        resampler = AudioResampler(format="s16", layout="stereo", rate=48_000)
        size = self.source.size or (plan.width - plan.width % 2, plan.height - plan.height % 2)
        step = 1 / plan.fps if plan.fps > 0 else 1 / 30
        for packet in container.demux(*streams):
            last = packet.size == 0  # the flush packet each stream ends with
            if packet.stream is video:
                if plan.video_passthrough:
                    packets = [] if last and bsf is None else [packet]
                    if bsf is not None:
                        packets = bsf.filter(None if last else packet)
                    for p in packets:
                        yield state.item("video", p, step)
                else:
                    for frame in packet.decode():
                        assert isinstance(frame, VideoFrame)
                        picture = frame.reformat(width=size[0], height=size[1], format="yuv420p")
                        picture.pts, picture.time_base = frame.pts, frame.time_base
                        yield state.item("video", picture, step)
            elif packet.stream is audio:
                if plan.audio_passthrough:
                    if not last:
                        yield state.item("audio", packet, 0.02)
                else:
                    outs: list[AudioFrame] = []
                    for frame in packet.decode():
                        assert isinstance(frame, AudioFrame)
                        outs += resampler.resample(frame)
                    if last:
                        outs += resampler.resample(None)
                    for out in outs:
                        yield state.audio_samples(out)


class _PassState:
    """Times within one pass of the file: shifted to start at ``offset``, never backwards."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.zero: float | None = None
        self.end = offset
        self.last: dict[str, float] = {}
        self.audio_start: float | None = None
        self.samples_done = 0

    def item(self, kind: Kind, payload: Payload, step: float) -> Item:
        if isinstance(payload, Packet):
            stamp = payload.pts if payload.pts is not None else payload.dts
            base = payload.time_base
            t = None if stamp is None or base is None else float(stamp * base)
        else:
            t = payload.time
        if t is None:
            t = self.last.get(kind, -step) + step
        else:
            if self.zero is None:
                self.zero = t
            t = self.offset + max(0.0, t - self.zero)
        t = max(t, self.last.get(kind, t))
        self.last[kind] = t
        self.end = max(self.end, t + step)
        is_key = not isinstance(payload, Packet) or bool(payload.is_keyframe)
        return Item(kind, payload, t, is_key)

    def audio_samples(self, frame: AudioFrame) -> Item:
        """Decoded audio is timed by its sample count from its first frame: no drift."""
        if self.audio_start is None:
            first = frame.time
            if first is not None and self.zero is None:
                self.zero = first
            base = 0.0 if first is None or self.zero is None else max(0.0, first - self.zero)
            self.audio_start = self.offset + base
        t = self.audio_start + self.samples_done / frame.sample_rate
        self.samples_done += frame.samples
        self.last["audio"] = t
        self.end = max(self.end, t + frame.samples / frame.sample_rate)
        return Item("audio", frame, t, True)


def open_source(
    *,
    camera: int | None = None,
    file: Path | None = None,
    size: tuple[int, int] | None = None,
    fps: int | None = None,
    loop: bool = False,
    reencode: bool = False,
) -> MediaSource:
    """The camera or file source the command line asked for (not started yet)."""
    if (camera is None) == (file is None):
        raise InvalidInput("give exactly one of a camera index or a file")
    if camera is not None:
        from client.camera import CameraSource  # imported here: it builds on this module

        return CameraSource(camera, size=size or (1280, 720), fps=fps or 30)
    assert file is not None
    return FileSource(file, loop=loop, size=size, reencode=reencode)

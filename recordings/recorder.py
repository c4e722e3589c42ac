"""The recorder: taps a session's relay and remuxes each broadcaster connection into a segment.

``SessionRecorder`` is the relay's tap (``SessionRelay.taps``): on the event loop it only sorts
packets by connection and hands them to that connection's ``SegmentWriter`` without waiting.
Each writer owns a thread and a bounded queue; the thread joins frames, waits for the first
keyframe, and writes the file. A writer that falls behind drops packets (and then waits for the
next keyframe) rather than slowing the broadcast. ``Recordings`` owns every recorder of the
process and writes what they report to the catalogue, on one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from attendance.clock import Clock
from attendance.store import Store
from recordings import catalogue
from recordings.assembly import Frame, TrackAssembler
from recordings.events import RecordingEvent, SegmentClosed, SegmentOpened
from recordings.lipsync import LipSync, Placement
from recordings.remux import RemuxError, SegmentFile, container_for, file_digest
from server.relay.fanout import SessionRelay
from server.relay.packet import SenderReport, SourcePacket

log = logging.getLogger(__name__)

# Packets a writer may have queued (a few seconds of a 2 Mbit/s broadcast) before it drops.
QUEUE_PACKETS = 4096
# How often the writer thread takes what has queued (a batch, not a wake-up per packet).
DRAIN_INTERVAL_S = 0.05
KEYFRAME_ASK_INTERVAL_S = 1.0
RECORDINGS_DIR = "recordings"

Emit = Callable[[RecordingEvent], None]


class SegmentWriter:
    """One broadcaster connection's segment: a thread fed through a bounded queue.

    ``offer`` and ``finish`` never block. The file starts at the first video keyframe (video
    before it is dropped, audio from the same moment on); pts are the RTP timestamps since then,
    the audio placed against the video by the sender's reports or by arrival
    (``recordings.lipsync``). Until it is placed (a few seconds at most) the start of the segment
    is held, then written in time order.
    """

    def __init__(
        self,
        *,
        session_id: int,
        video_codec: str,
        data_dir: Path,
        allocate_index: Callable[[], int],
        wall_at: Callable[[float], datetime],
        emit: Emit,
        ask_keyframe: Callable[[], None],
        queue_packets: int = QUEUE_PACKETS,
    ) -> None:
        self.session_id = session_id
        self.video_codec = video_codec
        self._data_dir = data_dir
        self._allocate_index = allocate_index
        self._wall_at = wall_at
        self._emit = emit
        self._ask_keyframe = ask_keyframe
        # A plain deque, drained in batches: appending is atomic, and no lock or wake-up per
        # packet is paid on the event loop (measured: most of the recorder's cost otherwise).
        self._queue: deque[SourcePacket | SenderReport] = deque()
        self._queue_limit = queue_packets
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"recorder-{session_id}", daemon=True
        )
        self.dropped_packets = 0
        # Thread side.
        self._assemblers = {
            "video": TrackAssembler("video", video_codec),
            "audio": TrackAssembler("audio", "opus"),
        }
        self._ssrc: dict[str, int] = {}
        self._file: SegmentFile | None = None
        self._opened: SegmentOpened | None = None
        self._start_at = 0.0
        self._video_origin = 0
        self._sync: LipSync | None = None
        self._reports: dict[str, SenderReport] = {}
        self._placement: Placement | None = None
        self._holding_video = True
        self._held_video: list[Frame] = []
        self._held_audio: list[Frame] = []
        self.audio_placed_by: str | None = None
        self._waiting_keyframe = True
        self._asked_at: float | None = None
        self.dropped_frames = 0

    # -- event loop side ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def offer(self, packet: SourcePacket | SenderReport) -> None:
        if len(self._queue) < self._queue_limit:
            self._queue.append(packet)
        else:
            self.dropped_packets += 1
            if self.dropped_packets % 500 == 1:
                log.warning(
                    "session %s: recorder behind, %d packets dropped",
                    self.session_id,
                    self.dropped_packets,
                )

    def finish(self) -> None:
        """No more packets: the thread writes what is queued, closes the file and ends."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    # -- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                stopping = self._stop.wait(DRAIN_INTERVAL_S)
                while self._queue:
                    self._packet(self._queue.popleft())
                if stopping:
                    break
            for assembler in self._assemblers.values():
                for frame in assembler.flush():
                    self._frame(frame)
            self._place()
        except Exception:
            log.exception("session %s: recording failed", self.session_id)
        finally:
            self._close()

    def _packet(self, packet: SourcePacket | SenderReport) -> None:
        if isinstance(packet, SenderReport):
            self._report(packet)
            return
        ssrc = packet.epoch & 0xFFFF_FFFF
        if self._ssrc.setdefault(packet.kind, ssrc) != ssrc:
            return  # another stream of the same kind (a retransmission stream): not media
        for frame in self._assemblers[packet.kind].push(packet):
            self._frame(frame)

    def _frame(self, frame: Frame) -> None:
        if frame.kind == "video":
            self._video(frame)
        else:
            self._audio(frame)

    def _video(self, frame: Frame) -> None:
        if self._waiting_keyframe or frame.after_loss:
            if not frame.keyframe:
                self._waiting_keyframe = True
                self.dropped_frames += 1
                self._want_keyframe(frame.arrived_at)
                return
            self._waiting_keyframe = False
        if self._file is None and not self._open(frame):
            self._waiting_keyframe = True
            return
        assert self._file is not None and self._sync is not None
        if frame.timestamp < self._video_origin:
            return
        self._sync.video(frame.timestamp, frame.arrived_at)
        if not self._holding_video:
            self._write_video(frame)
            return
        self._held_video.append(frame)
        if self._sync.video_only_so_far:
            self._place()  # no audio yet: the video goes on alone

    def _audio(self, frame: Frame) -> None:
        if self._file is None or self._sync is None or frame.arrived_at < self._start_at:
            return
        if self._placement is not None:
            self._write_audio(frame, self._placement)
            return
        self._sync.audio(frame.timestamp, frame.arrived_at)
        self._held_audio.append(frame)
        if self._sync.settled:
            self._place()

    def _report(self, report: SenderReport) -> None:
        if report.packets == 0 or report.epoch & 0xFFFF_FFFF != self._ssrc.get(report.kind):
            return  # before any media (no clock yet), or of a retransmission stream
        self._reports[report.kind] = report
        if self._sync is not None:
            self._sync.report(report.kind, report.ntp_s, report.rtp_timestamp)
            if self._placement is None and self._held_audio and self._sync.settled:
                self._place()

    def _place(self) -> None:
        """Place the audio (if any came) and write what was held, in time order."""
        if self._sync is None:
            return
        placement = self._placement or self._sync.place()
        if placement is not None and self._placement is None:
            self._placement = placement
            self.audio_placed_by = placement.by
            log.info(
                "session %s: audio placed %+.3f s from the segment start (by %s)",
                self.session_id,
                placement.pts / 48_000,
                placement.by,
            )
        held: list[tuple[float, int, Frame]] = [
            ((f.timestamp - self._video_origin) / 90_000, 0, f) for f in self._held_video
        ]
        if placement is not None:
            held += [(placement.pts_of(f.timestamp) / 48_000, 1, f) for f in self._held_audio]
            self._held_audio = []
        self._held_video, self._holding_video = [], False
        for _, kind, frame in sorted(held, key=lambda h: (h[0], h[1])):
            if kind == 0:
                self._write_video(frame)
            else:
                assert placement is not None
                self._write_audio(frame, placement)

    def _write_video(self, frame: Frame) -> None:
        assert self._file is not None
        self._file.write_video(frame.data, frame.timestamp - self._video_origin, frame.keyframe)

    def _write_audio(self, frame: Frame, placement: Placement) -> None:
        assert self._file is not None
        pts = placement.pts_of(frame.timestamp)
        if pts >= 0:  # none from before the first picture
            self._file.write_audio(frame.data, pts)

    def _want_keyframe(self, now: float) -> None:
        if self._asked_at is None or now - self._asked_at >= KEYFRAME_ASK_INTERVAL_S:
            self._asked_at = now
            self._ask_keyframe()

    def _open(self, keyframe: Frame) -> bool:
        container, ext = container_for(self.video_codec)
        index = self._allocate_index()
        relative = f"{RECORDINGS_DIR}/{self.session_id}/{index}.{ext}"
        try:
            self._file = SegmentFile(self._data_dir / relative, self.video_codec, keyframe.data)
        except RemuxError as exc:
            log.warning("session %s: cannot start segment %s: %s", self.session_id, index, exc)
            self._want_keyframe(keyframe.arrived_at)
            return False
        self._start_at = keyframe.arrived_at
        self._video_origin = keyframe.timestamp
        self._sync = LipSync(keyframe.timestamp, keyframe.arrived_at)
        for report in self._reports.values():
            self._sync.report(report.kind, report.ntp_s, report.rtp_timestamp)
        self._opened = SegmentOpened(
            session_id=self.session_id,
            segment_index=index,
            path=relative,
            container=container,
            video_codec=self.video_codec,
            audio_codec="opus",
            started_at=self._wall_at(keyframe.arrived_at),
        )
        log.info("session %s: recording segment %s to %s", self.session_id, index, relative)
        self._emit(self._opened)
        return True

    def _close(self) -> None:
        file, opened = self._file, self._opened
        if file is None or opened is None:
            return
        try:
            file.close()
        except Exception:
            log.exception("session %s: closing %s failed", self.session_id, opened.path)
        size, sha256 = file_digest(file.path)
        duration = round(file.duration_s, 3)
        self._emit(
            SegmentClosed(
                session_id=self.session_id,
                segment_index=opened.segment_index,
                ended_at=opened.started_at + timedelta(seconds=duration),
                duration_s=duration,
                size_bytes=size,
                sha256=sha256,
                video_frames=file.frames["video"],
                audio_frames=file.frames["audio"],
                audio_codec="opus" if file.frames["audio"] else None,
                dropped=self.dropped_packets + self.dropped_frames,
                audio_placed_by=self.audio_placed_by,
            )
        )


class SessionRecorder:
    """The relay tap of one session (see ``server.relay.fanout.MediaTap``): a new segment per
    broadcaster connection. All methods run on the event loop and return at once."""

    def __init__(
        self,
        session_id: int,
        video_codec: str,
        make_writer: Callable[[int], SegmentWriter],
    ) -> None:
        self.session_id = session_id
        self.video_codec = video_codec
        self._make_writer = make_writer
        self._connection = 0
        self.writer: SegmentWriter | None = None
        self.closed = False

    def media(self, packet: SourcePacket) -> None:
        connection = packet.epoch >> 32
        if self.closed or connection < self._connection:
            return  # a late packet of a connection already finished
        if connection > self._connection:
            self._finish()
            self._connection = connection
            self.writer = self._make_writer(self.session_id)
            self.writer.start()
        if self.writer is not None:
            self.writer.offer(packet)

    def sender_report(self, report: SenderReport) -> None:
        if self.writer is not None and report.epoch >> 32 == self._connection:
            self.writer.offer(report)

    def broadcaster_gone(self, epoch: int) -> None:
        if epoch == self._connection:
            self._finish()

    def relay_closed(self) -> None:
        self.closed = True
        self._finish()

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.finish()
            self.writer = None


class Recordings:
    """Every recorder of the process, and the one task that catalogues their segments.

    ``start()`` on the running loop; ``attach(hub)`` before a broadcaster is added; ``close()``
    finishes every segment and writes the catalogue (idempotent).
    """

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        clock: Clock,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._data_dir = data_dir
        self._clock = clock
        self._monotonic = monotonic
        self._next_index: dict[int, int] = {}
        self._index_lock = threading.Lock()
        self._writers: set[SegmentWriter] = set()
        self._events: asyncio.Queue[RecordingEvent | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.events: list[RecordingEvent] = []  # every event catalogued, in order

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._catalogue())

    async def attach(self, hub: SessionRelay) -> SessionRecorder | None:
        """Tap ``hub`` if its session is to be recorded (the per-session switch, read on every
        call); detach a recorder the switch has since turned off. Idempotent."""
        async with self._store.read() as db:
            enabled, next_index = await catalogue.session_recording(db, hub.session_id)
        with self._index_lock:
            self._next_index[hub.session_id] = max(
                self._next_index.get(hub.session_id, 0), next_index
            )
        current = next((t for t in hub.taps if isinstance(t, SessionRecorder)), None)
        if not enabled:
            if current is not None:
                current.relay_closed()
                hub.taps.remove(current)
            return None
        if current is None:
            current = self.recorder(hub.session_id, hub.video_codec, hub.request_keyframe)
            hub.taps.append(current)
        return current

    def recorder(
        self,
        session_id: int,
        video_codec: str,
        request_keyframe: Callable[[], None] | None = None,
    ) -> SessionRecorder:
        """A recorder not tied to a hub (``attach`` uses it; so do tests and tools)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("Recordings.start() was not called")
        origin_wall, origin_mono = self._clock(), self._monotonic()

        def wall_at(monotonic: float) -> datetime:
            return origin_wall + timedelta(seconds=monotonic - origin_mono)

        def ask_keyframe() -> None:
            if request_keyframe is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(request_keyframe)

        def emit(event: RecordingEvent) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._events.put_nowait, event)

        def make_writer(sid: int) -> SegmentWriter:
            writer = SegmentWriter(
                session_id=sid,
                video_codec=video_codec,
                data_dir=self._data_dir,
                allocate_index=lambda: self._allocate(sid),
                wall_at=wall_at,
                emit=emit,
                ask_keyframe=ask_keyframe,
            )
            self._writers = {w for w in self._writers if not w.done}
            self._writers.add(writer)
            return writer

        return SessionRecorder(session_id, video_codec, make_writer)

    def _allocate(self, session_id: int) -> int:
        with self._index_lock:
            index = self._next_index.get(session_id, 0)
            self._next_index[session_id] = index + 1
            return index

    async def _catalogue(self) -> None:
        while True:
            event = await self._events.get()
            try:
                if event is None:
                    return
                async with self._store.write() as db:
                    await catalogue.apply_event(db, event)
                self.events.append(event)
            except Exception:
                log.exception("could not catalogue %s", event)
            finally:
                self._events.task_done()

    async def settled(self) -> None:
        """Wait until every finished segment is closed and catalogued."""
        for writer in [w for w in self._writers if w._stop.is_set()]:
            await asyncio.to_thread(writer.join)
        await self._events.join()

    async def close(self) -> None:
        """Finish every segment (the relay should be closed first) and catalogue them."""
        if self._closed:
            return
        self._closed = True
        for writer in list(self._writers):
            writer.finish()
        for writer in list(self._writers):
            await asyncio.to_thread(writer.join)
        if self._task is not None:
            self._events.put_nowait(None)
            await self._task

"""A camera as a ``studycast publish`` source: a capture thread reads ``cv2.VideoCapture`` and
converts every picture to yuv420p at the chosen size; the track hands the newest picture to
aiortc at most ``fps`` times a second, and aiortc encodes it (and answers keyframe requests
itself). Video only: OpenCV has no microphone. See ``client.sources`` for the file source.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from av.video.frame import VideoFrame

from client.publisher import CLOCK_RATES
from client.sources import MediaSource, SourceError

log = logging.getLogger(__name__)

CAMERA_OPEN_TIMEOUT_S = 10.0
CAMERA_FAILURES = 30  # reads in a row without a picture before the camera counts as gone


# --- camera -----------------------------------------------------------------------------------


class CameraSource(MediaSource):
    """A camera by index, captured in a thread and scaled to ``size``; video only."""

    def __init__(
        self,
        index: int,
        *,
        size: tuple[int, int],
        fps: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(f"camera {index}")
        self.index = index
        self.size = size
        self.fps = fps
        self._clock = clock
        self._capture: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._latest: VideoFrame | None = None
        self._seq = 0
        self._new_frame = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.camera_size: tuple[int, int] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[Any] = self._loop.create_future()

        def open_camera() -> None:
            try:
                result = self._open()
            except BaseException as exc:
                self._call(_settle, opened, None, exc)
            else:
                self._call(_settle, opened, result, None)

        # A daemon thread, not the executor: a camera that never answers must not hold up exit.
        threading.Thread(target=open_camera, name=f"open-camera-{self.index}", daemon=True).start()
        try:
            async with asyncio.timeout(CAMERA_OPEN_TIMEOUT_S):
                self._capture = await opened
        except TimeoutError:
            raise SourceError(
                f"camera {self.index} did not open within {CAMERA_OPEN_TIMEOUT_S:g} s"
            ) from None
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.index}", daemon=True)
        self._thread.start()

    def _open(self) -> Any:
        # OpenCV logs every backend it tries; our own error says it once, readably.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        capture = cv2.VideoCapture(self.index)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"no camera at index {self.index}")
        width, height = self.size
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, self.fps)
        ok, picture = capture.read()
        if not ok or picture is None:
            capture.release()
            raise SourceError(f"camera {self.index} opened but gives no picture")
        self.camera_size = (int(picture.shape[1]), int(picture.shape[0]))
        return capture

    def _run(self) -> None:
        """Capture thread: read, convert, hand the newest picture to the event loop."""
        failures = 0
        width, height = self.size
        try:
            while not self._stopping.is_set():
                ok, picture = self._capture.read()
                if not ok or picture is None:
                    failures += 1
                    if failures >= CAMERA_FAILURES:
                        self._call(self._fail, f"camera {self.index} stopped giving pictures")
                        return
                    time.sleep(0.05)
                    continue
                failures = 0
                frame = VideoFrame.from_ndarray(picture, format="bgr24").reformat(
                    width=width, height=height, format="yuv420p"
                )
                self._call(self._deliver, frame)
        finally:
            self._capture.release()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are shutting down
            self._loop.call_soon_threadsafe(fn, *args)

    def _deliver(self, frame: VideoFrame) -> None:
        self._latest = frame
        self._seq += 1
        self._new_frame.set()

    async def next_frame(self, after: int) -> tuple[int, VideoFrame]:
        """A picture newer than number ``after``; ``MediaStreamError`` once the camera is gone."""
        while self._seq <= after or self._latest is None:
            if self.ended.is_set():
                raise MediaStreamError
            self._new_frame.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._new_frame.wait()
        return self._seq, self._latest

    def tracks(self) -> list[MediaStreamTrack]:
        return [_CameraTrack(self, self._clock)]

    async def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    def describe(self) -> str:
        got = ""
        if self.camera_size is not None and self.camera_size != self.size:
            got = f" (scaled from the camera's {self.camera_size[0]}x{self.camera_size[1]})"
        return (
            f"camera {self.index}: video {self.size[0]}x{self.size[1]}{got} at up to "
            f"{self.fps} fps, encoded by aiortc; no audio"
        )


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # timed out already: a late capture is dropped (OpenCV releases it when freed)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _CameraTrack(VideoStreamTrack):
    """The camera's newest picture, at most ``fps`` a second, stamped with the time it is sent."""

    def __init__(self, source: CameraSource, clock: Callable[[], float]) -> None:
        super().__init__()
        self._source = source
        self._clock = clock
        self._seq = 0
        self._began: float | None = None
        self._due = 0.0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._began is None:
            self._began = self._due = now
        if self._due > now:
            await asyncio.sleep(self._due - now)
        self._seq, frame = await self._source.next_frame(self._seq)
        now = self._clock()
        step = 1 / self._source.fps
        self._due = max(self._due + step, now - step)  # a slow camera earns no burst later
        frame.pts = round((now - self._began) * CLOCK_RATES["video"])
        frame.time_base = fractions.Fraction(1, CLOCK_RATES["video"])
        self._source.frames_sent += 1
        return frame

"""Sound for ``studycast watch``: decoded Opus frames to the machine's default output device.

Playback uses the ``sounddevice`` package (PortAudio) when it is importable and an output device
exists; a venue PC without speakers, a server or a test runner has neither, and the picture must
go on regardless, so ``open_audio_output`` then says why once and returns a sink that drops
everything. Frames are resampled to 16-bit 48 kHz stereo and handed to PortAudio's callback
through a short buffer: a callback never waits for the network, and a late network never builds
up delay beyond ``MAX_BUFFER_S``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, Protocol

import av

SAMPLE_RATE = 48_000
CHANNELS = 2
BYTES_PER_FRAME = 2 * CHANNELS  # s16 interleaved
MAX_BUFFER_S = 0.5


class AudioSink(Protocol):
    """Where decoded audio frames go."""

    def play(self, frame: av.AudioFrame) -> None: ...

    def close(self) -> None: ...


class SilentSink:
    """No device (or sound turned off): frames are dropped."""

    def play(self, frame: av.AudioFrame) -> None:
        pass

    def close(self) -> None:
        pass


class PcmBuffer:
    """Interleaved PCM bytes between the event loop (writer) and PortAudio's thread (reader).

    Holds at most ``limit`` bytes: when the writer runs ahead, the oldest sound is dropped so
    the delay stays short; when it falls behind, the reader gets silence.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit - limit % BYTES_PER_FRAME
        self._data = bytearray()
        self._lock = threading.Lock()
        self.dropped = 0
        self.underruns = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def write(self, pcm: bytes) -> None:
        with self._lock:
            self._data += pcm
            excess = len(self._data) - self._limit
            if excess > 0:
                excess += -excess % BYTES_PER_FRAME  # never split a sample frame
                del self._data[:excess]
                self.dropped += excess

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes: what is buffered, then silence."""
        with self._lock:
            chunk = bytes(self._data[:size])
            del self._data[:size]
        if len(chunk) < size:
            self.underruns += 1
            chunk += bytes(size - len(chunk))
        return chunk


class PcmConverter:
    """Any decoded audio frame to s16 48 kHz stereo bytes (Opus arrives as fltp 48 kHz)."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)

    def convert(self, frame: av.AudioFrame) -> bytes:
        frame.pts = None  # the resampler would otherwise insist on continuous timestamps
        return b"".join(
            bytes(out.planes[0])[: out.samples * BYTES_PER_FRAME]
            for out in self._resampler.resample(frame)
        )


class DeviceSink:
    """Plays through a ``sounddevice.RawOutputStream`` on the default output device."""

    def __init__(self, sounddevice: Any) -> None:
        self.buffer = PcmBuffer(int(SAMPLE_RATE * MAX_BUFFER_S) * BYTES_PER_FRAME)
        self._converter = PcmConverter()
        self._stream = sounddevice.RawOutputStream(
            samplerate=SAMPLE_RATE,
            channels=CHANNELS,
            dtype="int16",
            callback=self._callback,
        )
        self._stream.start()
        self._closed = False

    def _callback(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        outdata[:] = self.buffer.read(frames * BYTES_PER_FRAME)

    def play(self, frame: av.AudioFrame) -> None:
        if not self._closed:
            self.buffer.write(self._converter.convert(frame))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.stop()
            self._stream.close()


def open_audio_output(*, enabled: bool, say: Callable[[str], None]) -> AudioSink:
    """A sink for the default output device, or a silent one (saying why, once)."""
    if not enabled:
        return SilentSink()
    try:
        sounddevice = importlib.import_module("sounddevice")
    except ImportError:
        say("audio: sounddevice not installed")
        return SilentSink()
    except OSError:  # the package is there, the PortAudio library is not
        say("audio: no output device (PortAudio is not installed)")
        return SilentSink()
    try:
        sounddevice.query_devices(kind="output")
        return DeviceSink(sounddevice)
    except Exception:  # PortAudioError, ValueError: no default output device
        say("audio: no output device")
        return SilentSink()

"""Support for the recorder tests: a clip turned into the relay's ``SourcePacket``s (packetised
by aiortc's own packetisers, never encoded), reading a segment file back (decoding every frame
and the numbers drawn into them), and a recorder in a subprocess fed in real time, for the test
that kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from attendance.clock import utcnow
from attendance.store import Store
from client.clip import EncodedClip, read_frame_number
from recordings import Recordings, SegmentOpened
from server.relay.keyframes import keyframe_start
from server.relay.packet import SourcePacket

VIDEO_SSRC = 0x1111
AUDIO_SSRC = 0x2222


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A packet due ``at`` seconds into the clip; ``number`` is its video frame's (or -1)."""

    at: float
    packet: SourcePacket
    number: int


def clip_packets(clip: EncodedClip, connection: int = 1) -> Iterator[Scheduled]:
    """The clip as one broadcaster connection's RTP packets, audio and video interleaved in
    media time, with the payloads and keyframe marks the relay's ingest would give."""
    packer = Vp8Encoder() if clip.codec == "vp8" else H264Encoder()
    name = {"vp8": "VP8", "h264": "H264"}[clip.codec]
    time_base = fractions.Fraction(1, 90_000)
    items: list[Scheduled] = []
    seq = 0
    for i, frame in enumerate(clip.video):
        packet = av.Packet(frame.data)
        packet.pts = round(i * 90_000 / clip.fps)
        packet.time_base = time_base
        payloads, timestamp = packer.pack(packet)
        for j, payload in enumerate(payloads):
            source = SourcePacket(
                "video",
                (connection << 32) + VIDEO_SSRC,
                seq % 0x1_0000,
                timestamp,
                j == len(payloads) - 1,
                payload,
                j == 0 and keyframe_start(name, payload),
                0.0,
            )
            items.append(Scheduled(i / clip.fps, source, i))
            seq += 1
    for k, opus in enumerate(clip.audio):
        source = SourcePacket(
            "audio", (connection << 32) + AUDIO_SSRC, k, k * 960, True, opus.data, False, 0.0
        )
        items.append(Scheduled(k * 0.02, source, -1))
    items.sort(key=lambda s: s.at)
    yield from items


def decoded_numbers(path: Path) -> list[int]:
    """Decode every video frame of a file (raises on a decoding error) and read its number."""
    with av.open(str(path)) as container:
        return [read_frame_number(f) for f in container.decode(video=0)]


def decoded_audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return sum(f.samples for f in container.decode(audio=0)) / 48_000


# --- a recorder in a subprocess ----------------------------------------------------------------


async def _feed(database_url: str, data_dir: Path, session_id: int, codec: str) -> None:
    from relay_support import shared_clip

    store = Store(database_url)
    recordings = Recordings(store, data_dir, utcnow)
    recordings.start()
    recorder = recordings.recorder(session_id, codec)
    started = time.monotonic()
    opened = False
    for item in clip_packets(shared_clip(codec)):
        delay = started + item.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        recorder.media(replace(item.packet, arrived_at=time.monotonic()))
        if item.packet.marker and item.number >= 0:
            print(f"FED {item.number}", flush=True)
        if not opened and any(isinstance(e, SegmentOpened) for e in recordings.events):
            opened = True
            print("OPENED", flush=True)
    await recordings.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a recorder fed a clip in real time")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--session-id", type=int, required=True)
    parser.add_argument("--codec", required=True)
    args = parser.parse_args()
    asyncio.run(_feed(args.database_url, args.data_dir, args.session_id, args.codec))

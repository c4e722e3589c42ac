"""The whole-session download of an H.264 + Opus recording made of two segments (a broadcaster
reconnect) is one Matroska file that decodes completely: every picture of both segments, in
order, with growing timestamps, both segments' audio, and as long as the two segments together.

Run twice: the same encoder reconnecting (the second segment has the first one's SPS/PPS), and
an encoder restart at another picture size (other SPS/PPS), whose pictures the joined file must
still carry and decode at their own size although its track header comes from the first segment.
Recorded through the real relay from real aiortc peers, downloaded over HTTP by an organiser.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import av
import pytest
from relay_support import (
    CLIP_FPS,
    CLIP_GOP_S,
    clip_from,
    relay_stage,
    shared_clip,
    wait_for,
)

from attendance.store import Store
from client.clip import EncodedClip, make_clip, read_frame_number
from recordings import SegmentClosed
from server.whip import RECORDINGS

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SEGMENT_S = 6.0
# The restarted encoder: same codec settings as the shared clip, another picture size.
RESTART_SIZE = (352, 288)
H264_SPS, H264_PPS = 7, 8


def nal_units(annex_b: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B access unit (start codes of three or four bytes)."""
    starts: list[int] = []
    i = annex_b.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = annex_b.find(b"\x00\x00\x01", i + 3)
    for begin, end in zip(starts, [*starts[1:], len(annex_b) + 3], strict=True):
        yield annex_b[begin : end - 3].rstrip(b"\x00")


def parameter_sets(clip: EncodedClip) -> list[bytes]:
    """The SPS and PPS the clip's first keyframe carries in band."""
    first = clip.video[0]
    assert first.keyframe
    return [n for n in nal_units(first.data) if n[0] & 0x1F in (H264_SPS, H264_PPS)]


def restarted_encoder_clip() -> EncodedClip:
    width, height = RESTART_SIZE
    return make_clip(
        "h264",
        SEGMENT_S + 6,  # never loops within the segment: its numbers only grow
        fps=CLIP_FPS,
        width=width,
        height=height,
        bitrate=300_000,
        gop_seconds=CLIP_GOP_S,
    )


@dataclass(frozen=True)
class Decoded:
    numbers: list[int]  # drawn into each picture, in decoding order
    sizes: list[tuple[int, int]]  # of each picture
    pts: list[int]  # of each picture, in the video stream's time base
    video_packets: int
    audio_s: float  # decoded audio
    end_s: float  # end of the last packet of any stream, from the start of the file


def decode(path: Path) -> Decoded:
    """Demux and decode a whole file, video and audio (an FFmpeg error fails the test)."""
    numbers: list[int] = []
    sizes: list[tuple[int, int]] = []
    pts: list[int] = []
    video_packets = samples = 0
    end_s = 0.0
    with av.open(str(path)) as media:
        assert [s.type for s in media.streams] == ["video", "audio"]
        assert media.streams.video[0].codec_context.name == "h264"
        assert media.streams.audio[0].codec_context.name == "opus"
        for packet in media.demux():
            if packet.pts is not None and packet.time_base is not None:
                finish = (packet.pts + (packet.duration or 0)) * packet.time_base
                end_s = max(end_s, float(finish))
            if packet.stream.type == "video" and packet.size:
                video_packets += 1
            for frame in packet.decode():  # the empty packet at the end flushes the decoder
                if isinstance(frame, av.VideoFrame):
                    numbers.append(read_frame_number(frame))
                    sizes.append((frame.width, frame.height))
                    assert frame.pts is not None
                    pts.append(frame.pts)
                elif isinstance(frame, av.AudioFrame):
                    samples += frame.samples
    return Decoded(numbers, sizes, pts, video_packets, samples / 48_000, end_s)


@SQLITE_ONLY
@pytest.mark.parametrize("restart", [False, True], ids=["same-encoder", "encoder-restart"])
async def test_the_joined_download_of_a_two_segment_h264_recording_decodes_whole(
    store: Store, tmp_path: Path, now: datetime, restart: bool
) -> None:
    first_clip = shared_clip("h264")
    if restart:
        second_clip, second_from = restarted_encoder_clip(), 0
        assert parameter_sets(second_clip) != parameter_sets(first_clip), "other SPS/PPS"
    else:
        second_from = round(SEGMENT_S * CLIP_FPS)
        assert second_from in first_clip.keyframe_indices
        second_clip = clip_from(first_clip, second_from)
        assert parameter_sets(second_clip) == parameter_sets(first_clip)
    second_size = (second_clip.width, second_clip.height)
    data_dir = tmp_path / "data"

    async with relay_stage(store, tmp_path, now, "h264") as stage:
        await stage.log_in_organiser()
        recordings = stage.app[RECORDINGS]
        first = await stage.publish(first_clip)
        await wait_for(lambda: stage.hub.state == "live", 10, "live")
        await asyncio.sleep(SEGMENT_S)
        # The broadcaster comes back (the relay drops its old connection when it answers).
        second = await stage.publish(second_clip)
        sent_first = first.video.packets_sent
        await first.pc.close()
        await asyncio.sleep(SEGMENT_S)
        sent_second = second.video.packets_sent
        await second.close()
        await wait_for(
            lambda: sum(isinstance(e, SegmentClosed) for e in recordings.events) == 2,
            15,
            "both segments catalogued",
        )
        base = stage.url(f"/api/sessions/{stage.session_id}/recordings")
        async with stage.http.get(base) as r:
            assert r.status == 200, await r.text()
            listing = await r.json()
        async with stage.http.get(f"{base}/download") as r:
            assert r.status == 200, await r.text()
            headers = dict(r.headers)
            joined_bytes = await r.read()
    assert first.video.jumps == second.video.jumps == 0

    segments = listing["segments"]
    assert [
        (g["index"], g["container"], g["video_codec"], g["audio_codec"], g["deleted"])
        for g in segments
    ] == [(i, "matroska", "h264", "opus", False) for i in (0, 1)]
    assert headers["Content-Type"] == "video/x-matroska"
    assert f'filename="session-{stage.session_id}.mkv"' in headers["Content-Disposition"]
    joined_path = tmp_path / "joined.mkv"
    joined_path.write_bytes(joined_bytes)
    with av.open(str(joined_path)) as media:
        assert "matroska" in media.format.name

    # Each segment on its own, then the joined file: the same pictures, one after the other.
    parts = [decode(data_dir / f"recordings/{stage.session_id}/{i}.mkv") for i in (0, 1)]
    joined = decode(joined_path)
    assert joined.numbers == parts[0].numbers + parts[1].numbers, "every picture, in order"
    assert joined.video_packets == len(joined.numbers), "every packet decoded to a picture"
    assert joined.sizes == [(first_clip.width, first_clip.height)] * len(parts[0].numbers) + [
        second_size
    ] * len(parts[1].numbers)
    assert all(a < b for a, b in pairwise(joined.pts)), "pts grow"
    published = [
        set(range(sent_first)),
        set(range(second_from, second_from + sent_second)),
    ]
    present = sum(len(p & set(d.numbers)) for p, d in zip(published, parts, strict=True))
    assert present >= 0.99 * sum(map(len, published)), (present, sent_first, sent_second)
    for part in parts:
        assert part.numbers == sorted(part.numbers)

    # As long as both segments (the reconnect leaves next to no gap), with their sound.
    durations = [g["duration_s"] for g in segments]
    assert abs(joined.end_s - sum(durations)) < 0.5, (joined.end_s, durations)
    assert abs(joined.end_s - listing["total_duration_s"]) < 0.2
    assert abs(joined.audio_s - (parts[0].audio_s + parts[1].audio_s)) < 0.1
    assert joined.audio_s > sum(durations) - 1.0, (joined.audio_s, durations)

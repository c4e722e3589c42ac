"""The load tool: payload reading, counting, a CountingViewer and run_loadtest against a real
aiortc WHEP endpoint written here (it sends a PacedPacketTrack of the clip to each viewer)."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket
from click.testing import CliRunner
from relay_support import relay_stage
from whep_support import TOKEN, WAIT, WhepEndpoint, eventually, remote_reports, whep_endpoint

from attendance.store import Store
from client import loadtest as lt
from client.clip import EncodedClip, make_clip
from client.loadtest import CountingViewer, run_loadtest
from client.publisher import (
    SignallingError,
)
from client.stream_counter import StreamCounter, install_counter, is_keyframe_start
from server.cli.loadtest import loadtest
from server.relay.ice import advertise_addresses, rtc_configuration
from server.whip import RETRY_AFTER_FULL_S


@pytest.fixture(scope="module", autouse=True)
def loopback_ice() -> None:
    """Peers offer 127.0.0.1 only. Never undone: no test may reach beyond loopback."""
    advertise_addresses(["127.0.0.1"])


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EncodedClip]:
    cache = tmp_path_factory.mktemp("clips")
    return {
        codec: make_clip(codec, 4.0, 30, 320, 240, 400_000, 1.0, cache_dir=cache)
        for codec in ("vp8", "h264")
    }


# --- reading payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_keyframes_are_found_in_aiortcs_own_packetisation(
    clips: dict[str, EncodedClip], codec: str
) -> None:
    encoder = Vp8Encoder() if codec == "vp8" else H264Encoder()
    starts, anywhere = [], []
    for item in clips[codec].video:
        packet = av.Packet(item.data)
        packet.pts = item.index * 3000
        packet.time_base = Fraction(1, 90_000)
        payloads, _ = encoder.pack(packet)
        starts.append(is_keyframe_start(codec, payloads[0]))
        anywhere.append([is_keyframe_start(codec, p) for p in payloads])
    assert starts == [item.keyframe for item in clips[codec].video]
    for item, flags in zip(clips[codec].video, anywhere, strict=True):
        if not item.keyframe:
            assert not any(flags)
        elif codec == "vp8":
            assert flags == [True] + [False] * (len(flags) - 1)  # continuation packets: S=0


@pytest.mark.parametrize(
    "descriptor",
    [
        VpxPayloadDescriptor(partition_start=1, partition_id=0),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=5),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=300, tl0picidx=7),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=3, tid=(1, 1)),
        VpxPayloadDescriptor(partition_start=1, partition_id=0, keyidx=4),
    ],
)
def test_vp8_descriptor_variants_are_skipped(descriptor: VpxPayloadDescriptor) -> None:
    assert is_keyframe_start("vp8", bytes(descriptor) + b"\x10\x02\x00\x9d\x01\x2a")
    assert not is_keyframe_start("vp8", bytes(descriptor) + b"\x11\x02\x00")  # P bit set
    descriptor.partition_start = 0
    assert not is_keyframe_start("vp8", bytes(descriptor) + b"\x10\x02\x00")


def test_h264_packet_forms() -> None:
    sps, pps, idr, p_slice = b"\x67\x42\xc0\x1f", b"\x68\xce", b"\x65\x88\x84", b"\x41\x9a"
    stap = b"\x18" + b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps))
    assert [is_keyframe_start("h264", p) for p in (sps, idr, stap, pps, p_slice)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    # FU-A: the first fragment of an IDR picture's first slice (first_mb_in_slice 0: bit '1').
    fu_start, fu_middle = b"\x7c\x85\x88" + b"\x00" * 7, b"\x7c\x05" + b"\x00" * 8
    fu_later_slice = b"\x7c\x85" + b"\x00" * 8
    fu_p_start = b"\x5c\x81" + b"\x00" * 8
    assert [
        is_keyframe_start("h264", p) for p in (fu_start, fu_middle, fu_later_slice, fu_p_start)
    ] == [True, False, False, False]
    assert not is_keyframe_start("h264", b"") and not is_keyframe_start("opus", sps)


# --- counting ---------------------------------------------------------------------------------


def rtp(
    seq: int,
    ts: int,
    *,
    marker: int = 0,
    pt: int = 97,
    ssrc: int = 1,
    payload: bytes = b"\x10\x00\x00\x9d",
) -> RtpPacket:
    return RtpPacket(pt, marker, seq & 0xFFFF, ts, ssrc, payload)


def test_counter_counts_frames_loss_recovery_and_wraparound() -> None:
    now = itertools.count(10)
    counter = StreamCounter("video", clock=lambda: float(next(now)))
    counter.codecs = {97: "vp8", 98: "rtx"}
    p_frame = b"\x10\x01\x00"
    packets = [
        rtp(65534, 0, payload=p_frame),  # a P-frame first: the relay did not start at a keyframe
        rtp(65535, 0, marker=1, payload=b"\x00"),
        rtp(0, 3000),  # keyframe start, across the sequence wrap
        rtp(1, 3000, payload=b"\x00"),
        rtp(4, 3000, marker=1, payload=b"\x00"),  # 2 and 3 lost
        rtp(2, 3000, payload=b"\x00"),  # 2 arrives late
        rtp(5, 6000, marker=1, payload=p_frame),
        rtp(5, 6000, marker=1, payload=p_frame),  # duplicate
        rtp(9, 9000, pt=98, ssrc=2, payload=b"\x00\x03\x10\x01"),  # RTX carrying seq 3
        rtp(6, 9000, pt=99, payload=p_frame),  # unknown payload type
    ]
    media = [counter.add(p) for p in packets]
    assert media == [True] * 8 + [False, False]
    assert counter.as_dict() == {
        "packets": 10,
        "bytes": sum(len(p.payload) for p in packets),
        "frames": 3,
        "keyframes": 1,
        "expected": 8,
        "lost": 0,
        "recovered": 2,
        "duplicates": 1,
        "retransmissions": 1,
        "unknown_payload_type": 1,
        "ssrc_changes": 0,
    }
    assert (counter.first_packet_at, counter.first_keyframe_at) == (10.0, 11.0)
    assert counter.first_frame_keyframe is False

    counter.add(rtp(100, 12000, ssrc=3))  # a new sender (broadcaster reconnected)
    counter.add(rtp(103, 12000, ssrc=3, marker=1))
    assert (counter.ssrc_changes, counter.lost, counter.expected, counter.frames) == (1, 2, 12, 4)


def test_audio_frames_are_packets() -> None:
    counter = StreamCounter("audio")
    counter.codecs = {96: "opus"}
    for n in range(5):
        counter.add(rtp(n, n * 960, pt=96, marker=int(n == 0), payload=b"\xfc"))
    assert (counter.frames, counter.keyframes, counter.first_frame_keyframe) == (5, 0, None)


# --- a WHEP endpoint to watch -----------------------------------------------------------------


@pytest.fixture
async def whep(
    request: pytest.FixtureRequest, clips: dict[str, EncodedClip]
) -> AsyncIterator[WhepEndpoint]:
    """Serves the clip (``h264`` unless parametrised indirectly) to every WHEP viewer."""
    async with whep_endpoint(clips[getattr(request, "param", "h264")]) as endpoint:
        yield endpoint


@pytest.mark.parametrize("whep", ["vp8", "h264"], indirect=True)
async def test_counting_viewer_counts_real_time_frames_starting_at_a_keyframe(
    whep: WhepEndpoint,
) -> None:
    watch = 2.5
    async with aiohttp.ClientSession() as http:
        viewer = CountingViewer(whep.url, TOKEN, http=http)
        try:
            await asyncio.wait_for(viewer.start(), WAIT)
            await eventually(lambda: viewer.video.first_packet_at is not None, "video")
            await eventually(lambda: viewer.audio.first_packet_at is not None, "audio")
            # No decoding here: the receivers' decoder threads were stopped at the first packet.
            assert not [t for t in threading.enumerate() if t.name.endswith("-decoder")]
            await asyncio.sleep(watch)
            viewer.stop_counting()
            result = viewer.result()
            (served,) = whep.served.values()
            deadline = time.monotonic() + WAIT
            while not all([await remote_reports(s) for s in served.senders.values()]):
                assert time.monotonic() < deadline, "no receiver reports reached the sender"
                await asyncio.sleep(0.2)
        finally:
            await viewer.close()

    assert result["joined"] and result["error"] is None and result["connection"] == "connected"
    assert result["first_frame_keyframe"] is True
    assert 0 < result["first_keyframe_ms"] < 5000
    assert result["fps"] == pytest.approx(30, rel=0.2)
    assert result["video"]["frames"] == pytest.approx(30 * watch, rel=0.2)
    assert result["audio"]["frames"] == pytest.approx(50 * watch, rel=0.2)
    assert result["video"]["keyframes"] >= 2  # one-second GOPs
    assert result["video"]["lost"] == 0 and result["audio"]["lost"] == 0
    assert whep.deleted == ["s1/1"] and viewer.closed_cleanly()
    assert served.pc.connectionState == "closed" and viewer.pc is not None
    assert viewer.pc.connectionState == "closed"
    await viewer.close()  # idempotent
    assert whep.deleted == ["s1/1"]


async def test_a_refused_viewer_reports_the_error_and_closes(whep: WhepEndpoint) -> None:
    async with aiohttp.ClientSession() as http:
        viewer = CountingViewer(whep.url, "wrong", http=http)
        with pytest.raises(SignallingError, match="unauthorized"):
            await asyncio.wait_for(viewer.start(), WAIT)
        await viewer.close()
    assert viewer.result()["joined"] is False and whep.deleted == []
    assert viewer.pc is not None and viewer.pc.connectionState == "closed"


async def test_run_loadtest_spreads_viewers_over_processes(whep: WhepEndpoint) -> None:
    # Three seconds, not two: on a busy two-core machine the viewer processes' start-up would
    # otherwise eat a visible share of the window.
    result = await asyncio.wait_for(run_loadtest(whep.url, TOKEN, 6, 3, 2), 60)
    json.dumps(result)  # JSON-ready
    assert {
        k: result[k] for k in ("viewers_requested", "viewers_joined", "viewers_with_video")
    } == {
        "viewers_requested": 6,
        "viewers_joined": 6,
        "viewers_with_video": 6,
    }
    assert (result["procs"], result["errors"]) == (2, {})
    # Every viewer counted a steady stream. How close to 30 fps a shared two-core machine gets
    # is the benchmark's business (bench/bench_relay.py), not this test's.
    assert result["fps_per_viewer"]["median"] > 15
    assert result["fps_per_viewer"]["min"] > 10
    assert 0 < result["first_keyframe_ms"]["p50"] <= result["first_keyframe_ms"]["p95"] < 5000
    assert result["first_frame_keyframe"] == {"yes": 6, "no": 0}
    assert result["packet_loss_percent"]["video"] <= 1.0
    assert result["totals"]["video"]["frames"] >= 6 * 3 * 30 * 0.5
    assert result["totals"]["audio"]["frames"] >= 6 * 3 * 50 * 0.5
    assert sorted(whep.deleted) == sorted(whep.served) and len(whep.served) == 6
    assert all(s.pc.connectionState == "closed" for s in whep.served.values())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_viewer_a_full_node_refuses_waits_as_asked_then_joins(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    """As the pages and ``studycast watch`` do: a 503 with Retry-After is waited out, not
    counted as a failed viewer, while the test lasts."""
    async with relay_stage(store, tmp_path, now, "vp8", max_viewers=1) as stage:
        await stage.publish()
        first = await stage.watch(connect=False)  # the node's one place
        waits: list[float] = []
        skipped = [0.0]  # the waits are not slept: the test's clock jumps over them

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            skipped[0] += seconds
            if len(waits) == 1:  # the place frees while the viewer waits
                await first.hang_up(stage.http, stage.viewer_token)

        def clock() -> float:
            return time.monotonic() + skipped[0]

        url = stage.url(f"/whep/{stage.session_id}")
        # 33 s of test: the 30 s the node asks for fit in it, and 3 s are left to watch.
        (result,) = await asyncio.wait_for(
            lt.watch(url, stage.viewer_token, 1, 33.0, sleep=sleep, clock=clock), 30
        )
    assert waits == [RETRY_AFTER_FULL_S]
    assert (result["refusals"], result["waited_seconds"], result["error"]) == (1, 30.0, None)
    assert result["joined"] and result["video"]["frames"] > 0
    summary = lt.summarise(
        [{"worker": 0, "viewers": [result]}],
        whep_url=url,
        requested=1,
        seconds=40,
        procs=1,
        wall_seconds=1.0,
    )
    assert (summary["refusals"], summary["viewers_joined_after_refusal"]) == (1, 1)
    assert summary["errors"] == {}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_refusal_whose_wait_outlasts_the_test_is_the_viewers_error(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8", max_viewers=1) as stage:
        await stage.watch(connect=False)
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        url = stage.url(f"/whep/{stage.session_id}")
        # 2 s of test: the node's 30 s would end after it, so the viewer gives up at once.
        (result,) = await asyncio.wait_for(
            lt.watch(url, stage.viewer_token, 1, 2.0, sleep=sleep), 30
        )
    assert waits == [] and result["refusals"] == 0 and not result["joined"]
    assert result["error"].startswith("HTTP 503 overloaded")


def test_only_a_503_that_says_when_is_waited_for() -> None:
    def refusal(status: int | None, retry_after: float | None) -> SignallingError:
        return SignallingError("x", status=status, code="overloaded", retry_after=retry_after)

    assert lt.retry_wait(refusal(503, 5.0)) == 5.0
    assert lt.retry_wait(refusal(503, 3600.0)) == lt.MAX_RETRY_AFTER_S == 150.0
    assert lt.retry_wait(refusal(503, 0.0)) == lt.MIN_RETRY_S == 1.0  # never a busy loop
    assert lt.retry_wait(refusal(503, None)) is None  # no Retry-After: not worth waiting
    assert lt.retry_wait(refusal(429, 5.0)) is None
    assert lt.retry_wait(refusal(None, None)) is None  # unreachable, timed out


def test_summary_counts_errors_and_lost_workers() -> None:
    viewer = CountingViewer("http://127.0.0.1:1/whep/x", TOKEN, http=None)  # type: ignore[arg-type]
    refused = dict(viewer.result(), error="HTTP 401 unauthorized: bad token")
    summary = lt.summarise(
        [
            {"worker": 0, "viewers": [refused, refused]},
            {"worker": 1, "error": "load process crashed (exit code 1)", "viewers_lost": 3},
        ],
        whep_url="u",
        requested=5,
        seconds=1,
        procs=2,
        wall_seconds=1.0,
    )
    assert summary["errors"] == {
        "load process crashed (exit code 1)": 3,
        "HTTP 401 unauthorized: bad token": 2,
    }
    assert (summary["viewers_joined"], summary["fps_per_viewer"]["median"]) == (0, None)
    assert summary["packet_loss_percent"] == {"video": None, "audio": None}


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--viewers", "0"], "1<=x<=2000"),
        (["--viewers", "2001"], "1<=x<=2000"),
        (["--seconds", "0"], "1<=x<=3600"),
        (["--procs", "33"], "1<=x<=32"),
        (["--ice-address", "localhost"], "not an IP address"),
        (["--whep", "ftp://x/whep/1"], "http"),
    ],
)
def test_cli_validates_its_options(args: list[str], message: str) -> None:
    base = {
        "--whep": "http://127.0.0.1:1/whep/x",
        "--token": "t",
        "--viewers": "1",
        "--seconds": "1",
    }
    for option, value in zip(args[::2], args[1::2], strict=True):
        base[option] = value
    result = CliRunner().invoke(loadtest, [x for kv in base.items() for x in kv])
    assert result.exit_code == 2 and message in result.output, result.output


def test_cli_limits_match_the_library() -> None:
    from server.cli import loadtest as cli

    assert (cli.MAX_VIEWERS, cli.MAX_SECONDS, cli.MAX_PROCS) == (
        lt.MAX_VIEWERS,
        lt.MAX_SECONDS,
        lt.MAX_PROCS,
    )


def test_cli_prints_json_even_when_nobody_answers() -> None:
    """A real run (spawned process, real HTTP) against a closed port on 127.0.0.1."""
    args = ["--whep", "http://127.0.0.1:1/whep/x", "--token", "t", "--viewers", "2"]
    result = CliRunner().invoke(loadtest, [*args, "--seconds", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["viewers_requested"], data["viewers_joined"]) == (2, 0)
    ((message, count),) = data["errors"].items()
    assert count == 2 and message.startswith("unreachable from http://127.0.0.1:1/whep/x")


# --- the aiortc internals we patch --------------------------------------------------------


async def test_aiortc_internals_we_rely_on_are_still_there() -> None:
    """If this fails after an aiortc upgrade, re-read rtcrtpreceiver.py before changing it."""
    assert list(inspect.signature(RTCRtpReceiver._handle_rtp_packet).parameters) == [
        "self",
        "packet",
        "arrival_time_ms",
    ]
    assert "receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)" in (
        inspect.getsource(RTCDtlsTransport._handle_rtp_data)
    )
    assert list(inspect.signature(StreamStatistics).parameters) == ["clockrate"]
    assert "self.__remote_streams.items()" in inspect.getsource(RTCRtpReceiver._run_rtcp)
    assert "self.__stop_decoder()" in inspect.getsource(RTCRtpReceiver._handle_disconnect)
    assert "self._register_rtp_receiver" not in inspect.getsource(RTCRtpReceiver.__init__)
    receive = inspect.getsource(RTCRtpReceiver.receive)  # decoder thread before registration
    assert receive.index("self.__decoder_thread.start()") < receive.index("_register_rtp_receiver")
    pc = RTCPeerConnection(configuration=rtc_configuration())
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        assert receiver._RTCRtpReceiver__remote_streams == {}  # type: ignore[attr-defined]
        install_counter(receiver, StreamCounter("video"))
    finally:
        await pc.close()

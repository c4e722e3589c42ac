"""The publisher of the relay benchmarks: a pre-encoded clip published over WHIP in its own
process (``bench_relay.py --role publisher``), asked for its counters with SIGUSR1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from children import (
    CHILDREN,
    ICE_ADDRESS,
    STARTUP_TIMEOUT_S,
    TOKEN_ENV,
    BenchError,
    Children,
    child_env,
    tail,
    wait_until,
)
from relays import CODEC, Relay

BENCH_RELAY = Path(__file__).resolve().with_name("bench_relay.py")  # runs the role
FPS = 30
WIDTH, HEIGHT = 640, 480
BITRATE = 1_000_000
CLIP_SECONDS = 20.0


class Publisher:
    """The publisher subprocess; ``mark()`` asks it (SIGUSR1) for its counters."""

    def __init__(
        self, workdir: Path, relay: Relay, lifetime: float, gop: float, size: tuple[int, int]
    ) -> None:
        self.log = workdir / f"{relay.kind}-publisher.log"
        argv = [sys.executable, str(BENCH_RELAY), "--role", "publisher"]
        argv += ["--url", relay.whip_url, "--lifetime", str(round(lifetime)), "--gop", str(gop)]
        argv += ["--size", f"{size[0]}x{size[1]}"]
        env = child_env(**{TOKEN_ENV: relay.whip_token})
        self.proc = CHILDREN.start(argv, env=env, cwd=workdir, log=self.log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    async def connected(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"the publisher exited:\n{tail(self.log)}")
            return any(e.get("event") == "connected" for e in self.events())

        await wait_until(ready, STARTUP_TIMEOUT_S, "the publisher to connect")

    async def mark(self) -> dict[str, Any] | None:
        before = len(self.events())
        if self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(BenchError):
            await wait_until(lambda: len(self.events()) > before, 3.0, "publisher counters", 0.02)
            return self.events()[-1]
        return None

    def stop(self) -> None:
        Children.stop(self.proc)


async def publisher_role(url: str, lifetime: float, gop: float, size: tuple[int, int]) -> None:
    from client.clip import make_clip
    from client.publisher import publish
    from server.relay.ice import advertise_addresses

    advertise_addresses([ICE_ADDRESS])
    clip = make_clip(CODEC, CLIP_SECONDS, FPS, size[0], size[1], BITRATE, gop)
    publication = await publish(url, os.environ.get(TOKEN_ENV, "none"), clip, seconds=lifetime)

    def emit(event: str) -> None:
        video = publication.video
        record = {
            "event": event,
            "t": time.monotonic(),
            "video_frames": video.packets_sent,
            "audio_packets": publication.audio.packets_sent,
            "keyframe_requests": video.keyframe_requests,
            "keyframe_jumps": video.jumps,
            "loops": video.loops,
        }
        print(json.dumps(record), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, emit, "mark")
    try:
        await publication.wait_connected(20)
        emit("connected")
        closed = asyncio.ensure_future(publication.wait_closed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (closed, stopped):
            task.cancel()
        emit("done")
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await publication.close()

"""The relays ``bench_relay.py`` measures, each a real server process: studycast (recorded or
not) and aiortc's stock ``MediaRelay`` (``stock_relay.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from children import (
    CHILDREN,
    ICE_ADDRESS,
    REPO,
    STARTUP_TIMEOUT_S,
    STUDYCAST,
    BenchError,
    Children,
    child_env,
    tail,
    wait_until,
)

CODEC: Final = "vp8"


_NODE_LABEL = re.compile(r'node="[^"]*",?')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format → {"name{labels}": value} (comments skipped), without the
    ``node`` label every series of a studycast node carries (one node here)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            name = _NODE_LABEL.sub("", name).replace(",}", "}").replace("{}", "")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


class Relay:
    """A relay server process under test."""

    kind = ""
    proc: subprocess.Popen[bytes]
    base_url: str
    whip_url: str
    whep_url: str
    whip_token = "none"
    whep_token = "none"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / f"{self.kind}-relay.log"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def _wait_announced(self, pattern: str) -> str:
        def announced() -> str | None:
            if not self.alive():
                raise BenchError(f"{self.kind} relay exited:\n{tail(self.log)}")
            match = re.search(pattern, self.log.read_text(errors="replace"))
            return match.group(1) if match else None

        return str(await wait_until(announced, STARTUP_TIMEOUT_S, f"the {self.kind} relay"))

    async def start(self, http: aiohttp.ClientSession) -> None:
        raise NotImplementedError

    async def viewers(self, http: aiohttp.ClientSession) -> int:
        raise NotImplementedError

    async def broadcasting(self, http: aiohttp.ClientSession) -> bool:
        raise NotImplementedError

    async def counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        return {}

    def stop(self) -> None:
        Children.stop(self.proc)


class StudycastRelay(Relay):
    kind = "studycast"
    # Extra options of ``studycast session create`` (the recording switch).
    session_options: tuple[str, ...] = ()

    async def start(self, http: aiohttp.ClientSession) -> None:
        data_dir = self.workdir / "data"
        studycast = STUDYCAST
        argv = [studycast, "serve", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--data-dir", str(data_dir), "--ice-address", ICE_ADDRESS]
        self.proc = CHILDREN.start(argv, env=child_env(), cwd=self.workdir, log=self.log)
        self.base_url = await self._wait_announced(r"studycast is running at (http://\S+?)/?\n")
        port = self.base_url.rsplit(":", 1)[1]
        env = child_env(
            STUDYCAST_DATA_DIR=str(data_dir), STUDYCAST_HOST="127.0.0.1", STUDYCAST_PORT=port
        )
        start = datetime.now(UTC).replace(microsecond=0).isoformat()
        made = await asyncio.to_thread(
            subprocess.run,
            [
                studycast,
                "session",
                "create",
                "relay bench",
                "--start",
                start,
                "--json",
                "--video-codec",
                CODEC,
                *self.session_options,
            ],
            env=env,
            cwd=self.workdir,
            capture_output=True,
            timeout=STARTUP_TIMEOUT_S,
            check=False,
        )
        if made.returncode != 0:
            raise BenchError(f"session create failed: {made.stderr.decode(errors='replace')}")
        info = json.loads(made.stdout)
        self.whip_url, self.whip_token = info["whip_url"], info["whip_token"]
        self.whep_url, self.whep_token = info["whep_url"], info["whep_token"]

    async def _metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        async with http.get(self.base_url + "/metrics", timeout=aiohttp.ClientTimeout(10)) as r:
            return parse_metrics(await r.text())

    async def viewers(self, http: aiohttp.ClientSession) -> int:
        m = await self._metrics(http)
        return int(sum(v for k, v in m.items() if k.startswith("studycast_relay_viewers{")))

    async def broadcasting(self, http: aiohttp.ClientSession) -> bool:
        m = await self._metrics(http)
        return m.get("studycast_relay_broadcasters", 0) >= 1

    async def counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        m = await self._metrics(http)
        names = {
            "packets_out_video": 'studycast_relay_packets_out_total{media="video"}',
            "packets_out_audio": 'studycast_relay_packets_out_total{media="audio"}',
            "bytes_out_video": 'studycast_relay_bytes_out_total{media="video"}',
            "nacks": "studycast_relay_nacks_total",
            "retransmissions": "studycast_relay_retransmissions_total",
            "plis_upstream": "studycast_relay_plis_upstream_total",
        }
        return {k: m.get(v, 0.0) for k, v in names.items()}


class UnrecordedRelay(StudycastRelay):
    """The studycast relay with the session's recording switched off (to price the recorder)."""

    kind = "studycast-norec"
    session_options = ("--no-recording",)


class StockRelay(Relay):
    kind = "stock"

    def __init__(self, workdir: Path, lifetime: float) -> None:
        super().__init__(workdir)
        self.lifetime = lifetime

    async def start(self, http: aiohttp.ClientSession) -> None:
        argv = [sys.executable, str(REPO / "bench" / "stock_relay.py"), "--port", "0"]
        argv += ["--ice-address", ICE_ADDRESS, "--lifetime", str(round(self.lifetime))]
        self.proc = CHILDREN.start(argv, env=child_env(), cwd=self.workdir, log=self.log)
        self.base_url = await self._wait_announced(r"stock relay is running at (http://\S+?)/?\n")
        self.whip_url = self.base_url + "/whip/1"
        self.whep_url = self.base_url + "/whep/1"

    async def _stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(self.base_url + "/stats", timeout=aiohttp.ClientTimeout(10)) as r:
            return dict(await r.json())

    async def viewers(self, http: aiohttp.ClientSession) -> int:
        return int((await self._stats(http))["viewers"])

    async def broadcasting(self, http: aiohttp.ClientSession) -> bool:
        return bool((await self._stats(http))["broadcaster"])

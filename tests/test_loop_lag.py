"""The event-loop lag meter: a real loop held up by blocking work, read back from the meter, from
``GET /metrics`` and from the node's report."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import Client, FakeClock, make_settings

from attendance.store import Store
from server.app import METRICS, NODE_REPORTER, create_app
from server.loop_lag import STALL_S, LoopLag


def bucket(registry: CollectorRegistry, le: str) -> float:
    value = registry.get_sample_value("studycast_event_loop_lag_seconds_bucket", {"le": le})
    assert value is not None, f"no bucket le={le}"
    return value


async def test_a_blocked_loop_is_measured_as_late_as_it_was() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.1)  # ticks on an idle loop: all well under a stall
        assert lag.take_worst() < STALL_S
        assert registry.get_sample_value("studycast_event_loop_stalls_total") == 0
        ticks_idle = registry.get_sample_value("studycast_event_loop_lag_seconds_count")
        assert ticks_idle is not None and ticks_idle >= 3

        time.sleep(0.3)  # noqa: ASYNC251 (on purpose: holds the loop like a long collection)
        await asyncio.sleep(0.05)
        worst = lag.take_worst()
        assert 0.25 <= worst < 1.0, worst
        assert lag.take_worst() < worst  # taking it starts over
        assert registry.get_sample_value("studycast_event_loop_stalls_total") == 1
        assert bucket(registry, "0.25") == bucket(registry, "0.5") - 1  # the one 0.3 s lag
        assert bucket(registry, "+Inf") == registry.get_sample_value(
            "studycast_event_loop_lag_seconds_count"
        )
    finally:
        await lag.stop()
    count = registry.get_sample_value("studycast_event_loop_lag_seconds_count")
    await asyncio.sleep(0.05)
    assert registry.get_sample_value("studycast_event_loop_lag_seconds_count") == count  # stopped


def test_the_interval_is_checked() -> None:
    with pytest.raises(ValueError, match=r"interval must be 0\.001\.\.1 s"):
        LoopLag(CollectorRegistry(), interval=0)
    with pytest.raises(ValueError, match="interval must be"):
        LoopLag(CollectorRegistry(), interval=5)


@pytest.fixture
async def app(store: Store, clock: FakeClock, tmp_path: Path) -> web.Application:
    return create_app(make_settings(tmp_path), store, clock=clock)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[Client]:
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_the_app_exposes_its_loop_lag_and_reports_the_worst(
    app: web.Application, client: Client
) -> None:
    reporter = app[NODE_REPORTER]
    registry = app[METRICS].registry
    await asyncio.sleep(0.15)  # start-up's own lags are behind us
    reporter.status()  # start the report period here
    stalls = registry.get_sample_value("studycast_event_loop_stalls_total") or 0.0
    time.sleep(0.25)  # noqa: ASYNC251 (on purpose: the loop held up while serving)
    await asyncio.sleep(0.15)  # the ticker runs every 50 ms
    assert registry.get_sample_value("studycast_event_loop_stalls_total") == stalls + 1
    text = await (await client.get("/metrics")).text()
    exposed = re.search(r'^studycast_event_loop_stalls_total\{node="origin"\} (\S+)$', text, re.M)
    assert exposed and float(exposed[1]) >= stalls + 1, text[:500]
    assert re.search(
        r'^studycast_event_loop_lag_seconds_bucket\{le="0.5",node="origin"\}', text, re.M
    )
    status = reporter.status()
    assert 0.2 <= status["loop_lag_max_s"] < 1.0, status
    assert reporter.status()["loop_lag_max_s"] < STALL_S  # the next report starts over

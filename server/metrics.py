"""Prometheus metrics of one application, exposed at ``GET /metrics``.

Each app owns its registry (not the process-global one), so several apps in one process, as in
the tests, count separately.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from server.loop_lag import LoopLag
from server.workers import PEER_HTTP, WORKER

log = logging.getLogger(__name__)

SIBLING_TIMEOUT_S = 2.0  # a worker's answer to a sibling's scrape

# Methods we label as themselves; anything else is "other", so clients cannot grow the series.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The counters the server keeps, in a registry of their own. Every series is exposed with
    a ``node`` label naming this node, so one Prometheus can scrape the origin, its edges and
    their workers side by side."""

    def __init__(self, node: str = "origin") -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self._exposed = CollectorRegistry(auto_describe=False)
        self._exposed.register(_NodeLabel(self.registry, node))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.login_failures = Counter(
            "studycast_login_failures",
            "Refused password logins, by reason (unknown_user, wrong_password, inactive).",
            ["reason"],
            registry=self.registry,
        )
        self.login_throttled = Counter(
            "studycast_login_throttled",
            "Logins answered 429 by the brute-force brake.",
            registry=self.registry,
        )
        self.http_requests = Counter(
            "studycast_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.loop_lag = LoopLag(self.registry)

    def render(self) -> bytes:
        return generate_latest(self._exposed)


class _NodeLabel(Collector):
    """Everything ``registry`` collects, each sample labelled ``node``."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self._registry = registry
        self._node = node

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, "node": self._node})
                for sample in metric.samples
            ]
            yield labelled


class RelayCollector(Collector):
    """Reads the relay's counters at scrape time; labels are media and viewer kinds only."""

    def __init__(self, totals: Callable[[], dict[str, Any]]) -> None:
        self._totals = totals

    def collect(self) -> Iterator[Metric]:
        t = self._totals()
        yield GaugeMetricFamily(
            "studycast_relay_sessions", "Sessions with a media hub on this node.", t["sessions"]
        )
        yield GaugeMetricFamily(
            "studycast_relay_broadcasters", "Connected broadcasters.", t["broadcasters"]
        )
        viewers = GaugeMetricFamily(
            "studycast_relay_viewers", "Connected viewers, by kind.", labels=["kind"]
        )
        for kind in ("viewer", "venue", "member", "edge"):
            viewers.add_metric([kind], t["viewers"].get(kind, 0))
        yield viewers
        for name, key, text in (
            ("studycast_relay_packets_out", "packets_out", "RTP packets sent to viewers."),
            ("studycast_relay_bytes_out", "bytes_out", "RTP payload bytes sent to viewers."),
        ):
            family = CounterMetricFamily(name, text, labels=["media"])
            for media, value in t[key].items():
                family.add_metric([media], value)
            yield family
        for name, key, text in (
            ("studycast_relay_nacks", "nacks", "NACK packets received from viewers."),
            ("studycast_relay_retransmissions", "retransmitted", "Packets resent for NACKs."),
            (
                "studycast_relay_plis_upstream",
                "plis_upstream",
                "Keyframe requests to broadcasters.",
            ),
            (
                "studycast_relay_viewers_shed",
                "viewers_shed",
                "Viewers closed because a session's source fell behind live on this node.",
            ),
            (
                "studycast_relay_viewers_refused_behind",
                "viewers_refused_behind",
                "Viewers refused (503) while a session's source was behind live on this node.",
            ),
        ):
            yield CounterMetricFamily(name, text, value=t[key])


METRICS = web.AppKey("studycast.metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """The text exposition format for a Prometheus scraper.

    With ``serve --workers N`` the kernel hands each scrape of the shared port to any worker, so
    every worker answers for all of them: it asks the others on their private ports
    (``?worker=self``: that worker alone) and merges their series with its own, each labelled
    with its worker's node name. A worker that does not answer within ``SIBLING_TIMEOUT_S`` is
    left out and counted in ``studycast_workers_unanswered``.
    """
    metrics = request.config_dict[METRICS]
    worker = request.config_dict.get(WORKER)
    if worker is None or worker.count < 2 or request.query.get("worker") == "self":
        body = metrics.render()
    else:
        others = [i for i in range(worker.count) if i != worker.index]
        http = request.config_dict[PEER_HTTP]
        found = await asyncio.gather(
            *(_scrape(http, worker.private_url(i) + "/metrics?worker=self") for i in others)
        )
        texts = [metrics.render().decode(), *(t for t in found if t is not None)]
        missing = sum(1 for t in found if t is None)
        body = merge_expositions(texts, unanswered=(metrics.node, missing))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _scrape(http: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_S)) as r:
            if r.status == 200:
                return await r.text()
            log.warning("worker metrics at %s answered %s", url, r.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("worker metrics at %s did not answer: %s", url, exc)
    return None


def merge_expositions(texts: list[str], *, unanswered: tuple[str, int]) -> bytes:
    """One exposition of the series of several (same families, samples side by side)."""
    families: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            known = families.get(family.name)
            if known is None:
                families[family.name] = family
            else:
                known.samples.extend(family.samples)
    gauge = GaugeMetricFamily(
        "studycast_workers_unanswered",
        "Workers that did not answer this scrape (their series are missing from it).",
        labels=["node"],
    )
    gauge.add_metric([unanswered[0]], unanswered[1])
    families[gauge.name] = gauge
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer; sits outside the error middleware, so failures carry their status."""
    response = await handler(request)
    method = request.method if request.method in _KNOWN_METHODS else "other"
    request.config_dict[METRICS].http_requests.labels(
        method, _route_label(request), str(response.status)
    ).inc()
    return response

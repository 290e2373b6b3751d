"""Prometheus metrics of the service: request counts and latencies by route template, and reloads.

Each app gets its own registry (tests build many apps). With several workers and
``PROMETHEUS_MULTIPROC_DIR`` set (the launcher sets it), ``/metrics`` aggregates over all
worker processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class Metrics:
    """One app's registry and the series the service records."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    reloads: Counter

    @classmethod
    def create(cls) -> "Metrics":
        registry = CollectorRegistry(auto_describe=True)
        requests = Counter(
            "movierec_http_requests_total", "HTTP requests by method, route template and status",
            ["method", "route", "status"], registry=registry,
        )
        latency = Histogram(
            "movierec_http_request_duration_seconds", "HTTP request latency by method and route template",
            ["method", "route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        reloads = Counter("movierec_model_reloads_total", "bundle reloads by outcome", ["outcome"], registry=registry)
        return cls(registry, requests, latency, reloads)

    def render(self) -> bytes:
        """The Prometheus text of this app, or of every worker process when they share a directory."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Request counts and latency histograms labelled by route *template* (``/items/{item_id}``),
    never the raw path, so the number of series stays bounded whatever clients send.

    The labelled children are looked up once per (method, template[, status]) and kept: a
    ``labels()`` call takes a lock and normalises its arguments, twice per request otherwise.
    """

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template is None:
                template = "/static" if scope["path"].startswith("/static/") else "unmatched"
            method = scope["method"]
            timer = self._latency.get((method, template))
            if timer is None:
                timer = self._latency[(method, template)] = self.latency.labels(method, template)
            timer.observe(time.perf_counter() - t0)
            counter = self._requests.get((method, template, status))
            if counter is None:
                counter = self._requests[(method, template, status)] = self.requests.labels(method, template, str(status))
            counter.inc()

"""``GET /metrics``: the service in Prometheus' text format, through ``prometheus_client``.

Two kinds of series.  Events this instance saw are counted as they happen (builds
ended by outcome, their durations, the time each waited in the queue, request
latency).  The state of the whole service is read from the database at each scrape
(containers by state, the queue's length, bytes stored), so every instance on one
database reports the same state.  Bytes stored per user are a histogram over users
— how many users store up to 1 GiB, 16 GiB, … — a fixed set of series however many
users there are.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select

from hpcstack.service import db
from hpcstack.service.models import State

BUILD_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
WAIT_SECONDS = (0.5, 1, 5, 15, 60, 300, 900, 3600, 14400)
USER_BYTES = tuple(float(2**p) for p in (20, 24, 28, 30, 32, 34, 36, 38, 40))
CONVERTOR = re.compile(r"\{(\w+):\w+\}")  # {name:cname} -> {name}
REQUEST_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (db.as_utc(end) - db.as_utc(start)).total_seconds())


def user_bytes_buckets(usages: list[int], bounds: tuple[float, ...] = USER_BYTES
                       ) -> list[tuple[str, int]]:
    """Cumulative (le, users) pairs of a histogram over users' stored bytes (pure).

    >>> user_bytes_buckets([0, 2**20, 2**31], (2.0**20, 2.0**30))
    [('1.048576e+06', 2), ('1.073741824e+09', 2), ('+Inf', 3)]
    """
    return [(floatToGoString(b), sum(1 for u in usages if u <= b)) for b in bounds] + \
        [("+Inf", len(usages))]


class StateCollector(Collector):
    """What the database says now, at each scrape."""

    def __init__(self, database: db.Database, sessions_open: Callable[[], int]) -> None:
        self.db, self.sessions_open = database, sessions_open

    def collect(self) -> Iterator[Metric]:
        with self.db.session() as s:
            by_state = dict(s.execute(select(db.ContainerRow.state, func.count())
                                      .group_by(db.ContainerRow.state)).all())
            usages = [int(u or 0) for (u,) in s.execute(
                select(func.sum(db.ContainerRow.usage)).group_by(db.ContainerRow.uid))]
            oldest = s.scalar(select(func.min(db.ContainerRow.created))
                              .where(db.ContainerRow.state == State.QUEUED.value))
        builds = GaugeMetricFamily("u2cb_builds", "Containers by the state of their build",
                                   labels=["state"])
        for state in State:
            builds.add_metric([state.value], by_state.get(state.value, 0))
        yield builds
        yield GaugeMetricFamily("u2cb_queue_length", "Builds waiting to start",
                                value=by_state.get(State.QUEUED.value, 0))
        waited = seconds_between(oldest, db.now()) or 0.0
        yield GaugeMetricFamily("u2cb_queue_oldest_wait_seconds",
                                "How long the longest-waiting queued build has waited",
                                value=waited)
        yield GaugeMetricFamily("u2cb_sessions_open", "Connect sessions open on this "
                                "instance", value=self.sessions_open())
        yield HistogramMetricFamily(
            "u2cb_user_stored_bytes", "Users by the bytes they store (images, sandboxes, "
            "uploads)", buckets=user_bytes_buckets(usages), sum_value=float(sum(usages)))


class Metrics:
    """The service's registry (one per app, so several apps in one process keep apart)."""

    def __init__(self, database: db.Database, sessions_open: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.builds_ended = Counter("u2cb_builds_ended", "Builds this instance saw end, "
                                    "by outcome", ["outcome"], registry=self.registry)
        self.build_seconds = Histogram("u2cb_build_duration_seconds", "Time from a "
                                       "build's start to its end, by outcome", ["outcome"],
                                       buckets=BUILD_SECONDS, registry=self.registry)
        self.queue_wait = Histogram("u2cb_queue_wait_seconds", "Time a build waited "
                                    "queued before it started", buckets=WAIT_SECONDS,
                                    registry=self.registry)
        self.requests = Histogram("u2cb_http_request_duration_seconds", "HTTP requests "
                                  "by method, route and status, until the response ended",
                                  ["method", "route", "status"], buckets=REQUEST_SECONDS,
                                  registry=self.registry)
        for outcome in (State.READY, State.FAILED, State.CANCELLED):  # 0 before the first
            self.builds_ended.labels(outcome.value)
            self.build_seconds.labels(outcome.value)
        self.registry.register(StateCollector(database, sessions_open))

    def started(self, created: datetime | None, started: datetime | None) -> None:
        waited = seconds_between(created, started)
        if waited is not None:
            self.queue_wait.observe(waited)

    def ended(self, outcome: str, started: datetime | None, finished: datetime | None
              ) -> None:
        self.builds_ended.labels(outcome).inc()
        took = seconds_between(started, finished)
        if took is not None:
            self.build_seconds.labels(outcome).observe(took)


class RequestTimer:
    """ASGI middleware: each HTTP request's latency by its route's template (a bounded
    set: ``/api/v1/containers/{name}``, never the name itself)."""

    def __init__(self, app, metrics: Callable[[], Metrics | None]) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = CONVERTOR.sub(r"{\1}", getattr(route, "path", None) or "unmatched")
            metrics = self.metrics()
            if metrics is not None:
                metrics.requests.labels(scope["method"], path, str(status[0])).observe(
                    time.perf_counter() - began)

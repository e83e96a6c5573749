"""Prometheus metrics (prometheus-client).

Request counters and latency live in a registry per app (so tests can build
many apps). Fleet gauges (devices, online devices, rollouts by state, open
alerts) are read from the database at scrape time, so every gunicorn worker
answers the same numbers. With ``PROMETHEUS_MULTIPROC_DIR`` set (``edgepack
fleet serve`` sets it for more than one worker) request counters are summed
over the workers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from ._models import Alert, Device, Report, Rollout

__all__ = ["FleetMetrics"]


class _FleetCollector(Collector):
    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        with self.fleet.db.read() as s:
            devices = s.execute(select(Device.status, func.count()).group_by(Device.status)).all()
            online = s.scalar(select(func.count()).select_from(Device).where(
                Device.status == "active", Device.last_seen_at >= now - self.fleet.config.online_after_s)) or 0
            rollouts = s.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
            alerts = s.scalar(select(func.count()).select_from(Alert).where(Alert.acknowledged_at.is_(None))) or 0
            reports = s.execute(select(Report.kind, func.count()).group_by(Report.kind)).all()
        g = GaugeMetricFamily("edgepack_devices", "Enrolled devices by status", labels=["status"])
        for status, n in devices:
            g.add_metric([status], n)
        yield g
        yield GaugeMetricFamily("edgepack_devices_online", "Devices seen within online_after_s", value=online)
        g = GaugeMetricFamily("edgepack_rollouts", "Rollouts by state", labels=["state"])
        for state, n in rollouts:
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily("edgepack_alerts_open", "Alerts not yet acknowledged", value=alerts)
        g = GaugeMetricFamily("edgepack_reports_stored", "Device reports stored, by kind", labels=["kind"])
        for kind, n in reports:
            g.add_metric([kind], n)
        yield g


class FleetMetrics:
    def __init__(self, fleet: Any) -> None:
        self.registry = CollectorRegistry()
        self.multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # in multiprocess mode the values live in mmap files that MultiProcessCollector reads
        kw: dict[str, Any] = {"registry": None if self.multiproc else self.registry}
        self.requests = Counter("edgepack_http_requests_total", "HTTP requests", ["endpoint", "status"], **kw)
        self.latency = Histogram("edgepack_http_request_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5), **kw)
        self.reports = Counter("edgepack_reports_accepted_total", "Device reports accepted", ["kind"], **kw)
        self.rollbacks = Counter("edgepack_rollout_transitions_total", "Rollout state changes", ["state"], **kw)
        if self.multiproc:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
        self.registry.register(_FleetCollector(fleet))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

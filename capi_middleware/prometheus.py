"""Prometheus metrics for delivery: the sender's counters, read at scrape time.

Needs the ``prometheus`` extra (``pip install 'capi-middleware[prometheus]'``)::

    from capi_middleware.prometheus import register_collector
    register_collector(middleware)       # anything with .stats(), or a () -> DeliveryStats

The counters come from one consistent ``stats()`` snapshot per scrape, so the balance
``enqueued = delivered + dead_lettered + dropped + backlog`` holds in what Prometheus stores too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "capi_middleware.prometheus needs the prometheus-client package: "
        "pip install 'capi-middleware[prometheus]'"
    ) from exc

from capi_middleware.delivery.stats import DeliveryStats

__all__ = ["CAPICollector", "StatsSource", "register_collector"]

logger = logging.getLogger("capi_middleware.prometheus")


class StatsSource(Protocol):
    """What the collector reads: the middleware, or the sender itself."""

    def stats(self) -> DeliveryStats: ...


class CAPICollector:
    """A Prometheus collector for the delivery counters of one middleware or sender.

    Parameters:
        source: an object with ``stats() -> DeliveryStats`` (``CAPIMiddleware``,
            ``CAPIWSGIMiddleware``, a ``Sender``), or a callable returning one.
        namespace: prefix of every metric name (default ``capi``).

    Metrics (``capi_`` prefix): ``events_enqueued_total``, ``events_delivered_total``,
    ``events_retried_total``, ``events_dead_lettered_total{reason}``,
    ``events_dropped_total{reason}``, ``backlog``, ``graph_requests_total``, ``paused{reason}``.
    A failing ``stats()`` is logged and the scrape returns no capi metrics, never an error page.
    """

    def __init__(
        self, source: StatsSource | Callable[[], DeliveryStats], *, namespace: str = "capi"
    ) -> None:
        read = getattr(source, "stats", source)
        if not callable(read):
            raise ValueError("source: must have a stats() method or be callable")
        self._read: Callable[[], DeliveryStats] = read
        self._prefix = f"{namespace}_" if namespace else ""

    def describe(self) -> Iterator[Metric]:
        """The metric names, without reading stats (registration must not touch the sender)."""
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the counters, as Prometheus metric families."""
        try:
            stats = self._read()
        except Exception:
            logger.exception("capi_middleware: stats() failed; no delivery metrics this scrape")
            return
        yield from self._families(stats)

    def _families(self, stats: DeliveryStats | None) -> Iterator[Metric]:
        p = self._prefix
        s = stats or DeliveryStats()
        with_values = stats is not None

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(p + name, doc, value=value if with_values else None)

        yield counter("events_enqueued", "Events handed to the sender (times pixels).", s.enqueued)
        yield counter("events_delivered", "Events Meta confirmed receiving.", s.delivered)
        yield counter("events_retried", "Attempts put back for another try.", s.retried)
        yield counter("graph_requests", "HTTP requests made to the Graph API.", s.requests)
        dead = CounterMetricFamily(
            p + "events_dead_lettered", "Events given up on, by reason.", labels=["reason"]
        )
        dropped = CounterMetricFamily(
            p + "events_dropped", "Events never stored, by reason.", labels=["reason"]
        )
        paused = GaugeMetricFamily(
            p + "paused", "1 while sending is paused (rate limit or bad config).", labels=["reason"]
        )
        if with_values:
            for reason, count in sorted(s.dead_lettered.items()):
                dead.add_metric([reason], count)
            for reason, count in sorted(s.dropped.items()):
                dropped.add_metric([reason], count)
            if s.pause_reason:
                paused.add_metric([s.pause_reason], 1)
        yield dead
        yield dropped
        yield GaugeMetricFamily(
            p + "backlog",
            "Events waiting to be delivered (queued, stored or in flight).",
            value=s.backlog if with_values else None,
        )
        yield paused


def register_collector(
    source: StatsSource | Callable[[], DeliveryStats],
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "capi",
) -> CAPICollector:
    """Build a `CAPICollector` for ``source`` and register it (default: the global registry)."""
    collector = CAPICollector(source, namespace=namespace)
    (REGISTRY if registry is None else registry).register(collector)
    return collector

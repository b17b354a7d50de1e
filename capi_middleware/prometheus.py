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
from capi_middleware.results import CaptureStats

__all__ = ["CAPICollector", "StatsSource", "register_collector"]

logger = logging.getLogger("capi_middleware.prometheus")


Stats = CaptureStats | DeliveryStats


class StatsSource(Protocol):
    """What the collector reads: a middleware (`CaptureStats`) or a sender (`DeliveryStats`)."""

    def stats(self) -> Stats: ...


class CAPICollector:
    """A Prometheus collector for the delivery counters of one middleware or sender.

    Parameters:
        source: an object with ``stats()`` (``CAPIMiddleware``, ``CAPIWSGIMiddleware``,
            ``CAPIDjangoMiddleware``, a ``Sender``), or a callable returning its result.
        namespace: prefix of every metric name (default ``capi``).

    Metrics (``capi_`` prefix), from the sender: ``events_enqueued_total``,
    ``events_delivered_total``, ``events_retried_total``, ``events_dead_lettered_total{reason}``,
    ``events_dropped_total{reason}``, ``backlog``, ``graph_requests_total``, ``paused{reason}``;
    from a middleware also: ``requests_total``, ``capture_errors_total``,
    ``consent_denied_total``, ``track_invalid_total{field}``, ``track_errors_total``.
    A failing ``stats()`` is logged and the scrape returns no capi metrics, never an error page.
    """

    def __init__(
        self, source: StatsSource | Callable[[], Stats], *, namespace: str = "capi"
    ) -> None:
        read = getattr(source, "stats", source)
        if not callable(read):
            raise ValueError("source: must have a stats() method or be callable")
        self._read: Callable[[], Stats] = read
        self._prefix = f"{namespace}_" if namespace else ""

    def describe(self) -> Iterator[Metric]:
        """The metric names, without reading stats (registration must not touch the sender)."""
        yield from self._families(None)
        yield from self._capture_families(None)

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the counters, as Prometheus metric families."""
        try:
            stats = self._read()
        except Exception:
            logger.exception("capi_middleware: stats() failed; no delivery metrics this scrape")
            return
        if isinstance(stats, DeliveryStats):
            yield from self._families(stats)
            return
        # A middleware's stats: its own counters, and the sender's once it exists.
        yield from self._families(stats.delivery or DeliveryStats())
        yield from self._capture_families(stats)

    def _capture_families(self, stats: CaptureStats | None) -> Iterator[Metric]:
        p = self._prefix
        with_values = stats is not None

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(p + name, doc, value=value if with_values else None)

        yield counter("requests", "HTTP requests captured.", stats.requests if stats else 0)
        yield counter(
            "capture_errors",
            "Requests whose capture or cookies failed inside capi_middleware.",
            stats.capture_errors if stats else 0,
        )
        yield counter(
            "consent_denied",
            "track() calls refused for want of consent.",
            stats.consent_denied if stats else 0,
        )
        yield counter(
            "track_errors",
            "track() calls that failed inside capi_middleware.",
            stats.track_errors if stats else 0,
        )
        invalid = CounterMetricFamily(
            p + "track_invalid", "track() calls rejected as invalid, by field.", labels=["field"]
        )
        if stats is not None:
            for name, count in sorted(stats.invalid.items()):
                invalid.add_metric([name], count)
        yield invalid
        yield from self._match_families(stats)

    def _match_families(self, stats: CaptureStats | None) -> Iterator[Metric]:
        """Match quality (docs/match-quality.md): shares are these counters' ratios."""
        p = self._prefix
        events = CounterMetricFamily(
            p + "match_events", "Events sent, by event name.", labels=["event"]
        )
        keys = CounterMetricFamily(
            p + "match_key_events",
            "Events sent carrying a match key, by event name and key.",
            labels=["event", "key"],
        )
        dropped = CounterMetricFamily(
            p + "match_dropped_values",
            "user_data values dropped, by event name, key and reason.",
            labels=["event", "key", "reason"],
        )
        if stats is not None:
            for name, counts in sorted(stats.match_keys.items()):
                events.add_metric([name], counts["events"])
                for key, count in sorted(counts["keys"].items()):
                    keys.add_metric([name, key], count)
                for key, reasons in sorted(counts["dropped"].items()):
                    for reason, count in sorted(reasons.items()):
                        dropped.add_metric([name, key, reason], count)
        yield events
        yield keys
        yield dropped

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
    source: StatsSource | Callable[[], Stats],
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "capi",
) -> CAPICollector:
    """Build a `CAPICollector` for ``source`` and register it (default: the global registry)."""
    collector = CAPICollector(source, namespace=namespace)
    (REGISTRY if registry is None else registry).register(collector)
    return collector

"""The Prometheus collector: every delivery counter, one snapshot per scrape, clear import error."""

from __future__ import annotations

import subprocess
import sys
from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capi_middleware.delivery.stats import DeliveryStats
from capi_middleware.prometheus import CAPICollector, register_collector

STATS = DeliveryStats(
    enqueued=20,
    delivered=11,
    retried=4,
    dead_lettered=MappingProxyType({"invalid_event": 2, "too_old": 1}),
    dropped=MappingProxyType({"queue_full": 3}),
    backlog=3,
    requests=7,
    pause_reason="rate_limited",
    paused_until=1e12,
)


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class Source:
    """Stands where the middleware stands: anything with stats()."""

    def __init__(self, stats: DeliveryStats) -> None:
        self.current = stats
        self.reads = 0

    def stats(self) -> DeliveryStats:
        self.reads += 1
        return self.current


@pytest.mark.parametrize(
    ("name", "labels", "value"),
    [
        ("capi_events_enqueued_total", (), 20),
        ("capi_events_delivered_total", (), 11),
        ("capi_events_retried_total", (), 4),
        ("capi_graph_requests_total", (), 7),
        ("capi_events_dead_lettered_total", (("reason", "invalid_event"),), 2),
        ("capi_events_dead_lettered_total", (("reason", "too_old"),), 1),
        ("capi_events_dropped_total", (("reason", "queue_full"),), 3),
        ("capi_backlog", (), 3),
        ("capi_paused", (("reason", "rate_limited"),), 1),
    ],
)
def test_every_counter_is_exposed(
    name: str, labels: tuple[tuple[str, str], ...], value: float
) -> None:
    registry = CollectorRegistry()
    register_collector(Source(STATS), registry=registry)
    assert scrape(registry)[(name, labels)] == value


def test_the_exposed_counters_balance() -> None:
    registry = CollectorRegistry()
    register_collector(Source(STATS), registry=registry)
    s = scrape(registry)
    accounted = (
        s[("capi_events_delivered_total", ())]
        + sum(v for (n, _), v in s.items() if n == "capi_events_dead_lettered_total")
        + sum(v for (n, _), v in s.items() if n == "capi_events_dropped_total")
        + s[("capi_backlog", ())]
    )
    assert accounted == s[("capi_events_enqueued_total", ())]


def test_registration_does_not_read_stats_and_each_scrape_reads_once() -> None:
    source = Source(DeliveryStats())
    registry = CollectorRegistry(auto_describe=True)
    register_collector(source, registry=registry)
    assert source.reads == 0
    source.current = DeliveryStats(enqueued=5, delivered=5)
    assert scrape(registry)[("capi_events_delivered_total", ())] == 5
    assert source.reads == 1
    # no pause, no drops: no labelled samples invented
    assert not any(n == "capi_paused" for (n, _) in scrape(registry))


def test_a_plain_callable_and_a_namespace() -> None:
    registry = CollectorRegistry()
    registry.register(CAPICollector(lambda: STATS, namespace="shop"))
    assert scrape(registry)[("shop_events_enqueued_total", ())] == 20


def test_failing_stats_never_breaks_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> DeliveryStats:
        raise RuntimeError("sender gone")

    registry = CollectorRegistry()
    registry.register(CAPICollector(broken))
    assert not any(n.startswith("capi_") for (n, _) in scrape(registry))
    assert "stats() failed" in caplog.text


def test_source_must_be_readable() -> None:
    with pytest.raises(ValueError, match="source"):
        CAPICollector(42)  # type: ignore[arg-type]


def test_missing_extra_gives_a_clear_import_error() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import capi_middleware.prometheus\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'capi-middleware[prometheus]'" in out.stdout, out.stderr

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import LoopHistogram


def samples(histogram: LoopHistogram) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(histogram)
    text = generate_latest(registry).decode()
    (family,) = text_string_to_metric_families(text)
    assert family.type == "histogram"
    return {
        sample.name + "".join(f"{{{k}={v}}}" for k, v in sample.labels.items()): sample.value
        for sample in family.samples
    }


def test_a_loop_histogram_exports_cumulative_inclusive_buckets_count_and_sum() -> None:
    histogram = LoopHistogram("test_latency_seconds", "Test.", (0.001, 0.01))
    for value in (0.0005, 0.001, 0.005, 0.01, 3.0):
        histogram.observe(value)
    assert samples(histogram) == {
        "test_latency_seconds_bucket{le=0.001}": 2,  # a value on a bound counts in it
        "test_latency_seconds_bucket{le=0.01}": 4,
        "test_latency_seconds_bucket{le=+Inf}": 5,
        "test_latency_seconds_count": 5,
        "test_latency_seconds_sum": 0.0005 + 0.001 + 0.005 + 0.01 + 3.0,
    }


def test_an_empty_loop_histogram_exports_zeros() -> None:
    histogram = LoopHistogram("test_empty_seconds", "Test.", (1.0,))
    assert samples(histogram) == {
        "test_empty_seconds_bucket{le=1.0}": 0,
        "test_empty_seconds_bucket{le=+Inf}": 0,
        "test_empty_seconds_count": 0,
        "test_empty_seconds_sum": 0,
    }

"""gateway.encoding: the one place that serializes JSON."""

from __future__ import annotations

import tracemalloc

from gateway.encoding import dumps, loads


def test_encoded_bytes_cost_about_their_length() -> None:
    """Encoded bodies are kept (history holds every event's): each must cost about its length,
    not the 4 KB buffer orjson 3.12+ allocates."""
    body = {"id": 1, "title": "x" * 300}
    tracemalloc.start()
    try:
        kept = [dumps(body) for _ in range(2000)]
        per_body = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert len(kept[0]) < per_body < len(kept[0]) + 200
    assert loads(kept[0]) == body

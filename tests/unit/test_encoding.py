"""gateway.encoding: the one place that serializes JSON."""

from __future__ import annotations

import tracemalloc

from gateway.encoding import dumps, dumps_brief, dumps_text, loads


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


def test_non_str_keys_are_stringified_whichever_way_it_is_encoded() -> None:
    assert dumps({1: "a", "b": {2.5: None}}) == b'{"1":"a","b":{"2.5":null}}'
    assert dumps_brief({"k": [1, "x"]}) == b'{"k":[1,"x"]}'
    assert dumps_text({True: 1}) == '{"true":1}'

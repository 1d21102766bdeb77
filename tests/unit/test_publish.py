"""gateway.publish: the ids given to published events."""

from __future__ import annotations

import uuid

from gateway.publish import _random_ids


def test_event_ids_are_distinct_version_4_uuids_in_their_text_form() -> None:
    for count in (1, 2, 1000):
        ids = _random_ids(count)
        assert len(ids) == count == len(set(ids))
        for text in ids:
            parsed = uuid.UUID(text)
            assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
            assert str(parsed) == text


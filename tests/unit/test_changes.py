from __future__ import annotations

import datetime as dt

import pytest

from gateway.changes import Change, ChangeId, Op


@pytest.mark.parametrize(
    "micros",
    [
        0,
        1_764_480_000_000_000,
        1_764_480_000_123_999,  # milliseconds are truncated, not rounded
        1_764_480_059_999_999,  # the last microsecond of a minute
        951_782_400_000_001,  # 2000-02-29
        -1_000,  # before 1970
    ],
)
def test_commit_time_is_iso_8601_utc_in_milliseconds(micros: int) -> None:
    change = Change(ChangeId(1, 0), "public", "t", Op.INSERT, micros, ())
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    expected = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert change.commit_time == expected

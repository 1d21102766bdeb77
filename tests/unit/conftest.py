"""Unit tests use no sockets and no event loop: an async test here fails at collection, and a
socket opened during a test (an event loop opens one too) fails that test. What needs either
belongs in tests/integration/ (or tests/contract/)."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if "tests/unit/" in str(item.path) and inspect.iscoroutinefunction(function):
            raise pytest.UsageError(
                f"{item.nodeid} is async: unit tests run without an event loop; "
                "move it to tests/integration/"
            )


class _NoSocket(socket.socket):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a unit test opened a socket; move it to tests/integration/")


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket, "socket", _NoSocket)
    yield

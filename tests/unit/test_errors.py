"""gateway.errors: one exception root, and codes that mypy and this test keep in step."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import get_args

import gateway
from gateway.errors import SPECS, ErrorCode, GatewayError, RtgwError


def test_every_exception_the_gateway_defines_derives_from_the_root() -> None:
    defined = []
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        loaded = importlib.import_module(module.name)
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == loaded.__name__:
                defined.append(cls)
    assert len(defined) >= 8  # the walk found them
    assert [cls.__qualname__ for cls in defined if not issubclass(cls, RtgwError)] == []


def test_every_code_has_exactly_one_spec_and_its_summary_is_the_default_message() -> None:
    assert set(SPECS) == set(get_args(ErrorCode))
    error = GatewayError("bad_frame")
    assert (error.message, error.close_code) == (SPECS["bad_frame"].summary, None)

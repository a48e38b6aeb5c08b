"""Bounded polling: tests wait for a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Return the first truthy value of ``predicate()``; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def skip_without_browser(reason: str) -> None:
    """Skip a browser test where no Chromium is installed; fail instead where CI demands one.

    ``.ci/run`` installs Debian's chromium and sets DJCELERY_OPS_REQUIRE_BROWSER=1, so a
    browser test can never be silently skipped there.
    """
    import os

    import pytest

    if os.environ.get("DJCELERY_OPS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and DJCELERY_OPS_REQUIRE_BROWSER=1")
    pytest.skip(reason)

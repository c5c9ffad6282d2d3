"""Waiting for what another thread or process does: the one bounded poll."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.05,
               what: str | None = None, detail: Callable[[], str] | None = None) -> T:
    """Call `condition` until it returns something true; return that value.

    After `timeout` seconds (the condition is asked once more at the deadline) raise
    AssertionError saying what was awaited (`what`, else the condition's source) and
    the last value seen; `detail()`, when given, adds context such as a log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    message = f"{what or _describe(condition)}: not true within {timeout}s " \
              f"(last value: {value!r})"
    if detail is not None:
        message += "\n" + detail()
    raise AssertionError(message)


def _describe(condition: Callable) -> str:
    """A lambda's source line (what a reader of the failure needs), else its name."""
    name = getattr(condition, "__qualname__", repr(condition))
    if not name.endswith("<lambda>"):
        return name
    try:
        source = inspect.getsource(condition)
    except (OSError, TypeError):
        return name
    return " ".join(source.split())[:200]

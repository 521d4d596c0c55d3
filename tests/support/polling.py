"""Waiting in tests for what happens elsewhere (another task, process or server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Any], *, within: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns a truthy value; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)

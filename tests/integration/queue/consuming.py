"""Running a consumer in a test: a context that drains it on the way out, a condition to wait
for, and a configuration with intervals short enough for tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg

from docpipe_queue.consumer import Consumer, ConsumerConfig


@asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[Consumer]:
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        await consumer.drain(grace_s=5)
        # Bounded: a consumer that does not stop after a drain fails the test with this message
        # instead of hanging the session (one CI run hung in this module; not reproduced).
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            raise AssertionError("the consumer did not stop within 30 s of drain()") from None


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)


def all_finished(pool: asyncpg.Pool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        left = await pool.fetchval(
            "select count(*) from docpipe.jobs where status in ('queued', 'running')"
        )
        return bool(left == 0)

    return check


def config(**overrides: object) -> ConsumerConfig:
    base: dict[str, object] = {
        "pipeline": "p",
        "concurrency": 8,
        "batch_size": 8,
        "lease_s": 5.0,
        "heartbeat_s": 1.0,
        "poll_interval_s": 0.2,
        "rescue_interval_s": 0.5,
    }
    base.update(overrides)
    return ConsumerConfig(**base)  # type: ignore[arg-type]

"""The usage meter adds what the provider clients record to the work they run under."""

from __future__ import annotations

import asyncio

from docpipe_providers import usage


def test_tokens_and_pages_recorded_inside_a_meter_add_up() -> None:
    with usage.metering() as meter:
        usage.record_tokens("m", 10)
        usage.record_tokens("m", 5)
        usage.record_pages(3)
    assert (meter.tokens, meter.pages, meter.requests, meter.model) == (15, 3, 3, "m")


def test_usage_recorded_outside_any_meter_goes_nowhere() -> None:
    usage.record_tokens("m", 10)
    with usage.metering() as meter:
        pass
    assert meter.tokens == 0


async def test_tasks_started_inside_a_meter_record_into_it() -> None:
    async def call(tokens: int) -> None:
        await asyncio.sleep(0)
        usage.record_tokens("m", tokens)

    with usage.metering() as meter:
        await asyncio.gather(call(1), call(2), call(3))
    assert meter.tokens == 6


async def test_concurrent_meters_do_not_share_totals() -> None:
    async def job(tokens: int) -> int:
        with usage.metering() as meter:
            await asyncio.sleep(0)
            usage.record_tokens("m", tokens)
            await asyncio.sleep(0)
        return meter.tokens

    assert list(await asyncio.gather(job(1), job(2))) == [1, 2]

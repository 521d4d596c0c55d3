"""How a provider call spends its quota budget and rides out 429s (`docpipe_providers.quota_calls`),
with a real in-process budget and calls that answer as a provider would."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_providers.external_requests import QuotaExhaustedError, RateLimitedError
from docpipe_providers.quota import LocalBudget, QuotaKey, QuotaLimits
from docpipe_providers.quota_calls import (
    JOBS_WAITING,
    QuotaGate,
    estimate_tokens,
    limits_from_headers,
    quota_name,
)

KEY = QuotaKey("openai", "0123456789abcdef", "text-embedding-3-small")


def gate(pipeline: str, limits: QuotaLimits | None = None, hold_s: float = 0.05) -> QuotaGate:
    budget = LocalBudget(limits or QuotaLimits.unlimited())
    return QuotaGate(budget, KEY, pipeline=pipeline, hold_s=hold_s, default_retry_after_s=0.01)


def sample(name: str, pipeline: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(
        name, {"pipeline": pipeline, "provider": "openai", "quota": quota_name(KEY), **labels}
    )
    return value or 0.0


def answers(*outcomes: Exception | str) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A call that raises or returns each outcome in turn; the list counts the sends."""
    sends = [0]

    async def send() -> str:
        outcome = outcomes[min(sends[0], len(outcomes) - 1)]
        sends[0] += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return send, sends


def test_the_quota_label_names_the_key_by_a_short_hash_and_the_model() -> None:
    assert quota_name(KEY) == "0123456789ab:text-embedding-3-small"


def test_tokens_are_estimated_as_characters_over_four_rounded_up_at_least_one_each() -> None:
    assert estimate_tokens(["abcd", "abcde", "", "x" * 400]) == 1 + 2 + 1 + 100
    assert estimate_tokens([]) == 0


def test_limits_come_from_the_limit_headers_only() -> None:
    assert limits_from_headers(
        {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "1000000"}
    ) == QuotaLimits(500, 1_000_000)
    assert limits_from_headers({"x-ratelimit-limit-tokens": "40000"}) == QuotaLimits(None, 40_000)
    assert limits_from_headers({"x-ratelimit-remaining-requests": "3"}) is None


async def test_a_rate_limited_call_waits_its_retry_after_and_is_sent_again() -> None:
    quota = gate("rl")
    send, sends = answers(RateLimitedError("429", retry_after=0.05), "ok")
    loop = asyncio.get_running_loop()
    started = loop.time()

    assert await quota.call(send, tokens=7) == "ok"

    assert sends[0] == 2
    assert loop.time() - started >= 0.05
    assert sample("docpipe_quota_rate_limited_total", "rl") == 1
    assert sample("docpipe_quota_wait_seconds_total", "rl") >= 0.05
    assert sample("docpipe_quota_used_total", "rl", unit="requests") == 2
    assert sample("docpipe_quota_used_total", "rl", unit="tokens") == 14


async def test_a_429_without_retry_after_waits_the_default_and_never_gives_up() -> None:
    quota = gate("rl-many")
    send, sends = answers(*([RateLimitedError("429")] * 20), "ok")

    assert await quota.call(send) == "ok"

    assert sends[0] == 21
    assert sample("docpipe_quota_rate_limited_total", "rl-many") == 20


async def test_insufficient_quota_holds_with_one_warning_and_clears_on_the_first_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quota = gate("held", hold_s=0.05)
    refusal = QuotaExhaustedError("openai: 429 You exceeded your current quota")
    send, sends = answers(refusal, refusal, refusal, "ok")
    held_seen: list[float] = []

    async def watch() -> None:
        while sends[0] < 4:
            held_seen.append(sample("docpipe_quota_held", "held"))
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO, logger="docpipe_providers.quota_calls"):
        watcher = asyncio.create_task(watch())
        assert await quota.call(send) == "ok"
        await watcher

    assert sends[0] == 4
    assert 1.0 in held_seen
    assert sample("docpipe_quota_held", "held") == 0
    assert not quota.held
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "openai" in warnings[0].getMessage()
    assert "pipeline held" in warnings[0].getMessage()
    assert sample("docpipe_quota_wait_seconds_total", "held") >= 3 * 0.05 - 0.01


async def test_concurrent_calls_during_a_hold_log_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quota = gate("held-many", hold_s=0.05)
    credit = asyncio.Event()
    refusals = [0]

    async def send() -> str:
        if not credit.is_set():
            refusals[0] += 1
            raise QuotaExhaustedError("no credit")
        return "ok"

    async def pay_later() -> None:
        await asyncio.sleep(0.2)
        credit.set()

    with caplog.at_level(logging.WARNING, logger="docpipe_providers.quota_calls"):
        payment = asyncio.create_task(pay_later())
        results = await asyncio.gather(*(quota.call(send) for _ in range(8)))
        await payment

    assert results == ["ok"] * 8
    assert refusals[0] >= 2  # retried through the hold
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert sample("docpipe_quota_held", "held-many") == 0


async def test_a_held_call_is_cancellable() -> None:
    quota = gate("held-cancel", hold_s=30.0)
    send, sends = answers(QuotaExhaustedError("no credit"))
    task = asyncio.create_task(quota.call(send))
    while sends[0] == 0:
        await asyncio.sleep(0.01)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert sample("docpipe_quota_held", "held-cancel") == 1  # the provider still refuses


async def test_a_call_waiting_out_a_rate_limit_is_cancellable() -> None:
    quota = gate("rl-cancel")
    send, sends = answers(RateLimitedError("429", retry_after=30.0))
    task = asyncio.create_task(quota.call(send))
    while sends[0] == 0:
        await asyncio.sleep(0.01)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)


async def test_other_failures_are_raised_as_before() -> None:
    quota = gate("other")
    for failure in (TransientError("503"), PermanentError("400", status=400)):
        send, sends = answers(failure)
        with pytest.raises(type(failure)):
            await quota.call(send)
        assert sends[0] == 1
    assert sample("docpipe_quota_rate_limited_total", "other") == 0


async def test_calls_that_spend_nothing_skip_the_budget_but_still_ride_out_429s() -> None:
    quota = gate("polls", limits=QuotaLimits(60, None))
    send, sends = answers(RateLimitedError("429", retry_after=0.01), "ok")

    assert await quota.call(send, requests=0) == "ok"

    assert sends[0] == 2
    assert sample("docpipe_quota_used_total", "polls", unit="requests") == 0


async def test_learned_limits_are_exported_and_never_raise_a_configured_one() -> None:
    quota = gate("learn", limits=QuotaLimits(100, None))
    assert sample("docpipe_quota_limit_per_minute", "learn", unit="requests") == 100

    quota.observe({"x-ratelimit-limit-requests": "3000", "x-ratelimit-limit-tokens": "1000000"})

    assert quota.budget.limits == QuotaLimits(100, 1_000_000)
    assert sample("docpipe_quota_limit_per_minute", "learn", unit="requests") == 100
    assert sample("docpipe_quota_limit_per_minute", "learn", unit="tokens") == 1_000_000

    quota.observe({"x-ratelimit-limit-requests": "50"})

    assert sample("docpipe_quota_limit_per_minute", "learn", unit="requests") == 50


async def test_waiting_for_budget_is_counted_and_reported() -> None:
    # 120 requests per minute: a full bucket of 2, then one every 0.5 s or so.
    quota = gate("budget", limits=QuotaLimits(120, None))
    waits: list[float] = []
    send, _ = answers("ok")

    for _ in range(4):
        await quota.call(send, waited=waits.append)

    assert sum(waits) > 0.3
    assert sample("docpipe_quota_wait_seconds_total", "budget") == pytest.approx(sum(waits))


async def test_a_wait_shared_by_several_jobs_counts_once_per_job() -> None:
    quota = gate("shared-wait", limits=QuotaLimits(120, None))
    waits: list[float] = []
    send, _ = answers("ok")

    async def shared_request() -> None:
        JOBS_WAITING.set(3)  # as `batching` sets it for a request carrying three jobs' texts
        for _ in range(3):
            await quota.call(send, waited=waits.append)

    await asyncio.create_task(shared_request())

    assert sum(waits) > 0.2
    assert sample("docpipe_quota_wait_seconds_total", "shared-wait") == pytest.approx(
        3 * sum(waits)
    )

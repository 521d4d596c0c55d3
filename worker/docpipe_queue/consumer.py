"""The loop that drains one pipeline's jobs: claims in batches, runs a handler per job, records
failures, and stops gracefully. The bookkeeping runs beside it, one module each: batched
completions (`completions`), lease heartbeats (`heartbeat`), rescue of expired leases (`rescue`)
and LISTEN/NOTIFY wake-ups with polling as the fallback (`notifications`)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from docpipe_contracts.errors import LeaseLostError, PermanentError, TransientError
from docpipe_queue import heartbeat, metrics, rescue, shares
from docpipe_queue import jobs as queue
from docpipe_queue.completions import Completions
from docpipe_queue.connectivity import DB_ERRORS, Connectivity
from docpipe_queue.jobs import ClaimedJob, Lease, LeaseState
from docpipe_queue.notifications import Notifications
from docpipe_queue.retry import RetryPolicy, backoff_delay

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What a handler reports when it returns normally."""

    # The consumer marks the job succeeded (batched with other completions).
    ACK = "ack"
    # The handler already completed the job in its own transaction (queue.complete with its lease).
    COMPLETED = "completed"
    # The handler gave the job back to the queue under its lease, unfinished, its progress kept
    # (queries.HAND_BACK: a large document between parts); the slot is free for the next job.
    HANDED_BACK = "handed_back"


Handler = Callable[[ClaimedJob], Awaitable[Outcome | None]]


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def default_fair_claims() -> bool:
    """DOCPIPE_FAIR_CLAIMS (default true): owners take turns in claims (ADR 0006)."""
    value = os.environ.get("DOCPIPE_FAIR_CLAIMS", "true").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"DOCPIPE_FAIR_CLAIMS must be true or false, got {value!r}")


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    pipeline: str
    concurrency: int = 16
    batch_size: int = 100
    lease_s: float = 30.0
    heartbeat_s: float = 10.0
    poll_interval_s: float = 2.0
    rescue_interval_s: float = 5.0
    # Completions wait at most this long (or for `ack_batch` of them) and go in one statement.
    ack_interval_s: float = 0.005
    ack_batch: int = 500
    # Freed slots wait at most this long for company before they are refilled: claims stay
    # batched under load without leaving slots idle while slow jobs trickle out.
    claim_coalesce_s: float = 0.005
    # A canary's failures hand the attempt back and never make a job dead: a bad revision must
    # not use up the attempts of the jobs it touches (the stable revision retries them).
    count_failures: bool = True
    # A canary's share of the pipeline's jobs (0 < weight <= 1; the operator sets it on canaries):
    # it claims only the jobs of its share (docpipe_queue.shares), whatever its speed, and the
    # stable workers leave them to it for up to one lease. None: a stable worker.
    canary_weight: float | None = None
    # Owners take turns within the pipeline (ADR 0006); False: priority then age, whoever the
    # owner (the order before fair claims, kept for comparison).
    fair_claims: bool = field(default_factory=default_fair_claims)
    revision: str = "dev"
    worker_id: str = field(default_factory=default_worker_id)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch_size", "ack_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lease_s", "heartbeat_s", "poll_interval_s", "rescue_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.canary_weight is not None:
            shares.buckets_for(self.canary_weight)  # raises on a weight out of range
        if self.claim_coalesce_s < 0:
            raise ValueError(f"claim_coalesce_s must be >= 0, got {self.claim_coalesce_s}")
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be shorter than lease_s ({self.lease_s})"
            )


class Consumer:
    """Drains `config.pipeline` with `handler` until `stop()`; run it with `await run()`."""

    def __init__(self, pool: asyncpg.Pool, handler: Handler, config: ConsumerConfig) -> None:
        self.pool = pool
        self.handler = handler
        self.config = config
        self._connectivity = Connectivity()
        self._running: dict[int, tuple[ClaimedJob, asyncio.Task[None]]] = {}
        self._recording: set[asyncio.Task[None]] = set()
        self._canary_buckets = (
            shares.buckets_for(config.canary_weight) if config.canary_weight is not None else None
        )
        self._slot_freed = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        labels = (config.pipeline, config.revision)
        self._m_claimed = metrics.JOBS_CLAIMED.labels(*labels)
        self._m_succeeded = metrics.JOBS_SUCCEEDED.labels(*labels)
        self._m_retried = metrics.JOBS_RETRIED.labels(*labels)
        self._m_dead = metrics.JOBS_DEAD.labels(*labels)
        self._m_lost = metrics.JOBS_LEASE_LOST.labels(*labels)
        self._m_in_flight = metrics.JOBS_IN_FLIGHT.labels(*labels)
        self._completions = Completions(
            pool,
            self._connectivity,
            batch=config.ack_batch,
            interval_s=config.ack_interval_s,
            succeeded=self._m_succeeded,
            lease_lost=self._m_lost,
        )
        self._notifications = Notifications(
            pool, self._connectivity, pipeline=config.pipeline, wake=self._wake
        )

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def db_ok(self) -> bool:
        """Whether the last statement of any of the consumer's loops reached the database."""
        return self._connectivity.ok

    @property
    def last_db_contact(self) -> float:
        """`time.monotonic()` when a statement last reached the database (0.0: never)."""
        return self._connectivity.last_contact

    async def run(self) -> None:
        """Claim and process jobs until `stop()` is called; then return."""
        cfg = self.config
        beat = heartbeat.run(
            self.pool,
            self._connectivity,
            interval_s=cfg.heartbeat_s,
            lease_s=cfg.lease_s,
            held=self._held_leases,
            lost=self._abandon,
            worker=cfg.worker_id,
        )
        rescuing = rescue.run(self.pool, self._connectivity, interval_s=cfg.rescue_interval_s)
        if self._canary_buckets is not None:
            # Before the first claim, so that the stable workers leave the share to it from then.
            await self._register_share()
        helpers = [
            asyncio.create_task(self._completions.run(), name="docpipe-ack"),
            asyncio.create_task(beat, name="docpipe-heartbeat"),
            asyncio.create_task(rescuing, name="docpipe-rescue"),
            asyncio.create_task(self._notifications.run(), name="docpipe-listen"),
        ]
        if self._canary_buckets is not None:
            helpers.append(asyncio.create_task(self._renew_share(), name="docpipe-canary-share"))
        try:
            await self._claim_loop()
            # Stopped: in-flight jobs finish (or drain() cancels them) with heartbeats still on.
            while self._running:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            await self._completions.flush()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if self._canary_buckets is not None:
                await self._withdraw_share()
            await self._notifications.close()

    def stop(self) -> None:
        """Stop claiming; `run()` returns once in-flight jobs have finished (see `drain`)."""
        self._stopping.set()
        self._wake.set()

    async def drain(self, grace_s: float) -> None:
        """Wait up to `grace_s` for in-flight jobs, then cancel and release the rest at once so
        other workers can take them without waiting for the lease to expire."""
        self.stop()
        tasks = [task for _, task in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        leftover = list(self._running.values())
        for _, task in leftover:
            task.cancel()
        await asyncio.gather(*(task for _, task in leftover), return_exceptions=True)
        await self._completions.flush()
        if leftover:
            leases = [job.lease for job, _ in leftover]
            try:
                released = await queue.release(self.pool, leases)
                log.info("released unfinished jobs", extra={"released": len(released)})
            except Exception as exc:
                log.warning("could not release jobs; their leases will expire: %s", exc)

    # -- claiming -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        cfg = self.config
        low_water = min(cfg.batch_size, max(1, cfg.concurrency // 4))
        loop = asyncio.get_running_loop()
        refill_at: float | None = None
        while not self._stopping.is_set():
            free = cfg.concurrency - len(self._running)
            if free < low_water:
                self._slot_freed.clear()
                if free == 0:
                    await self._slot_freed.wait()
                    continue
                # A few slots are free: wait briefly for more to claim them together.
                if refill_at is None:
                    refill_at = loop.time() + cfg.claim_coalesce_s
                if loop.time() < refill_at:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slot_freed.wait(), refill_at - loop.time())
                    continue
            refill_at = None
            want = min(free, cfg.batch_size)
            self._wake.clear()
            try:
                jobs = await queue.claim(
                    self.pool,
                    cfg.pipeline,
                    want,
                    lease_s=cfg.lease_s,
                    worker=cfg.worker_id,
                    fair=cfg.fair_claims,
                    canary_buckets=self._canary_buckets,
                )
            except DB_ERRORS as exc:
                await self._connectivity.lost("claim", exc)
                continue
            except Exception:
                # A bug or an unforeseen driver state must not end the worker: log, back off, go on.
                log.exception("claim failed unexpectedly")
                await self._connectivity.lost("claim", RuntimeError("unexpected"))
                continue
            self._connectivity.reached()
            for job in jobs:
                self._start(job)
            if jobs:
                self._m_claimed.inc(len(jobs))
            if len(jobs) < want:
                await self._wait_for_work()

    def _start(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._process(job))
        self._running[job.id] = (job, task)
        self._m_in_flight.inc()

    async def _wait_for_work(self) -> None:
        timeout = self.config.poll_interval_s
        with contextlib.suppress(Exception):
            # A retried job's backoff may end before the next poll: wake for it then.
            run_after = await queue.next_run_after(
                self.pool, self.config.pipeline, canary_buckets=self._canary_buckets
            )
            if run_after is not None:
                now = await self.pool.fetchval("select now()")
                timeout = max(0.0, min(timeout, (run_after - now).total_seconds()))
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # -- processing -----------------------------------------------------------------------------

    async def _process(self, job: ClaimedJob) -> None:
        try:
            await self._handle(job)
        finally:
            # Whatever happens, even a cancel while recording a failure (drain() under load),
            # the slot is freed: run() waits for every running job to leave before it returns.
            self._finish(job)

    async def _handle(self, job: ClaimedJob) -> None:
        try:
            outcome = await self.handler(job)
        except asyncio.CancelledError:
            # Cancelled because the lease was lost (cancel, rescue) or by drain(): not a failure.
            raise
        except LeaseLostError as exc:
            self._m_lost.inc()
            log.info("lease lost, result dropped: %s", exc, extra={"job_id": job.id})
        except PermanentError as exc:
            await self._fail(job, str(exc), permanent=True, retry_after=None)
        except asyncpg.DataError as exc:
            # The database refuses what the input became (a value out of range, bytes it cannot
            # store): the same input fails the same way on every attempt.
            message = f"the database refused the document's data ({type(exc).__name__}: {exc})"
            await self._fail(job, message, permanent=True, retry_after=None)
        except RecursionError as exc:
            # The same input recurses as deep on every attempt: not worth a retry.
            message = f"the document is nested too deeply to process ({type(exc).__name__}: {exc})"
            await self._fail(job, message, permanent=True, retry_after=None)
        except TransientError as exc:
            await self._fail(job, str(exc), permanent=False, retry_after=exc.retry_after)
        except DB_ERRORS as exc:
            message = f"database unavailable: {type(exc).__name__}: {exc}"
            await self._fail(job, message, permanent=False, retry_after=None)
        except Exception as exc:
            log.exception("job handler crashed", extra={"job_id": job.id})
            await self._fail(job, f"{type(exc).__name__}: {exc}", permanent=False, retry_after=None)
        else:
            if outcome is Outcome.COMPLETED:
                self._m_succeeded.inc()
            elif outcome is not Outcome.HANDED_BACK:
                self._completions.add(job.lease)

    def _finish(self, job: ClaimedJob) -> None:
        if self._running.pop(job.id, None) is not None:
            self._m_in_flight.dec()
            self._slot_freed.set()

    async def _fail(
        self, job: ClaimedJob, error: str, *, permanent: bool, retry_after: float | None
    ) -> None:
        delay = backoff_delay(self.config.retry_policy, job.attempt, retry_after=retry_after)
        for attempt in range(5):
            try:
                outcome = await queue.fail(
                    self.pool,
                    job.lease,
                    error,
                    delay_s=delay,
                    permanent=permanent,
                    counted=self.config.count_failures,
                    revision=self.config.revision,
                )
                break
            except Exception as exc:
                # Not recorded: the lease will expire and the rescuer requeues the job.
                log.warning("could not record failure (try %d): %s", attempt + 1, exc)
                await asyncio.sleep(min(2.0**attempt * 0.2, 5.0))
        else:
            return
        if outcome.status == "queued":
            self._m_retried.inc()
        elif outcome.status == "dead":
            self._m_dead.inc()
        else:
            self._m_lost.inc()
        log.info(
            "job failed",
            extra={
                "job_id": job.id,
                "document_id": str(job.document_id) if job.document_id else None,
                "correlation_id": job.correlation_id,
                "attempt": job.attempt,
                "outcome": outcome.status or "lease lost",
                "error": error,
            },
        )

    # -- a canary's share ------------------------------------------------------------------------

    async def _register_share(self) -> None:
        cfg = self.config
        assert self._canary_buckets is not None
        try:
            await queue.register_canary(
                self.pool,
                cfg.pipeline,
                worker=cfg.worker_id,
                revision=cfg.revision,
                buckets=self._canary_buckets,
                hold_s=cfg.lease_s,
                lease_s=cfg.lease_s,
            )
        except DB_ERRORS as exc:
            # Unregistered, the canary still claims only its share; the stable workers take the
            # share too until the next renewal reaches the database.
            await self._connectivity.lost("canary share", exc)
            return
        except Exception:
            log.exception("could not register the canary's share")
            return
        self._connectivity.reached()

    async def _renew_share(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            await self._register_share()

    async def _withdraw_share(self) -> None:
        try:
            await queue.withdraw_canary(
                self.pool, self.config.pipeline, worker=self.config.worker_id
            )
        except Exception as exc:  # the row expires after one lease by itself
            log.warning("could not withdraw the canary's share: %s", exc)

    # -- what the heartbeat asks ----------------------------------------------------------------

    def _held_leases(self) -> list[Lease]:
        # Finished jobs keep their lease until their completion is written.
        return [job.lease for job, _ in self._running.values()] + self._completions.pending

    def _abandon(self, lease: Lease, state: LeaseState, since_renewal_s: float) -> None:
        entry = self._running.get(lease.job_id)
        if entry is None or entry[0].lease != lease:
            return  # finished meanwhile (its completion found the lease gone and counted it)
        self._m_lost.inc()
        if state.status == "cancelled":
            why = "job cancelled"
        elif state.status is None:
            why = "job deleted"
        else:
            why = "lease lost"
        log.info(
            f"{why}, abandoning job",
            extra={
                "job_id": lease.job_id,
                "status": state.status,
                "seconds_since_renewal": round(since_renewal_s, 1),
            },
        )
        # Cancelling the handler stops its work at once: a parse in a child process is killed.
        entry[1].cancel()
        if why == "lease lost":
            error = (
                f"lease lost on live worker {self.config.worker_id}: the job was rescued while"
                f" the worker was running it ({since_renewal_s:.0f} s after its last renewal"
                f" reached the database, with a lease of {self.config.lease_s:g} s: the"
                " database unreachable or too slow to renew it in time?); the worker abandoned"
                " the job"
            )
            task = asyncio.create_task(self._record_lease_lost(lease, error))
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)

    async def _record_lease_lost(self, lease: Lease, error: str) -> None:
        try:
            await queue.record_lease_lost(
                self.pool, lease, worker=self.config.worker_id, error=error
            )
        except Exception as exc:  # only the job's last_error is less precise
            log.warning("could not record the lost lease of job %d: %s", lease.job_id, exc)

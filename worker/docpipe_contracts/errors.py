"""How a failing step tells the queue what to do next: retry later, or give up now."""

from __future__ import annotations


class JobError(Exception):
    """A failure of one job's processing, with a message a person can act on."""


class TransientError(JobError):
    """The step may succeed later (timeout, 5xx, 429): the job goes back to the queue with backoff.

    `retry_after` (seconds), when the failing service said how long to wait, is a floor on the
    delay.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StartupError(Exception):
    """A process cannot start as configured; the message says what to change."""


class LeaseLostError(Exception):
    """The job was cancelled or rescued while this worker processed it: its result is dropped."""


class PermanentError(JobError):
    """Retrying cannot help (4xx, unreadable file, empty document): the job goes dead at once.

    `status` is the HTTP status of the refusal, when a service refused.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

"""The decisions of the originals' deletion outbox: when a failed purge is tried again, when an
upload puts its object again, which keys a worker's sweep covers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from docpipe_providers.object_storage import original_key, pipeline_key_prefix
from docpipe_queue.original_deletions import Cancelled, must_put_again, retry_delay_s


def test_a_failed_purge_waits_five_seconds_then_doubles() -> None:
    assert [retry_delay_s(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]


def test_the_wait_after_failed_purges_stops_growing_at_fifteen_minutes() -> None:
    assert retry_delay_s(8) == 640.0
    assert retry_delay_s(9) == 900.0
    assert retry_delay_s(10_000) == 900.0


def test_the_wait_is_counted_from_the_first_failure() -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay_s(0)


def test_an_upload_that_found_no_deletion_keeps_its_object() -> None:
    assert not must_put_again(Cancelled(found=False))


def test_an_upload_that_cancelled_a_pending_deletion_keeps_its_object() -> None:
    assert not must_put_again(Cancelled(found=True, purged_at=None))


def test_an_upload_that_found_the_key_purged_puts_its_object_again() -> None:
    assert must_put_again(Cancelled(found=True, purged_at=datetime.now(UTC)))


def test_a_pipelines_sweep_prefix_covers_its_keys_and_not_a_longer_named_pipelines() -> None:
    prefix = pipeline_key_prefix("originals/", "docs")
    assert original_key("originals/", "docs", "alice", "ab" * 32).startswith(prefix)
    assert not original_key("originals/", "docs-2", "alice", "ab" * 32).startswith(prefix)

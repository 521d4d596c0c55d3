"""The audit trail through the running API: each state-changing request leaves one row, written in
the action's own transaction when it succeeds (a failed transaction leaves none, and a failed
audit write undoes the action), and in its own when it is refused; GET /v1/audit reads it for
admin tokens only, filtered and paged; the table refuses UPDATE, DELETE and TRUNCATE."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from docpipe_api.server import open_api
from docpipe_queue import audit
from tests.integration.api.conftest import Api, api_settings, unique_markdown

ADMIN = "admin"


async def rows(api: Api, **where: object) -> list[dict[str, Any]]:
    conditions = " and ".join(f"{name} = ${i}" for i, name in enumerate(where, start=1))
    found = await api.pool.fetch(
        "select * from docpipe.audit_events"
        + (f" where {conditions}" if conditions else "")
        + " order by id",
        *where.values(),
    )
    return [dict(row) for row in found]


async def read_audit(api: Api, query: str = "") -> tuple[int, Any]:
    status, body, _ = await api.call("GET", f"/v1/audit{query}", subject="auditor", scopes=ADMIN)
    return status, body


# -- what each action records ----------------------------------------------------------------


async def test_an_upload_records_who_what_and_how_it_ended(api: Api) -> None:
    before = datetime.now(UTC)
    status, body = await api.upload(unique_markdown(), headers={"X-Request-ID": "req-upload-1"})
    assert status == 201
    [row] = await rows(api)
    assert row == {
        "id": row["id"],
        "at": row["at"],
        "subject": "alice",
        "owner": "alice",
        "request_id": "req-upload-1",
        "action": "upload",
        "pipeline": "default",
        "document_id": uuid.UUID(body["document"]["id"]),
        "job_id": body["job_id"],
        "outcome": "ok",
        "status": 201,
        "error": None,
    }
    assert before - timedelta(seconds=5) <= row["at"] <= datetime.now(UTC)


async def test_the_same_upload_again_and_a_reprocess_are_recorded_too(api: Api) -> None:
    data = unique_markdown()
    _, first = await api.upload(data)
    status, again = await api.upload(data)
    assert (status, again["created"]) == (200, False)
    status, reprocessed = await api.upload(data, query="?reprocess=true")
    assert status == 200
    assert reprocessed["job_id"] != first["job_id"]
    recorded = [(r["action"], r["status"], r["job_id"]) for r in await rows(api)]
    assert recorded == [
        ("upload", 201, first["job_id"]),
        ("upload", 200, None),
        ("reprocess", 200, reprocessed["job_id"]),
    ]


async def test_a_delete_records_its_document(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    document_id = body["document"]["id"]
    status, _, headers = await api.call(
        "DELETE", f"/v1/documents/{document_id}", headers={"X-Request-ID": "req-delete-1"}
    )
    assert status == 204
    [row] = await rows(api, action="delete")
    assert (row["document_id"], row["request_id"], row["outcome"], row["status"]) == (
        uuid.UUID(document_id),
        "req-delete-1",
        "ok",
        204,
    )
    assert headers["X-Request-ID"] == "req-delete-1"


async def test_a_retry_records_its_job_and_document(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    job_id = body["job_id"]
    await api.pool.execute(
        "update docpipe.jobs set status = 'dead', last_error = 'boom', finished_at = now()"
        " where id = $1",
        job_id,
    )
    status, _, _ = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert status == 200
    [row] = await rows(api, action="retry")
    assert (row["job_id"], row["document_id"], row["outcome"], row["status"]) == (
        job_id,
        uuid.UUID(body["document"]["id"]),
        "ok",
        200,
    )


async def test_reads_and_searches_are_not_recorded(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    await api.call("GET", f"/v1/documents/{body['document']['id']}")
    await api.call("GET", "/v1/pipelines/default/documents")
    await api.call("GET", "/v1/usage")
    await api.call(
        "POST", "/v1/pipelines/default/search", json={"query": "tide", "mode": "keyword"}
    )
    await read_audit(api)
    assert [r["action"] for r in await rows(api)] == ["upload"]


# -- the same transaction ------------------------------------------------------------------------
#
# A deferred constraint trigger raises at COMMIT, after the handler has written its audit row: if
# that row were written in a transaction of its own, it would survive the action's rollback.


async def _fail_at_commit(api: Api, table: str, event: str) -> None:
    await api.pool.execute(
        """
        create function public.fail_at_commit() returns trigger language plpgsql as $$
        begin raise exception 'injected failure at commit'; end $$;
        """
    )
    await api.pool.execute(
        f"create constraint trigger fail_at_commit after {event} on docpipe.{table}"
        " deferrable initially deferred for each row execute function public.fail_at_commit()"
    )


async def test_a_delete_whose_transaction_fails_leaves_no_ok_row(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    document_id = body["document"]["id"]
    await _fail_at_commit(api, "documents", "delete")
    status, refused, _ = await api.call("DELETE", f"/v1/documents/{document_id}")
    assert (status, refused["error"]["code"]) == (500, "internal")
    assert await api.pool.fetchval(
        "select count(*) from docpipe.documents where id = $1", uuid.UUID(document_id)
    )
    [row] = await rows(api, action="delete")
    assert (row["outcome"], row["status"], row["error"]) == ("failed", 500, "internal")


async def test_an_upload_whose_transaction_fails_leaves_no_ok_row(api: Api) -> None:
    await _fail_at_commit(api, "jobs", "insert")
    status, refused = await api.upload(unique_markdown())
    assert (status, refused["error"]["code"]) == (500, "internal")
    assert await api.pool.fetchval("select count(*) from docpipe.documents") == 0
    [row] = await rows(api)
    assert (row["action"], row["outcome"], row["status"]) == ("upload", "failed", 500)
    # It names the document it tried to add, which was rolled back with the rest.
    assert row["document_id"] is not None


async def test_an_audit_write_that_fails_undoes_the_action(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    document_id = body["document"]["id"]
    await api.pool.execute(
        """
        create function public.refuse_ok_deletes() returns trigger language plpgsql as $$
        begin
            if new.action = 'delete' and new.outcome = 'ok' then
                raise exception 'injected audit failure';
            end if;
            return new;
        end $$;
        create trigger refuse_ok_deletes before insert on docpipe.audit_events
            for each row execute function public.refuse_ok_deletes();
        """
    )
    status, _, _ = await api.call("DELETE", f"/v1/documents/{document_id}")
    assert status == 500
    # The document (and its job) are still there: the delete rolled back with its audit row.
    assert await api.pool.fetchval(
        "select count(*) from docpipe.jobs where document_id = $1", uuid.UUID(document_id)
    )
    assert await api.pool.fetchval(
        "select status from docpipe.documents where id = $1", uuid.UUID(document_id)
    )


# -- refusals ------------------------------------------------------------------------------------


async def test_refusals_are_recorded_in_their_own_transaction(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    job_id = body["job_id"]
    missing = uuid.uuid4()
    status, _, _ = await api.call(
        "DELETE", f"/v1/documents/{missing}", headers={"X-Request-ID": "req-404"}
    )
    assert status == 404
    status, _, _ = await api.call("POST", f"/v1/jobs/{job_id}/retry")  # queued: 409
    assert status == 409
    status, _ = await api.upload(unique_markdown(), subject="bob", headers={})
    assert status == 201
    # bob without the write scope: 403, recorded under bob.
    status, _, _ = await api.call(
        "DELETE", f"/v1/documents/{body['document']['id']}", subject="bob", scopes="read"
    )
    assert status == 403
    # Another owner's document is not found, and recorded as such.
    status, _, _ = await api.call(
        "DELETE", f"/v1/documents/{body['document']['id']}", subject="bob"
    )
    assert status == 404
    refused = [
        (r["subject"], r["action"], r["status"], r["error"], r["document_id"], r["job_id"])
        for r in await rows(api, outcome="refused")
    ]
    document_id = uuid.UUID(body["document"]["id"])
    assert refused == [
        ("alice", "delete", 404, "not_found", missing, None),
        ("alice", "retry", 409, "conflict", document_id, job_id),
        ("bob", "delete", 403, "insufficient_scope", None, None),
        ("bob", "delete", 404, "not_found", document_id, None),
    ]
    [not_found] = await rows(api, request_id="req-404")
    assert not_found["owner"] == "alice"
    # The document is still alice's and still there.
    assert await api.pool.fetchval("select owner from docpipe.documents where id = $1", document_id)


async def test_an_invalid_upload_is_recorded_with_its_pipeline(api: Api) -> None:
    status, body = await api.upload(b"")
    assert (status, body["error"]["code"]) == (422, "invalid_parameter")
    status, _ = await api.upload(unique_markdown(), pipeline="nope")
    assert status == 404
    recorded = [(r["pipeline"], r["status"], r["error"]) for r in await rows(api)]
    assert recorded == [("default", 422, "invalid_parameter"), (None, 404, "not_found")]


async def test_requests_without_a_valid_token_are_not_recorded(api: Api) -> None:
    async with api.session.delete(f"{api.url}/v1/documents/{uuid.uuid4()}") as response:
        assert response.status == 401
    async with api.session.delete(
        f"{api.url}/v1/documents/{uuid.uuid4()}", headers={"Authorization": "Bearer nonsense"}
    ) as response:
        assert response.status == 401
    assert await rows(api) == []


@pytest.fixture
async def limited_api(database_url: str, mocks: str) -> AsyncIterator[Api]:
    settings = api_settings(database_url, mocks, rate_limit_per_second=0.01, rate_limit_burst=1)
    async with open_api(settings) as running, aiohttp.ClientSession() as session:
        yield Api(running.url, mocks, session, running.context.pool, running)


async def test_a_rate_limited_action_is_recorded(limited_api: Api) -> None:
    assert (await limited_api.upload(unique_markdown()))[0] == 201
    status, body = await limited_api.upload(unique_markdown())
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    recorded = [(r["outcome"], r["status"], r["error"]) for r in await rows(limited_api)]
    assert recorded == [("ok", 201, None), ("refused", 429, "rate_limited")]


# -- reading it ----------------------------------------------------------------------------------


async def test_reading_the_trail_needs_the_admin_scope(api: Api) -> None:
    await api.upload(unique_markdown())
    status, body, headers = await api.call("GET", "/v1/audit", scopes="read write search")
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert 'scope="admin"' in headers["WWW-Authenticate"]
    async with api.session.get(f"{api.url}/v1/audit") as response:
        assert response.status == 401
    status, page = await read_audit(api)
    assert status == 200
    [event] = page["items"]
    assert (event["subject"], event["action"], event["outcome"]) == ("alice", "upload", "ok")
    assert page["next_cursor"] is None


async def _history(api: Api) -> None:
    """Five events: alice uploads twice and deletes one; bob uploads; bob's delete of a missing
    document is refused."""
    _, first = await api.upload(unique_markdown())
    await api.upload(unique_markdown())
    await api.call("DELETE", f"/v1/documents/{first['document']['id']}")
    await api.upload(unique_markdown(), subject="bob")
    await api.call("DELETE", f"/v1/documents/{uuid.uuid4()}", subject="bob")


async def test_pages_follow_each_other_newest_first(api: Api) -> None:
    await _history(api)
    seen: list[int] = []
    query = "?limit=2"
    pages = 0
    while True:
        status, page = await read_audit(api, query)
        assert status == 200
        assert len(page["items"]) <= 2
        seen += [event["id"] for event in page["items"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        query = f"?limit=2&cursor={page['next_cursor']}"
    assert pages == 3
    assert seen == sorted(seen, reverse=True)
    assert seen == [r["id"] for r in reversed(await rows(api))]


async def test_filters_narrow_the_trail(api: Api) -> None:
    await _history(api)

    async def matching(query: str) -> list[tuple[str, str, str]]:
        status, page = await read_audit(api, query)
        assert status == 200, page
        return [(e["subject"], e["action"], e["outcome"]) for e in page["items"]]

    assert await matching("?subject=bob") == [("bob", "delete", "refused"), ("bob", "upload", "ok")]
    assert await matching("?owner=alice&action=delete") == [("alice", "delete", "ok")]
    assert await matching("?outcome=refused") == [("bob", "delete", "refused")]
    assert await matching("?action=upload&subject=alice") == [("alice", "upload", "ok")] * 2
    # since is inclusive, until exclusive: move bob's events a day back to tell them apart.
    await api.pool.execute(
        "alter table docpipe.audit_events disable trigger audit_events_append_only"
    )
    await api.pool.execute(
        "update docpipe.audit_events set at = at - interval '1 day' where subject = 'bob'"
    )
    await api.pool.execute(
        "alter table docpipe.audit_events enable trigger audit_events_append_only"
    )
    cut = (datetime.now(UTC) - timedelta(hours=12)).isoformat()
    cut_query = cut.replace("+00:00", "Z")
    assert {s for s, _, _ in await matching(f"?since={cut_query}")} == {"alice"}
    assert {s for s, _, _ in await matching(f"?until={cut_query}")} == {"bob"}
    [bob_first] = await rows(api, subject="bob", action="upload")
    exact = bob_first["at"].isoformat().replace("+00:00", "Z")
    assert ("bob", "upload", "ok") in await matching(f"?since={exact}")
    assert ("bob", "upload", "ok") not in await matching(f"?until={exact}")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?action=purge", "action"),
        ("?outcome=maybe", "outcome"),
        ("?since=yesterday", "since"),
        ("?until=2026-01-01T00:00:00", "until"),  # no offset
        ("?limit=0", "limit"),
        ("?cursor=bm9wZQ", "cursor"),
        ("?cursor=", "cursor"),
        ("?cursor=YXVkaXQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "cursor"),  # audit:999...: no bigint
        ("?subject=", "subject"),
    ],
)
async def test_invalid_filters_are_refused_naming_the_parameter(
    api: Api, query: str, field: str
) -> None:
    status, body = await read_audit(api, query)
    assert (status, body["error"]["field"]) == (422, field)


async def test_extreme_times_are_accepted(api: Api) -> None:
    await api.upload(unique_markdown())
    status, page = await read_audit(api, "?since=0001-01-01T00:00:00%2B05:00")
    assert status == 200
    assert len(page["items"]) == 1
    status, page = await read_audit(api, "?until=9999-12-31T23:59:59-05:00")
    assert status == 200
    assert len(page["items"]) == 1


# -- append-only ---------------------------------------------------------------------------------


async def test_the_table_refuses_update_delete_and_truncate(api: Api) -> None:
    await api.upload(unique_markdown())
    for statement in (
        "update docpipe.audit_events set outcome = 'refused', status = 403",
        "delete from docpipe.audit_events",
        "truncate docpipe.audit_events",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await api.pool.execute(statement)
    assert len(await rows(api)) == 1


async def _in_transaction(conn: asyncpg.pool.PoolConnectionProxy, *statements: str) -> None:
    async with conn.transaction():
        for statement in statements:
            await conn.execute(statement)


async def test_the_table_owner_is_refused_too(api: Api) -> None:
    """Not only the superuser the tests connect as: a role that owns the table (as the API's
    role does when it ran the migrations) is held by the trigger too."""
    role = f"owner_{uuid.uuid4().hex[:8]}"
    await api.upload(unique_markdown())
    async with api.pool.acquire() as conn:
        await conn.execute(f"create role {role}")
        try:
            await conn.execute(f"grant usage on schema docpipe to {role}")
            await conn.execute(f"alter table docpipe.audit_events owner to {role}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await _in_transaction(
                    conn, f"set local role {role}", "delete from docpipe.audit_events"
                )
        finally:
            await conn.execute("alter table docpipe.audit_events owner to current_user")
            await conn.execute(f"revoke usage on schema docpipe from {role}")
            await conn.execute(f"drop role {role}")
    assert len(await rows(api)) == 1


async def test_even_the_retention_setting_cannot_delete_a_recent_row(api: Api) -> None:
    await api.upload(unique_markdown())
    async with api.pool.acquire() as conn:
        cutoff = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await _in_transaction(
                conn,
                f"select set_config('{audit.PURGE_SETTING}', '{cutoff}', true)",
                "delete from docpipe.audit_events",
            )
    assert len(await rows(api)) == 1

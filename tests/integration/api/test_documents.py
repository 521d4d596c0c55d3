"""Uploading, reading, listing and deleting documents and their jobs through the API."""

from __future__ import annotations

import aiohttp
import pytest

from tests.integration.api.conftest import Api, process_pending, unique_markdown

DOCS = "/v1/pipelines/default/documents"


async def test_an_upload_stores_the_document_with_a_queued_job(api: Api) -> None:
    status, body = await api.upload(unique_markdown(), filename="tides.md")
    assert status == 201
    assert body["created"] is True
    document = body["document"]
    assert (document["filename"], document["status"]) == ("tides.md", "pending")
    job = await api.pool.fetchrow(
        "select status, document_id from docpipe.jobs where id = $1", body["job_id"]
    )
    assert job is not None
    assert (job["status"], str(job["document_id"])) == ("queued", document["id"])


async def test_the_same_content_again_returns_the_stored_document_without_a_job(
    api: Api,
) -> None:
    data = unique_markdown()
    _, first = await api.upload(data)
    status, again = await api.upload(data, filename="renamed.md")
    assert status == 200
    assert again["created"] is False
    assert again["job_id"] is None
    assert again["document"]["id"] == first["document"]["id"]
    assert await api.pool.fetchval("select count(*) from docpipe.jobs") == 1


async def test_reprocess_queues_the_stored_document_again(api: Api) -> None:
    data = unique_markdown()
    _, first = await api.upload(data)
    status, again = await api.upload(data, query="?reprocess=true")
    assert status == 200
    assert again["job_id"] not in (None, first["job_id"])
    statuses = await api.pool.fetch("select id, status from docpipe.jobs order by id")
    assert [r["status"] for r in statuses] == ["cancelled", "queued"]


async def test_the_request_id_is_returned_and_stored_as_the_jobs_correlation_id(
    api: Api,
) -> None:
    status, body = await api.upload(unique_markdown(), headers={"X-Request-ID": "trace-123"})
    assert status == 201
    _, job, headers = await api.call("GET", f"/v1/jobs/{body['job_id']}")
    assert job["correlation_id"] == "trace-123"
    assert headers["X-Request-ID"] != "trace-123"  # that request brought none: a new one


async def test_an_unusable_request_id_is_replaced_by_a_generated_one(api: Api) -> None:
    status, _, headers = await api.call("GET", DOCS, headers={"X-Request-ID": "has space"})
    assert status == 200
    assert len(headers["X-Request-ID"]) == 32


async def test_an_upload_over_the_size_limit_gets_413(api: Api) -> None:
    limit = api.running.context.max_upload_bytes
    api.running.context.max_upload_bytes = 2048
    try:
        status, body = await api.upload(b"# big\n\n" + b"word " * 1000)
    finally:
        api.running.context.max_upload_bytes = limit
    assert status == 413
    assert body["error"]["field"] == "file"
    assert await api.pool.fetchval("select count(*) from docpipe.documents") == 0


async def test_an_upload_of_an_unsupported_type_gets_415_naming_the_allowed_types(
    api: Api,
) -> None:
    status, body = await api.upload(b"\x89PNG\r\n", filename="x.png", content_type="image/png")
    assert status == 415
    assert "text/markdown" in body["error"]["message"]


async def test_an_octet_stream_part_is_typed_by_its_file_name(api: Api) -> None:
    status, body = await api.upload(
        unique_markdown(), filename="n.md", content_type="application/octet-stream"
    )
    assert status == 201
    assert body["document"]["content_type"] == "text/markdown"


async def test_an_upload_that_is_not_multipart_gets_415(api: Api) -> None:
    async with api.session.post(
        api.url + DOCS, data=b"# x", headers={**api.auth(), "Content-Type": "text/markdown"}
    ) as response:
        assert response.status == 415


async def test_a_multipart_body_without_a_file_part_or_with_another_part_gets_422(api: Api) -> None:
    form = aiohttp.FormData()
    form.add_field("ignored", "x")
    form.add_field("file", b"# x\n\ny\n", filename="x.md")
    headers = {**api.auth(), "Content-Type": "multipart/form-data; boundary=b"}
    async with api.session.post(api.url + DOCS, data=b"--b--\r\n", headers=headers) as response:
        body = await response.json()
        assert (response.status, body["error"]["field"]) == (422, "file")
    async with api.session.post(api.url + DOCS, data=form, headers=api.auth()) as response:
        body = await response.json()
        assert (response.status, body["error"]["field"]) == (422, "ignored")


async def test_broken_multipart_framing_gets_400(api: Api) -> None:
    headers = {**api.auth(), "Content-Type": "multipart/form-data; boundary=zzz"}
    async with api.session.post(
        api.url + DOCS, data=b"--zzz\r\nnot a header line\r\n\r\n", headers=headers
    ) as response:
        assert response.status in (400, 422)
        assert (await response.json())["error"]["field"] in ("body", "file")


async def test_an_empty_file_gets_422(api: Api) -> None:
    status, body = await api.upload(b"")
    assert (status, body["error"]["field"]) == (422, "file")


async def test_an_unknown_pipeline_gets_404(api: Api) -> None:
    status, body = await api.upload(unique_markdown(), pipeline="nope")
    assert status == 404
    assert "nope" in body["error"]["message"]


async def test_a_file_name_loses_its_path(api: Api) -> None:
    # Written by hand: aiohttp's client would percent-encode the slashes; curl sends them as is.
    body = (
        b"--b\r\n"
        b'Content-Disposition: form-data; name="file"; filename="../../etc/passwd.md"\r\n'
        b"Content-Type: text/markdown\r\n\r\n" + unique_markdown() + b"\r\n--b--\r\n"
    )
    headers = {**api.auth(), "Content-Type": "multipart/form-data; boundary=b"}
    async with api.session.post(api.url + DOCS, data=body, headers=headers) as response:
        assert response.status == 201
        assert (await response.json())["document"]["filename"] == "passwd.md"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/documents/not-a-uuid", "document_id"),
        ("/v1/jobs/abc", "job_id"),
        (DOCS + "?limit=0", "limit"),
        (DOCS + "?limit=x", "limit"),
        (DOCS + "?cursor=bm9wZQ", "cursor"),
    ],
)
async def test_malformed_parameters_get_422_naming_the_parameter(
    api: Api, path: str, field: str
) -> None:
    status, body, _ = await api.call("GET", path)
    assert status == 422
    assert body["error"]["field"] == field


async def test_a_job_id_beyond_bigint_is_simply_not_found(api: Api) -> None:
    status, _, _ = await api.call("GET", f"/v1/jobs/{2**70}")
    assert status == 404


async def test_listing_pages_through_every_document_newest_first(api: Api) -> None:
    ids = []
    for i in range(5):
        _, body = await api.upload(unique_markdown(f"Doc {i}"))
        ids.append(body["document"]["id"])
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await api.call("GET", DOCS + query)
        assert status == 200
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_delete_removes_the_document_its_chunks_and_its_jobs(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    await process_pending(api)
    document_id = body["document"]["id"]
    assert await api.pool.fetchval("select count(*) from docpipe.chunks") > 0
    status, _, _ = await api.call("DELETE", f"/v1/documents/{document_id}")
    assert status == 204
    assert await api.pool.fetchval("select count(*) from docpipe.chunks") == 0
    assert await api.pool.fetchval("select count(*) from docpipe.jobs") == 0
    assert (await api.call("GET", f"/v1/documents/{document_id}"))[0] == 404
    assert (await api.call("GET", f"/v1/jobs/{body['job_id']}"))[0] == 404


async def test_deleting_a_document_being_processed_cancels_its_job_first(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    # A worker holds the job under a lease, as a running ingest does.
    await api.pool.execute(
        "update docpipe.jobs set status = 'running', lease_token = gen_random_uuid(),"
        " lease_expires_at = now() + interval '1 minute' where id = $1",
        body["job_id"],
    )
    status, _, _ = await api.call("DELETE", f"/v1/documents/{body['document']['id']}")
    assert status == 204
    assert await api.pool.fetchval("select count(*) from docpipe.documents") == 0


async def test_a_dead_job_can_be_retried_and_a_queued_one_cannot(api: Api) -> None:
    _, body = await api.upload(unique_markdown())
    job_id = body["job_id"]
    status, refused, _ = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert (status, refused["error"]["code"]) == (409, "conflict")
    await api.pool.execute(
        "update docpipe.jobs set status = 'dead', last_error = 'boom', finished_at = now()"
        " where id = $1",
        job_id,
    )
    _, document, _ = await api.call("GET", f"/v1/documents/{body['document']['id']}")
    assert document["status"] == "failed"
    status, job, _ = await api.call("POST", f"/v1/jobs/{job_id}/retry")
    assert (status, job["status"]) == (200, "queued")
    _, document, _ = await api.call("GET", f"/v1/documents/{body['document']['id']}")
    assert document["status"] == "pending"


async def test_an_unknown_route_and_a_wrong_method_answer_in_json(api: Api) -> None:
    status, body, _ = await api.call("GET", "/v1/nothing")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, headers = await api.call("PUT", "/v1/jobs/1")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    assert "GET" in headers["Allow"]


async def test_a_document_shows_the_revision_and_settings_that_produced_its_chunks(
    api: Api,
) -> None:
    _, body = await api.upload(unique_markdown("Tides", "High water " * 200))
    document_path = f"/v1/documents/{body['document']['id']}"
    _, pending, _ = await api.call("GET", document_path)
    await process_pending(api, revision="r1", settings_digest="0123456789abcdef")
    # Some chunks of an older release that recorded no provenance.
    await api.pool.execute(
        "update docpipe.chunks set revision = null, settings_digest = null"
        " where id = (select min(id) from docpipe.chunks)"
    )

    status, document, _ = await api.call("GET", document_path)

    assert pending["provenance"] == []
    assert status == 200
    chunks = document["chunk_count"]
    assert chunks >= 3
    assert document["provenance"] == [
        {"revision": "r1", "settings_digest": "0123456789abcdef", "chunks": chunks - 1},
        {"revision": None, "settings_digest": None, "chunks": 1},
    ]

"""Owner isolation: a caller sees, deletes and searches only its own documents, and another
owner's document answers exactly like one that does not exist."""

from __future__ import annotations

from tests.integration.api.conftest import Api, process_pending, unique_markdown

SENTENCE = "Lighthouse keepers logged every passing schooner in a leather ledger."


async def alice_document(api: Api) -> dict[str, str]:
    status, body = await api.upload(unique_markdown("Ledger", SENTENCE), subject="alice")
    assert status == 201
    return {"document": body["document"]["id"], "job": str(body["job_id"])}


async def test_another_owners_document_is_404_like_a_missing_one(api: Api) -> None:
    ids = await alice_document(api)
    status, body, _ = await api.call("GET", f"/v1/documents/{ids['document']}", subject="bob")
    missing = await api.call(
        "GET", "/v1/documents/00000000-0000-0000-0000-000000000000", subject="bob"
    )
    assert status == 404
    assert (status, body["error"]["message"]) == (missing[0], missing[1]["error"]["message"])
    assert (await api.call("GET", f"/v1/documents/{ids['document']}"))[0] == 200


async def test_another_owners_job_is_404(api: Api) -> None:
    ids = await alice_document(api)
    assert (await api.call("GET", f"/v1/jobs/{ids['job']}", subject="bob"))[0] == 404
    assert (await api.call("POST", f"/v1/jobs/{ids['job']}/retry", subject="bob"))[0] == 404
    assert (await api.call("GET", f"/v1/jobs/{ids['job']}"))[0] == 200


async def test_listing_shows_only_the_callers_documents(api: Api) -> None:
    await alice_document(api)
    _, bobs = await api.upload(unique_markdown("Bob"), subject="bob")
    _, page, _ = await api.call("GET", "/v1/pipelines/default/documents", subject="bob")
    assert [item["id"] for item in page["items"]] == [bobs["document"]["id"]]


async def test_another_owner_cannot_delete_the_document(api: Api) -> None:
    ids = await alice_document(api)
    status, _, _ = await api.call("DELETE", f"/v1/documents/{ids['document']}", subject="bob")
    assert status == 404
    assert await api.pool.fetchval("select count(*) from docpipe.documents") == 1
    assert await api.pool.fetchval("select status from docpipe.jobs") == "queued"


async def test_the_same_content_from_two_owners_is_two_documents(api: Api) -> None:
    data = unique_markdown()
    _, alices = await api.upload(data, subject="alice")
    status, bobs = await api.upload(data, subject="bob")
    assert status == 201
    assert bobs["document"]["id"] != alices["document"]["id"]


async def test_search_returns_only_the_callers_chunks(api: Api) -> None:
    ids = await alice_document(api)
    await api.upload(unique_markdown("Bob", "Bob keeps bees behind the barn."), subject="bob")
    await process_pending(api)
    query = {"query": SENTENCE, "top_k": 10}
    _, alices, _ = await api.call("POST", "/v1/pipelines/default/search", json=query)
    _, bobs, _ = await api.call("POST", "/v1/pipelines/default/search", json=query, subject="bob")
    assert {hit["document_id"] for hit in alices["hits"]} == {ids["document"]}
    assert ids["document"] not in {hit["document_id"] for hit in bobs["hits"]}
    assert bobs["hits"]  # bob's own chunk, however distant
    filtered = {**query, "document_ids": [ids["document"]]}
    _, none, _ = await api.call(
        "POST", "/v1/pipelines/default/search", json=filtered, subject="bob"
    )
    assert none["hits"] == []

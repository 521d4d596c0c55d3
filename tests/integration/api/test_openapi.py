"""The OpenAPI document: what /openapi.json serves is docs/openapi.json, and a property-based
run of schemathesis against the live API finds no 5xx and no response that breaks the document."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from docpipe_api.app import build_app
from docpipe_api.openapi import openapi_json
from tests.integration.api.conftest import Api, unique_markdown

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"

# Every check runs on every operation, "schema-valid request accepted" (positive_data_acceptance)
# included: the document says what it can (a non-empty file, the document content types as the
# file part's encoding, the cursor's alphabet and length). What it cannot say is allowed here,
# by operation, and nothing else:
# - listDocuments, listAuditEvents: a `cursor` must be one this API returned (an opaque token
#   naming a position); any other string of the cursor's alphabet is schema-valid and refused
#   with 422.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-operation-id = "listDocuments"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422", "429"]

[[operations]]
include-operation-id = "listAuditEvents"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422", "429"]
"""


async def test_the_served_document_is_the_one_in_docs(api: Api) -> None:
    async with api.session.get(f"{api.url}/openapi.json") as response:
        assert response.status == 200
        served = await response.read()
    assert served == DOC.read_bytes(), "regenerate: docpipe api --print-openapi > docs/openapi.json"
    assert served == openapi_json()


async def test_every_route_of_the_app_is_in_the_document(api: Api) -> None:
    document = json.loads(openapi_json())
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in build_app(api.running.context).router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routes == documented


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_or_nonconforming_response(
    api: Api, tmp_path: Path
) -> None:
    # Some real resources so that reads and deletes meet existing ids too.
    for i in range(3):
        await api.upload(unique_markdown(f"Doc {i}"))
    token = api.token(scopes="read write search admin")
    report = tmp_path / "junit.xml"
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", "25",
        "--seed", "1",
        "--workers", "1",
        "--request-timeout", "10",
        "--generation-database", "none",
        "--report", "junit", "--report-junit-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(text)
    assert process.returncode == 0, text[-8000:]
    # It really exercised the API: every operation, hundreds of cases, all passed.
    assert "Tested: 12" in text, text[-3000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", text)
    assert counts is not None, text[-3000:]
    assert int(counts[1]) >= 200
    assert counts[1] == counts[2]

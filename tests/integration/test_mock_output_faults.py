"""Output faults of the mocks over real HTTP: successful, well-formed answers with wrong content,
chosen by a `/_faults/<fault>` base URL or a `fault:<fault>` API key. The official `openai`
client and docpipe's own clients read them as valid answers."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import openai
import pytest

from docpipe_contracts.errors import PermanentError
from docpipe_mocks.embedding import embed_array
from docpipe_mocks.llamaparse import LlamaParseSettings
from docpipe_mocks.server import MockConfig
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.llamaparse import EmptyParseError, LlamaParseClient
from tests.support.mocks import serve

MODEL = "text-embedding-3-small"
TEXTS = ["Harbour seals rest on sandbanks at low tide.", "Volunteers count the seals in August."]
PAGES = ["First page " + "alpha " * 40, "Second page " + "omega " * 40]
KEY = "sk-test"


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with serve(
        "127.0.0.1", 0, MockConfig(llamaparse=LlamaParseSettings(pending_polls=0))
    ) as u:
        yield u


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def embed(
    base_url: str, *, api_key: str = KEY, dimensions: int = 64, float_encoding: bool = False
) -> list[list[float]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    async with client:
        if float_encoding:
            answer = await client.embeddings.create(
                model=MODEL, input=TEXTS, dimensions=dimensions, encoding_format="float"
            )
        else:
            answer = await client.embeddings.create(model=MODEL, input=TEXTS, dimensions=dimensions)
    return [item.embedding for item in answer.data]


# The client asks for base64 unless told (and decodes it); float is the API's own default.
@pytest.mark.parametrize("float_encoding", [False, True])
async def test_the_openai_client_reads_vectors_of_zeros(url: str, float_encoding: bool) -> None:
    vectors = await embed(f"{url}/_faults/zero/v1", float_encoding=float_encoding)

    assert [len(v) for v in vectors] == [64, 64]
    assert all(x == 0.0 for v in vectors for x in v)


async def test_the_same_mock_without_the_prefix_answers_unharmed(url: str) -> None:
    await embed(f"{url}/_faults/zero/v1", dimensions=64)
    vectors = await embed(f"{url}/v1", dimensions=64)

    assert vectors[0] == pytest.approx(embed_array(TEXTS[0], 64).tolist(), abs=1e-6)


async def test_the_openai_client_reads_vectors_of_the_wrong_dimension(url: str) -> None:
    halved = await embed(f"{url}/_faults/wrong_dimensions/v1", dimensions=64)
    chosen = await embed(f"{url}/_faults/wrong_dimensions=10/v1", dimensions=64)

    assert [len(v) for v in halved] == [32, 32]
    assert [len(v) for v in chosen] == [10, 10]


async def test_the_openai_client_reads_another_models_vectors(url: str) -> None:
    right = await embed(f"{url}/v1", dimensions=256)
    other = await embed(f"{url}/_faults/other_model=3/v1", dimensions=256)

    for r, o in zip(right, other, strict=True):
        assert float(np.linalg.norm(o)) == pytest.approx(1.0, abs=1e-5)
        assert abs(float(np.dot(r, o))) < 0.3


async def test_the_openai_client_reads_a_nan_in_each_vector(url: str) -> None:
    vectors = await embed(f"{url}/_faults/nan/v1", dimensions=16)

    assert all(math.isnan(v[0]) for v in vectors)


async def test_an_api_key_names_a_fault_as_well(url: str) -> None:
    vectors = await embed(f"{url}/v1", api_key="fault:zero", dimensions=8)

    assert all(x == 0.0 for v in vectors for x in v)


async def test_an_unknown_fault_is_a_bad_request_that_lists_the_faults(url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await embed(f"{url}/_faults/truncate/v1")

    assert "'truncate' is a fault of the LlamaParse mock" in str(caught.value)
    assert "zero, wrong_dimensions, other_model, nan" in str(caught.value)


async def test_docpipes_embedder_gets_zero_vectors_and_refuses_a_wrong_dimension(
    url: str, session: aiohttp.ClientSession
) -> None:
    zero = OpenAIEmbedder(session, api_key=KEY, base_url=f"{url}/_faults/zero/v1", dimensions=32)
    wrong = OpenAIEmbedder(
        session, api_key=KEY, base_url=f"{url}/_faults/wrong_dimensions/v1", dimensions=32
    )

    assert all(not any(v) for v in await zero.embed(TEXTS))
    with pytest.raises(PermanentError, match="16"):
        await wrong.embed(TEXTS)


def parser(session: aiohttp.ClientSession, base_url: str, api_key: str = KEY) -> LlamaParseClient:
    return LlamaParseClient(session, api_key=api_key, base_url=base_url, poll_interval=0.01)


async def parse(client: LlamaParseClient) -> str:
    document = "\f".join(PAGES).encode()
    return await client.parse(document, filename="pages.txt", content_type="text/plain")


async def test_a_truncated_parse_keeps_the_start_of_each_page(
    url: str, session: aiohttp.ClientSession
) -> None:
    whole = await parse(parser(session, url))
    truncated = await parse(parser(session, f"{url}/_faults/truncate=0.5"))

    assert whole.split("\f") == PAGES
    kept = truncated.split("\f")
    assert [len(k) for k in kept] == [math.ceil(len(p) / 2) for p in PAGES]
    assert all(p.startswith(k) for p, k in zip(PAGES, kept, strict=True))


async def test_an_empty_parse_succeeds_with_no_markdown(
    url: str, session: aiohttp.ClientSession
) -> None:
    base = f"{url}/_faults/empty/api/parsing"
    form = aiohttp.FormData()
    form.add_field("file", "\f".join(PAGES).encode(), filename="pages.txt")
    async with session.post(f"{base}/upload", data=form) as response:
        job = await response.json()
    status = {"status": "PENDING"}
    while status["status"] == "PENDING":  # the extraction runs in a thread of the mock
        async with session.get(f"{base}/job/{job['id']}") as response:
            status = await response.json()
    async with session.get(f"{base}/job/{job['id']}/result/markdown") as response:
        result = await response.json()

    assert status["status"] == "SUCCESS"
    assert result["markdown"] == ""
    with pytest.raises(EmptyParseError, match=r"no text found in 'pages\.txt'"):
        await parse(parser(session, url, api_key="fault:empty"))


async def test_a_parse_fault_of_the_wrong_service_is_refused(
    url: str, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(PermanentError, match="'zero' is a fault of the OpenAI mock"):
        await parse(parser(session, f"{url}/_faults/zero"))

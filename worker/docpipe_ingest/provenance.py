"""Provenance of the output: which worker revision, with which settings, produced a chunk.

Each stored chunk records the worker's revision and a digest of the settings that decide what its
text and vector are (migration 0010), so that a revision's output can be found and redone, and
two workers' output compared, without trusting that a revision name says everything.

What the digest covers: the parser (`local` or `llamaparse`, and LlamaParse's endpoint), the
chunker (maximum and overlap in characters), the embedder (model, dimensions and endpoint).
Endpoints are included because a different server may answer differently under the same names
(another region's deployment, a proxy, a degraded test server): scheme, host, port and path,
never credentials or a query. Settings that change only how fast the output is made (batch
sizes, concurrency, quotas, timeouts, parts of large documents) are left out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal
from urllib.parse import urlsplit

# Bumped when the digest's inputs change meaning, so that an old and a new digest never agree by
# accident.
DIGEST_VERSION = 1
DIGEST_HEX_CHARS = 16


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """The settings that decide a chunk's text and vector."""

    parser: Literal["local", "llamaparse"]
    chunk_max_chars: int
    chunk_overlap_chars: int
    embedding_model: str
    embedding_dimensions: int
    embedding_endpoint: str
    # LlamaParse's endpoint; None for the local parser, whose output depends on no server.
    parser_endpoint: str | None = None


def endpoint(url: str) -> str:
    """`url` as the digest records it: lower-case scheme and host, the port if any, the path
    without a trailing slash; no user, password, query or fragment."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"


def canonical_json(settings: OutputSettings) -> str:
    """The settings as JSON with sorted keys and no spaces: equal settings, equal text."""
    document = {"v": DIGEST_VERSION, **asdict(settings)}
    document["embedding_endpoint"] = endpoint(settings.embedding_endpoint)
    if settings.parser == "local":
        document["parser_endpoint"] = None
    elif settings.parser_endpoint is not None:
        document["parser_endpoint"] = endpoint(settings.parser_endpoint)
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def settings_digest(settings: OutputSettings) -> str:
    """The first 16 hex characters of the sha256 of the settings' canonical JSON."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:DIGEST_HEX_CHARS]


@dataclass(frozen=True, slots=True)
class Provenance:
    """What each chunk a worker stores records about its making."""

    revision: str
    settings_digest: str | None = None

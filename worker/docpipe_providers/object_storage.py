"""Uploaded originals in S3-compatible object storage (`DOCPIPE_ORIGINALS_STORE=s3`).

The database then keeps each document's hash and the key of its object, not its bytes: the intake
API puts the object before it adds the document, the worker's load stage gets it back. A key is
derived from the pipeline, the owner and the content's hash, so an upload of the same content
writes the same object (idempotent, like the document row), and one owner's originals never share
a key with another's. Deleting a document deletes its object through an outbox
(`docpipe_providers.original_purge`).

A small client of the S3 REST API (PUT, GET, HEAD and DELETE object, PUT bucket) signed with AWS
Signature Version 4, over the process's aiohttp session: the worker image needs no AWS SDK.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from docpipe_contracts.errors import PermanentError, TransientError

SERVICE = "s3"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class ObjectStorageConfig:
    """Where originals go: `endpoint_url` (path-style; AWS: https://s3.<region>.amazonaws.com),
    the bucket, a key prefix, the signing region and credentials."""

    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    prefix: str = "originals/"


def original_key(prefix: str, pipeline: str, owner: str, sha256: str) -> str:
    """The object key of a document's original: the owner hashed (owners are free text)."""
    owner_part = hashlib.sha256(owner.encode()).hexdigest()[:32]
    return f"{pipeline_key_prefix(prefix, pipeline)}{owner_part}/{sha256}"


def pipeline_key_prefix(prefix: str, pipeline: str) -> str:
    """What the keys of every original of `pipeline` begin with."""
    return f"{prefix}{pipeline}/"


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class ObjectStore:
    """PUT, GET and DELETE of objects in one bucket."""

    def __init__(
        self, session: aiohttp.ClientSession, config: ObjectStorageConfig, *, timeout_s: float = 60
    ) -> None:
        self._session = session
        self.config = config
        parts = urlsplit(config.endpoint_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"S3 endpoint URL must be http(s)://host[:port], got {config.endpoint_url!r}"
            )
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._path = parts.path.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def key_for(self, pipeline: str, owner: str, sha256: str) -> str:
        """The key a document's original is stored under."""
        return original_key(self.config.prefix, pipeline, owner, sha256)

    async def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (replacing an object of the same key)."""
        await self._request("PUT", key, data)

    async def get(self, key: str) -> bytes:
        """The bytes stored under `key`; PermanentError when there is no such object."""
        return await self._request("GET", key)

    async def delete(self, key: str, *, timeout_s: float | None = None) -> None:
        """Remove the object under `key`; an object already gone is fine (S3 answers 204 either
        way, some stores 404). A missing bucket is an error: the object may be in the bucket
        that should have been named. `timeout_s` overrides the store's timeout for this request."""
        try:
            await self._request("DELETE", key, ok_statuses=(200, 204), timeout_s=timeout_s)
        except PermanentError as exc:
            if exc.status != 404 or "NoSuchBucket" in str(exc):
                raise

    async def create_bucket(self) -> None:
        """Create the bucket (a bucket this account already owns is fine)."""
        await self._request("PUT", None, b"", ok_statuses=(200, 409))

    async def _request(
        self,
        method: str,
        key: str | None,
        body: bytes = b"",
        ok_statuses: tuple[int, ...] = (200,),
        *,
        timeout_s: float | None = None,
    ) -> bytes:
        path = f"{self._path}/{self.config.bucket}" + (f"/{key}" if key is not None else "")
        canonical_path = quote(path, safe="/-_.~")
        headers = self._signed_headers(method, canonical_path, body)
        what = f"{SERVICE} {method} {self.config.bucket}/{key or ''}"
        try:
            async with self._session.request(
                method,
                # Already quoted: sent as signed, never quoted again.
                URL(f"{self._origin}{canonical_path}", encoded=True),
                data=body if method == "PUT" else None,
                headers=headers,
                timeout=(
                    self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
                ),
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from None
        if status in ok_statuses:
            return payload
        detail = payload[:300].decode(errors="replace")
        if status == 429 or status >= 500:
            raise TransientError(f"{what}: HTTP {status}: {detail}")
        raise PermanentError(f"{what}: HTTP {status}: {detail}", status=status)

    def _signed_headers(self, method: str, canonical_path: str, body: bytes) -> dict[str, str]:
        cfg = self.config
        now = dt.datetime.now(dt.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        payload_hash = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = "\n".join(
            [
                method,
                canonical_path,
                "",
                f"host:{self._host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n",
                signed,
                payload_hash,
            ]
        )
        scope = f"{day}/{cfg.region}/{SERVICE}/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = _sign(f"AWS4{cfg.secret_access_key}".encode(), day)
        for part in (cfg.region, SERVICE, "aws4_request"):
            key = _sign(key, part)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Host": self._host,
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={cfg.access_key_id}/{scope}, "
                f"SignedHeaders={signed}, Signature={signature}"
            ),
        }


def storage_config(
    store: str,
    *,
    endpoint_url: str | None,
    bucket: str | None,
    region: str,
    prefix: str,
    access_key_id: str | None,
    secret_access_key: str | None,
) -> ObjectStorageConfig | None:
    """The object storage the settings ask for (None: originals stay in the database); a
    missing or bad value raises ValueError naming the variable (the worker and the intake API
    read the same variables)."""
    if store != "s3":
        return None
    missing = [
        name
        for name, value in (
            ("DOCPIPE_S3_BUCKET", bucket),
            ("AWS_ACCESS_KEY_ID", access_key_id),
            ("AWS_SECRET_ACCESS_KEY", secret_access_key),
        )
        if not value
    ]
    if missing:
        raise ValueError(f"DOCPIPE_ORIGINALS_STORE=s3 needs {', '.join(missing)}")
    endpoint = endpoint_url or f"https://s3.{region}.amazonaws.com"
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"DOCPIPE_S3_ENDPOINT_URL must start with http:// or https://, got {endpoint!r}"
        )
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return ObjectStorageConfig(
        endpoint, bucket or "", access_key_id or "", secret_access_key or "", region, prefix
    )

"""Configuration of `docpipe api` from environment variables, validated before anything starts.

The embedding settings share their names with the worker's (OPENAI_BASE_URL,
DOCPIPE_EMBEDDING_MODEL, ...) so that one set of variables configures both: a search must embed
its query with the model that embedded the chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from docpipe_api.auth import (
    DEVELOPMENT_SECRET,
    KEY_CHECK_S,
    KEY_OVERLAP_S,
    MIN_SECRET_BYTES,
    KeyConfigError,
    KeyFile,
    VerificationKeys,
    jwks_file_keys,
    public_key_file_keys,
    secret_file_keys,
    secret_keys,
)
from docpipe_api.ratelimit import OwnerLimits, OwnerQuotas
from docpipe_contracts.configuration import PIPELINE_NAME, SettingsError
from docpipe_providers.embeddings import OPENAI_DEFAULT_URL
from docpipe_providers.object_storage import ObjectStorageConfig, storage_config
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_DIMENSIONS

_PIPELINE = re.compile(PIPELINE_NAME)


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class ApiSettings(BaseSettings):
    """`docpipe api`: where to listen, which pipelines, how tokens are checked, the limits."""

    model_config = SettingsConfigDict(
        env_prefix="DOCPIPE_API_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    # Comma-separated; uploads and searches name one of these.
    pipelines: str = "default"

    # Development mode accepts the well-known development secret (and uses it when no key is
    # configured). Never in production: anybody can mint tokens for it.
    dev_mode: bool = False
    jwt_secret: SecretStr | None = None
    # The HS256 secret in a file (a mounted Secret), which, like the two key files below, is read
    # again when it changes: a rotated key takes effect without a restart (docs/api.md).
    jwt_secret_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    # How often a key file is looked at for a change (and at once, at most once a second, when a
    # token's signature does not verify), and how long the keys it replaced are still accepted.
    jwt_key_check_seconds: float = Field(KEY_CHECK_S, gt=0, le=300)
    jwt_key_overlap_seconds: float = Field(KEY_OVERLAP_S, ge=0, le=3600)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: float = Field(30.0, ge=0, le=600)
    # A token that verified is not checked again for this long (never beyond its `exp`); 0: every
    # request's token is checked in full.
    jwt_cache_seconds: float = Field(300.0, ge=0, le=3600)

    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024, le=2**31)
    rate_limit_per_second: float = Field(50.0, gt=0, le=1_000_000)
    rate_limit_burst: int = Field(100, ge=1, le=1_000_000)
    max_attempts: int = Field(5, ge=1, le=100)
    # Per-owner limits (the token's subject), 0: none. Storage counts every pipeline's documents;
    # uploads over the rate get 429 with Retry-After, over a storage limit 403 (docs/api.md).
    owner_max_documents: int = Field(1_000_000, ge=0)
    owner_max_bytes: int = Field(100 * 1024**3, ge=0)
    owner_uploads_per_minute: float = Field(6000.0, ge=0, le=60_000_000)
    # Overrides per owner, JSON: {"owner": {"max_documents": 10, "max_bytes": 0,
    # "uploads_per_minute": 60}, ...}; a key left out takes the default, 0 means no limit.
    owner_limits: str = ""
    # Candidates the HNSW index scans per search before the owner filter: more is better recall
    # (and better odds for owners with few of the chunks) at a cost in CPU per search that grows
    # about linearly with it; pgvector's default is 40. docs/benchmarks.md "Intake API" measures
    # recall and load at 40, 64 and 100.
    search_ef_search: int = Field(64, ge=10, le=1000)
    # Database connections of one API process. Beyond the cores Postgres has, more connections only
    # queue the same work inside Postgres instead of in the pool.
    pool_size: int = Field(20, ge=1, le=1000)
    # Embedding requests one API process has under way at once; the queries of searches that
    # arrive while all are out wait and go together in the next request (one request per search
    # would make the search rate the embeddings API's request rate).
    embedding_requests: int = Field(4, ge=1, le=256)
    # uvloop runs the same server with less CPU per request; `asyncio` switches it off.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    openai_base_url: str = Field(OPENAI_DEFAULT_URL, validation_alias=_env("OPENAI_BASE_URL"))
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    embedding_model: str = Field(
        "text-embedding-3-small", validation_alias=_env("DOCPIPE_EMBEDDING_MODEL")
    )
    embedding_dimensions: int = Field(
        DEFAULT_EMBEDDING_DIMENSIONS,
        ge=1,
        le=MAX_EMBEDDING_DIMENSIONS,
        validation_alias=_env("DOCPIPE_EMBEDDING_DIMENSIONS"),
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, le=600, validation_alias=_env("DOCPIPE_REQUEST_TIMEOUT_SECONDS")
    )

    # Cost accounting: the document detail's usage is costed at these prices (shared with
    # `docpipe usage`); unset, no cost is shown.
    price_per_million_tokens: float | None = Field(
        None, ge=0, allow_inf_nan=False, validation_alias=_env("DOCPIPE_PRICE_PER_MILLION_TOKENS")
    )
    price_per_thousand_pages: float | None = Field(
        None, ge=0, allow_inf_nan=False, validation_alias=_env("DOCPIPE_PRICE_PER_THOUSAND_PAGES")
    )

    # Where uploaded originals are kept: the same variables as the worker's (docs/configuration.md).
    originals_store: Literal["database", "s3"] = Field(
        "database", validation_alias=_env("DOCPIPE_ORIGINALS_STORE")
    )
    s3_endpoint_url: str | None = Field(None, validation_alias=_env("DOCPIPE_S3_ENDPOINT_URL"))
    s3_bucket: str | None = Field(None, validation_alias=_env("DOCPIPE_S3_BUCKET"))
    s3_region: str = Field("us-east-1", validation_alias=_env("DOCPIPE_S3_REGION"))
    s3_prefix: str = Field("originals/", validation_alias=_env("DOCPIPE_S3_PREFIX"))
    aws_access_key_id: SecretStr | None = Field(None, validation_alias=_env("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("AWS_SECRET_ACCESS_KEY")
    )

    log_format: Literal["json", "text"] = Field("json", validation_alias=_env("DOCPIPE_LOG_FORMAT"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env("DOCPIPE_LOG_LEVEL")
    )

    @field_validator("pipelines")
    @classmethod
    def _pipeline_names(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        bad = [name for name in names if not _PIPELINE.match(name)]
        if not names or bad:
            raise ValueError(
                "must be a comma-separated list of pipeline names (lower-case letters, digits "
                f"and '-', at most 63 characters){'; bad: ' + ', '.join(bad) if bad else ''}"
            )
        return ",".join(names)

    def object_storage(self) -> ObjectStorageConfig | None:
        """Where uploaded originals go (None: into the database)."""
        return storage_config(
            self.originals_store,
            endpoint_url=self.s3_endpoint_url,
            bucket=self.s3_bucket,
            region=self.s3_region,
            prefix=self.s3_prefix,
            access_key_id=(
                self.aws_access_key_id.get_secret_value() if self.aws_access_key_id else None
            ),
            secret_access_key=(
                self.aws_secret_access_key.get_secret_value()
                if self.aws_secret_access_key
                else None
            ),
        )

    @model_validator(mode="after")
    def _consistent(self) -> ApiSettings:
        self.object_storage()
        sources = [
            name
            for name, value in (
                ("DOCPIPE_API_JWT_SECRET", self.jwt_secret),
                ("DOCPIPE_API_JWT_SECRET_FILE", self.jwt_secret_file),
                ("DOCPIPE_API_JWT_PUBLIC_KEY_FILE", self.jwt_public_key_file),
                ("DOCPIPE_API_JWT_JWKS_FILE", self.jwt_jwks_file),
            )
            if value is not None
        ]
        if len(sources) > 1:
            raise ValueError(f"set only one of {', '.join(sources)}")
        if not sources and not self.dev_mode:
            raise ValueError(
                "no token verification key: set DOCPIPE_API_JWT_SECRET (HS256, at least "
                f"{MIN_SECRET_BYTES} bytes) or DOCPIPE_API_JWT_SECRET_FILE, "
                "DOCPIPE_API_JWT_PUBLIC_KEY_FILE or "
                "DOCPIPE_API_JWT_JWKS_FILE (RS256); or DOCPIPE_API_DEV_MODE=true for the "
                "development secret"
            )
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else None
        if secret == DEVELOPMENT_SECRET and not self.dev_mode:
            raise ValueError(
                "DOCPIPE_API_JWT_SECRET is the public development secret, which anybody can sign "
                "tokens with: set a secret of your own, or DOCPIPE_API_DEV_MODE=true on a "
                "development machine"
            )
        if self.openai_base_url.rstrip("/") == OPENAI_DEFAULT_URL and self.openai_api_key is None:
            raise ValueError(
                "OPENAI_API_KEY is required for the OpenAI API (searches embed their query); "
                "or point OPENAI_BASE_URL at a compatible server, such as `docpipe mocks`"
            )
        return self

    @field_validator("owner_limits")
    @classmethod
    def _owner_limits_json(cls, value: str) -> str:
        _parse_owner_overrides(value)
        return value

    def owner_quotas(self) -> OwnerQuotas:
        """The per-owner limits: the defaults and the overrides of DOCPIPE_API_OWNER_LIMITS."""
        default = OwnerLimits(
            max_documents=self.owner_max_documents or None,
            max_bytes=self.owner_max_bytes or None,
            uploads_per_minute=self.owner_uploads_per_minute or None,
        )
        overrides = {
            owner: OwnerLimits(
                max_documents=_or_default(o.max_documents, default.max_documents),
                max_bytes=_or_default(o.max_bytes, default.max_bytes),
                uploads_per_minute=_or_default(o.uploads_per_minute, default.uploads_per_minute),
            )
            for owner, o in _parse_owner_overrides(self.owner_limits).items()
        }
        return OwnerQuotas(default, overrides)

    @property
    def pipeline_names(self) -> frozenset[str]:
        return frozenset(self.pipelines.split(","))

    def verification_keys(self) -> VerificationKeys | KeyFile:
        """The keys tokens are checked with: from a key file, a KeyFile that follows the file's
        changes; SettingsError when a key file is unusable."""
        try:
            if self.jwt_secret_file is not None:
                dev_mode = self.dev_mode
                return self._key_file(
                    self.jwt_secret_file,
                    lambda path: secret_file_keys(path, allow_development_secret=dev_mode),
                )
            if self.jwt_public_key_file is not None:
                return self._key_file(self.jwt_public_key_file, public_key_file_keys)
            if self.jwt_jwks_file is not None:
                return self._key_file(self.jwt_jwks_file, jwks_file_keys)
            if self.jwt_secret is not None:
                return secret_keys(self.jwt_secret.get_secret_value())
            return secret_keys(DEVELOPMENT_SECRET)
        except KeyConfigError as exc:
            raise SettingsError(f"invalid configuration:\n  {exc}") from None

    def _key_file(self, path: Path, load: Callable[[Path], VerificationKeys]) -> KeyFile:
        return KeyFile(
            path,
            load,
            check_s=self.jwt_key_check_seconds,
            overlap_s=self.jwt_key_overlap_seconds,
        )


class _OwnerOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_documents: int | None = Field(None, ge=0)
    max_bytes: int | None = Field(None, ge=0)
    uploads_per_minute: float | None = Field(None, ge=0, le=60_000_000)


_OVERRIDES = TypeAdapter(dict[str, _OwnerOverride])


def _parse_owner_overrides(value: str) -> dict[str, _OwnerOverride]:
    if not value.strip():
        return {}
    try:
        return _OVERRIDES.validate_json(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            "must be a JSON object of owner to limits, e.g. "
            '{"alice": {"max_documents": 10, "max_bytes": 0, "uploads_per_minute": 60}}'
            f" ({where}: {first['msg']})"
        ) from None


_T = TypeVar("_T", int, float)


def _or_default(value: _T | None, default: _T | None) -> _T | None:
    """An override's value: left out, the default; 0, no limit."""
    if value is None:
        return default
    return value or None

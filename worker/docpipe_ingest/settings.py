"""Configuration from environment variables, validated before anything starts.

A bad value names the variable, what is allowed and what was given, and the process exits
non-zero without touching the database or the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from docpipe_contracts.configuration import PIPELINE_NAME
from docpipe_providers.embeddings import OPENAI_DEFAULT_URL
from docpipe_providers.llamaparse import LLAMAPARSE_DEFAULT_URL
from docpipe_providers.object_storage import ObjectStorageConfig, storage_config
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_DIMENSIONS


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class WorkerSettings(BaseSettings):
    """`docpipe worker`: which pipeline, how much at once, which services, where to report."""

    model_config = SettingsConfigDict(env_prefix="DOCPIPE_", extra="ignore", frozen=True)

    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    pipeline: str = Field("default", pattern=PIPELINE_NAME)
    revision: str = Field("dev", min_length=1, max_length=63)
    concurrency: int = Field(8, ge=1, le=1024)
    lease_seconds: float = Field(60.0, ge=1, le=3600)
    poll_interval_seconds: float = Field(2.0, gt=0, le=300)
    shutdown_grace_seconds: float = Field(25.0, ge=0, le=3600)
    # Set by the operator on canary workers: see ConsumerConfig.count_failures/canary_weight.
    canary: bool = False
    canary_weight: float | None = Field(None, gt=0, le=1)

    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9000, ge=0, le=65535)

    parser: Literal["local", "llamaparse"] = "local"
    llamaparse_base_url: str = Field(
        LLAMAPARSE_DEFAULT_URL, validation_alias=_env("LLAMAPARSE_BASE_URL")
    )
    llamaparse_poll_seconds: float = Field(1.0, gt=0, le=60)
    llama_cloud_api_key: SecretStr | None = Field(
        None, validation_alias=_env("LLAMA_CLOUD_API_KEY")
    )
    openai_base_url: str = Field(OPENAI_DEFAULT_URL, validation_alias=_env("OPENAI_BASE_URL"))
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = Field(
        DEFAULT_EMBEDDING_DIMENSIONS, ge=1, le=MAX_EMBEDDING_DIMENSIONS
    )
    embedding_batch_size: int = Field(256, ge=1, le=2048)
    # Embedding requests in flight at once across the worker's jobs (default: its concurrency).
    embedding_concurrency: int | None = Field(None, ge=1, le=1024)
    request_timeout_seconds: float = Field(30.0, gt=0, le=600)
    # Cross-document batching (docpipe_providers.batching): the chunks of the jobs in flight share
    # embeddings requests, gathered for up to the window, up to the batch size and the tokens per
    # request. false: one request (or more) per document, as before (kept to measure against).
    embedding_shared_requests: bool = True
    embedding_batch_window_ms: float = Field(200.0, ge=0, le=1000)
    embedding_batch_tokens: int = Field(240_000, ge=1, le=300_000)
    # Chunk stores in flight at once per worker. HNSW inserts wait on each other's index pages
    # more than on the CPU: more writers store more per second (ADR 0007 has the measurements).
    store_concurrency: int = Field(8, ge=1, le=64)
    # The golden set (docpipe_ingest.golden): its directory, how often it is run, the questions'
    # k; on a canary, the stable revision it is compared with (all set by the operator).
    golden_dir: Path | None = None
    golden_interval_seconds: float = Field(10.0, gt=0, le=3600)
    golden_k: int = Field(5, ge=1, le=100)
    stable_revision: str | None = Field(None, min_length=1, max_length=63)

    # Provider quotas (ADR 0005). Unset: learned from the provider's headers (OpenAI), else none.
    openai_requests_per_minute: int | None = Field(None, ge=1)
    openai_tokens_per_minute: int | None = Field(None, ge=1)
    llamaparse_uploads_per_minute: int | None = Field(None, ge=1)
    # shared: one budget per provider key and model for the whole fleet, kept in the worker's
    # database; local: each worker limits only itself (a single worker, or a quota of its own);
    # off: no budget, and a 429 is a failed attempt of the job, as before quotas existed (kept only
    # to measure against: bench/quota.py).
    quota_mode: Literal["shared", "local", "off"] = "shared"
    # How long the provider's work waits between tries while it answers insufficient_quota.
    quota_hold_seconds: float = Field(30.0, gt=0, le=3600)

    # Where uploaded originals are kept (docpipe_providers.object_storage): database (the
    # default: embedded in Postgres) or s3 (S3-compatible storage; the database keeps the hash
    # and the object key). The intake API reads the same variables.
    originals_store: Literal["database", "s3"] = "database"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = "originals/"
    aws_access_key_id: SecretStr | None = Field(None, validation_alias=_env("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("AWS_SECRET_ACCESS_KEY")
    )
    # With s3: how often the worker sweeps its pipeline's deleted documents' originals still in
    # the bucket (docpipe_providers.original_purge).
    original_deletion_sweep_seconds: float = Field(30.0, gt=0, le=3600)

    # Parsing in isolation (docpipe_ingest.isolation): child processes (unset: one per core),
    # and what one document, or one part of a large one, may use of its child.
    parse_processes: int | None = Field(None, ge=1, le=256)
    parse_cpu_seconds: float = Field(60.0, gt=0, le=3600)
    parse_wall_seconds: float = Field(300.0, gt=0, le=86400)
    parse_memory_mb: int = Field(1024, ge=128, le=1_048_576)
    # Documents above this size are processed in parts whose progress is kept.
    large_document_bytes: int = Field(2_097_152, ge=1024)
    part_pages: int = Field(100, ge=1, le=100_000)
    part_chunks: int = Field(500, ge=1, le=100_000)
    # A job in parts hands its slot back between parts after this long holding it (0: never).
    part_slice_seconds: float = Field(20.0, ge=0, le=86400)

    chunk_max_chars: int = Field(1500, ge=100, le=100_000)
    chunk_overlap_chars: int = Field(200, ge=0)

    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.chunk_overlap_chars * 2 >= self.chunk_max_chars:
            raise ValueError(
                "DOCPIPE_CHUNK_OVERLAP_CHARS must be less than half of DOCPIPE_CHUNK_MAX_CHARS "
                f"({self.chunk_max_chars}), got {self.chunk_overlap_chars}"
            )
        self.object_storage()
        if self.parser == "llamaparse" and self.llama_cloud_api_key is None:
            raise ValueError("DOCPIPE_PARSER=llamaparse needs LLAMA_CLOUD_API_KEY")
        if self.openai_base_url.rstrip("/") == OPENAI_DEFAULT_URL and self.openai_api_key is None:
            raise ValueError(
                "OPENAI_API_KEY is required for the OpenAI API "
                "(or point OPENAI_BASE_URL at a compatible server, such as `docpipe mocks`)"
            )
        return self

    def object_storage(self) -> ObjectStorageConfig | None:
        """Where originals are read from (None: the database)."""
        return storage_config(
            self.originals_store,
            endpoint_url=self.s3_endpoint_url,
            bucket=self.s3_bucket,
            region=self.s3_region,
            prefix=self.s3_prefix,
            access_key_id=_plain(self.aws_access_key_id),
            secret_access_key=_plain(self.aws_secret_access_key),
        )


def _plain(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None

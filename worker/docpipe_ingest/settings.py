"""Configuration from environment variables, validated before anything starts.

A bad value names the variable, what is allowed and what was given, and the process exits
non-zero without touching the database or the network.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from docpipe_contracts.configuration import PIPELINE_NAME
from docpipe_providers.embeddings import OPENAI_DEFAULT_URL
from docpipe_providers.llamaparse import LLAMAPARSE_DEFAULT_URL
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
    # Set by the operator on canary workers: see ConsumerConfig.count_failures/failure_hold_s.
    canary: bool = False
    failure_hold_seconds: float = Field(0.0, ge=0, le=3600)

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
    # Chunk stores in flight at once per worker: HNSW inserts contend for the index's pages.
    store_concurrency: int = Field(2, ge=1, le=64)

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
        if self.parser == "llamaparse" and self.llama_cloud_api_key is None:
            raise ValueError("DOCPIPE_PARSER=llamaparse needs LLAMA_CLOUD_API_KEY")
        if self.openai_base_url.rstrip("/") == OPENAI_DEFAULT_URL and self.openai_api_key is None:
            raise ValueError(
                "OPENAI_API_KEY is required for the OpenAI API "
                "(or point OPENAI_BASE_URL at a compatible server, such as `docpipe mocks`)"
            )
        return self

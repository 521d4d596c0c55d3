"""The embedded PostgreSQL (pgserver: PostgreSQL 16 + pgvector) used when no DATABASE_URL is set."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """Where the embedded database keeps its data: $DOCPIPE_HOME, else $XDG_DATA_HOME/docpipe."""
    home = os.environ.get("DOCPIPE_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "docpipe"


def start_embedded_postgres(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server whose data lives under `data_dir`; return its URL.

    The server keeps running while any process that started or joined it is alive, so data
    survives restarts of docpipe and several docpipe processes can share one server.
    """
    pgdata = (data_dir or default_data_dir()) / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded postgres", extra={"pgdata": str(pgdata)})
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp,
        # which is what we want anyway.
        warnings.simplefilter("ignore")
        # Imported here: it is heavy and unused when DATABASE_URL is set.
        from pgserver.postgres_server import get_server

        server = get_server(pgdata, cleanup_mode="stop")
    return str(server.get_uri())

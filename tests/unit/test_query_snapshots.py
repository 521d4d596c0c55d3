"""Each SQL statement of the queue is snapshotted: a change to a query shows up in review as a
change to tests/unit/snapshots/queries.sql. Regenerate with DOCPIPE_UPDATE_SNAPSHOTS=1."""

from __future__ import annotations

import os
from pathlib import Path

from docpipe_queue import original_deletions, queries, statistics

SNAPSHOT = Path(__file__).with_name("snapshots") / "queries.sql"


def render_queries() -> str:
    parts = []
    statements = {**vars(statistics), **vars(queries), **vars(original_deletions)}
    for name in sorted(statements):
        value = statements[name]
        if name.isupper() and isinstance(value, str) and name != "NOTIFY_CHANNEL":
            body = "\n".join(line.rstrip() for line in value.strip().splitlines())
            parts.append(f"-- {name}\n{body};\n")
    return "\n".join(parts)


def test_queue_queries_match_their_snapshot() -> None:
    rendered = render_queries()
    if os.environ.get("DOCPIPE_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(rendered)
    assert SNAPSHOT.exists(), (
        f"no snapshot: run with DOCPIPE_UPDATE_SNAPSHOTS=1 to write {SNAPSHOT}"
    )
    assert rendered == SNAPSHOT.read_text(), (
        "a queue query changed: review the diff, then run "
        "DOCPIPE_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_query_snapshots.py"
    )

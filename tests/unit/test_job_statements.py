"""One module owns every statement that changes a job: SQL that inserts into, updates, deletes
from (or merges into, truncates) docpipe.jobs may appear in the Python source of worker/, api/,
operator/ and mocks/ only in docpipe_queue/queries.py, where the query snapshot covers it.

The scan reads each module's string literals (f-strings with their placeholders as `{}`), so a
statement split over adjacent literals is seen whole; comments and docstrings are not SQL."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("worker", "api", "operator", "mocks")
OWNER = ROOT / "worker" / "docpipe_queue" / "queries.py"

_JOBS = r'"?docpipe"?\s*\.\s*"?jobs"?(?![\w.])'
JOB_CHANGE = re.compile(
    rf"\b(?:insert\s+into|update(?:\s+only)?|delete\s+from(?:\s+only)?|merge\s+into"
    rf"|truncate(?:\s+table)?(?:\s+only)?)\s+{_JOBS}",
    re.IGNORECASE,
)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string literal of a module, docstrings left out."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    in_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    in_fstrings.add(id(value))
                    parts.append(value.value)
                else:
                    parts.append("{}")
            found.append((node.lineno, "".join(parts)))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and id(node) not in in_fstrings
        ):
            found.append((node.lineno, node.value))
    return found


def job_changes(source: str) -> list[tuple[int, str]]:
    """(line, statement's opening) of each literal in `source` that changes docpipe.jobs."""
    hits = []
    for line, text in _literals(source):
        match = JOB_CHANGE.search(text)
        if match is not None:
            hits.append((line, " ".join(match.group(0).split())))
    return hits


def scanned_modules() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


def test_only_the_queue_queries_change_jobs() -> None:
    found = []
    for path in scanned_modules():
        if path == OWNER:
            continue
        for line, statement in job_changes(path.read_text()):
            found.append(f"{path.relative_to(ROOT)}:{line}: {statement}")
    assert not found, (
        "statements that change docpipe.jobs belong in worker/docpipe_queue/queries.py "
        "(a named constant, covered by the query snapshot):\n" + "\n".join(found)
    )


def test_the_scan_sees_the_queue_queries() -> None:
    # The scan must cover the owner's folder and recognise its statements, or the test above
    # passes by seeing nothing.
    assert OWNER in scanned_modules()
    statements = {s.split()[0].lower() for _, s in job_changes(OWNER.read_text())}
    assert statements == {"insert", "update", "delete"}


@pytest.mark.parametrize(
    "source",
    [
        'Q = """\nupdate docpipe.jobs\nset status = $1\n"""',
        'Q = "insert into docpipe.jobs (pipeline) values ($1)"',
        'Q = "DELETE FROM docpipe.jobs WHERE id = $1"',
        'Q = "delete from only docpipe.jobs where id = $1"',
        'Q = "with c as (update docpipe.jobs set x = 1 returning id) select id from c"',
        'Q = "update " "docpipe.jobs set x = 1"',
        'Q = f"update docpipe.jobs set status = {STATUS!r}"',
        'Q = "update \\"docpipe\\".\\"jobs\\" set x = 1"',
        'Q = "truncate docpipe.jobs"',
        'Q = "merge into docpipe.jobs j using s on s.id = j.id when matched then delete"',
        "def f(conn):\n    return conn.execute('update docpipe.jobs set x = 1')",
    ],
)
def test_a_statement_that_changes_jobs_is_found(source: str) -> None:
    assert job_changes(source)


@pytest.mark.parametrize(
    "source",
    [
        'Q = "select id from docpipe.jobs where status = $1"',
        'Q = "update docpipe.documents set status = $1"',
        'Q = "select id from docpipe.jobs for update skip locked"',
        'Q = "insert into docpipe.jobs_archive (id) values ($1)"',
        '"""Every statement that changes a job: update docpipe.jobs is in queries.py."""',
        "# update docpipe.jobs set x = 1\nQ = 1",
    ],
)
def test_reads_other_tables_docstrings_and_comments_are_not_changes(source: str) -> None:
    assert not job_changes(source)

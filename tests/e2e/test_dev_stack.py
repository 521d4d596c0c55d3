"""`docpipe dev`, the one-command local run, as a user runs it: ingest, restart, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "docpipe_cli.main", "dev", "--workers", "1"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "queue.md").write_text(
        "# Leases\n\nA worker renews the lease of each job it holds.\n"
    )
    (folder / "notes.txt").write_text("Workers drain in-flight jobs before they exit.\n")
    (folder / "page.html").write_text("<h1>Search</h1><p>Chunks are embedded and indexed.</p>")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n")  # not a document type: skipped
    return folder


def run_dev(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_dev_ingests_and_its_data_survives_a_restart(tmp_path: Path, corpus: Path) -> None:
    data = tmp_path / "data"
    first = run_dev("--data-dir", str(data), "--ingest", str(corpus), "--once")
    assert first.returncode == 0, first.stderr
    assert "3 processed, 0 failed, 0 unchanged, 1 skipped" in first.stderr

    again = run_dev("--data-dir", str(data), "--ingest", str(corpus), "--once")
    assert again.returncode == 0, again.stderr
    assert "0 processed, 0 failed, 3 unchanged, 1 skipped" in again.stderr


def test_ctrl_c_stops_every_process_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [*COMMAND, "--data-dir", str(tmp_path / "data")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 180
    for line in proc.stderr:
        lines.append(line)
        if "press Ctrl-C" in line or time.monotonic() > deadline:
            break
    assert any("press Ctrl-C" in line for line in lines), "".join(lines)
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) >= 3, children  # a worker, the mocks, the API
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, rest
    assert "stopped" in rest
    # The workers, the mocks and the API it started are gone with it.
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, alive


REPOSITORY = Path(__file__).resolve().parents[2]


def test_make_devs_corpus_answers_the_readme_question_with_the_default_token(
    tmp_path: Path,
) -> None:
    # What `make dev` runs, then the next steps it prints: the token `docpipe token` signs by
    # default must see what dev ingested, and the README's question must find the page that
    # answers it (the SIGTERM drain in docs/operations.md).
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("DATABASE_URL", None)
    ingest = [str(REPOSITORY / "docs"), str(REPOSITORY / "README.md")]
    proc = subprocess.Popen(
        [*COMMAND, "--data-dir", str(tmp_path / "data"), "--ingest", *ingest],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "press Ctrl-C" in output, output
        assert " 0 failed" in output, output
        url = output.split("DOCPIPE_API_URL=", 1)[1].split()[0]
        cli = [sys.executable, "-m", "docpipe_cli.main"]
        token = subprocess.run(
            [*cli, "token"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        search = subprocess.run(
            [*cli, "search", "how does a worker drain on SIGTERM?", "--json", "--top-k", "3"],
            env={**env, "DOCPIPE_API_URL": url, "DOCPIPE_API_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        hits = json.loads(search.stdout)["hits"]
        answers = [
            hit
            for hit in hits
            if hit["filename"] == "operations.md" and "SIGTERM" in hit["content"]
        ]
        assert answers, [(hit["filename"], hit["content"][:80]) for hit in hits]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)

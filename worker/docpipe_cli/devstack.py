"""`docpipe dev`: the whole system on one machine with nothing to configure: the embedded
Postgres, the mock LlamaParse/OpenAI services and a few workers, each a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from rich.console import Console

from docpipe_cli.ingest import ingest_paths, print_report
from docpipe_queue.database import create_pool, resolve_database_url
from docpipe_queue.embedded import default_data_dir
from docpipe_queue.migrator import migrate

# The owner `docpipe dev` ingests as: the subject `docpipe token` signs for by default, so that
# what `make dev` ingests is what `docpipe search` with that token finds.
DEV_OWNER = "dev"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the child that gets it binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class DevStack:
    """The processes of a running `docpipe dev` and where to reach them."""

    database_url: str
    data_dir: Path
    mocks_url: str
    worker_ports: list[int]
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    log_dir: Path = Path()
    api_url: str = ""

    def worker_env(self, *, pipeline: str, index: int, extra: dict[str, str]) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "OPENAI_BASE_URL": f"{self.mocks_url}/v1",
            "OPENAI_API_KEY": "dev-key",
            "LLAMAPARSE_BASE_URL": self.mocks_url,
            "LLAMA_CLOUD_API_KEY": "dev-key",
            "DOCPIPE_PIPELINE": pipeline,
            "DOCPIPE_METRICS_HOST": "127.0.0.1",
            "DOCPIPE_METRICS_PORT": str(self.worker_ports[index]),
            "DOCPIPE_REVISION": os.environ.get("DOCPIPE_REVISION", "dev"),
        }
        env.update(extra)
        return env


async def _spawn(
    args: list[str], env: dict[str, str], log_path: Path
) -> asyncio.subprocess.Process:
    log = log_path.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_cli.main", *args, env=env, stdout=log, stderr=log
        )
    finally:
        log.close()  # the child has its own copy of the descriptor


async def _wait_http(url: str, proc: asyncio.subprocess.Process, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within 30s; see {log}")


async def start_stack(
    *,
    workers: int,
    pipeline: str,
    data_dir: Path | None,
    concurrency: int,
    mock_latency_ms: float,
    console: Console,
) -> DevStack:
    """Start Postgres (embedded unless DATABASE_URL is set), migrate, start mocks and workers."""
    data_dir = data_dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    console.print(f"[bold]docpipe dev[/]: data in {data_dir}")
    url = resolve_database_url(None, data_dir=data_dir)
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    console.print(f"  postgres  ready ({len(applied)} migrations applied)")

    mock_port = free_port()
    stack = DevStack(
        database_url=url,
        data_dir=data_dir,
        mocks_url=f"http://127.0.0.1:{mock_port}",
        worker_ports=[free_port() for _ in range(workers)],
        log_dir=log_dir,
    )
    mock_args = ["mocks", "--host", "127.0.0.1", "--port", str(mock_port)]
    if mock_latency_ms:
        mock_args += ["--latency-ms", str(mock_latency_ms)]
    mocks_log = log_dir / "mocks.log"
    mocks = await _spawn(mock_args, dict(os.environ), mocks_log)
    stack.processes.append(mocks)
    await _wait_http(f"{stack.mocks_url}/_admin/faults", mocks, "the mock services", mocks_log)
    console.print(f"  mocks     {stack.mocks_url}  (LlamaParse + OpenAI; faults: /_admin/faults)")

    await _start_api(stack, pipeline=pipeline, console=console)

    for i in range(workers):
        env = stack.worker_env(
            pipeline=pipeline, index=i, extra={"DOCPIPE_CONCURRENCY": str(concurrency)}
        )
        log_path = log_dir / f"worker-{i + 1}.log"
        proc = await _spawn(["worker"], env, log_path)
        stack.processes.append(proc)
        port = stack.worker_ports[i]
        await _wait_http(f"http://127.0.0.1:{port}/readyz", proc, f"worker {i + 1}", log_path)
        console.print(f"  worker {i + 1}  http://127.0.0.1:{port}/metrics  (log: {log_path})")
    return stack


async def _start_api(stack: DevStack, *, pipeline: str, console: Console) -> None:
    """The intake API in development mode: it accepts tokens from `docpipe token`."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": stack.database_url,
        "OPENAI_BASE_URL": f"{stack.mocks_url}/v1",
        "OPENAI_API_KEY": "dev-key",
        "DOCPIPE_API_DEV_MODE": "true",
        "DOCPIPE_API_HOST": "127.0.0.1",
        "DOCPIPE_API_PORT": str(port),
        "DOCPIPE_API_PIPELINES": pipeline,
    }
    log_path = stack.log_dir / "api.log"
    proc = await _spawn(["api"], env, log_path)
    stack.processes.append(proc)
    stack.api_url = f"http://127.0.0.1:{port}"
    await _wait_http(f"{stack.api_url}/readyz", proc, "the API", log_path)
    console.print(
        f"  api       {stack.api_url}  (docs: {stack.api_url}/openapi.json; log: {log_path})"
    )
    console.print(
        f"            export DOCPIPE_API_URL={stack.api_url} "
        'DOCPIPE_API_TOKEN=$(docpipe token)   # then: docpipe search "..."'
    )


async def stop_stack(stack: DevStack, *, grace_s: float = 30.0) -> None:
    """SIGTERM every process (workers drain), wait, then SIGKILL what is left."""
    for proc in reversed(stack.processes):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in stack.processes:
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def run_dev(
    *,
    workers: int,
    pipeline: str,
    data_dir: Path | None,
    concurrency: int,
    ingest: list[Path],
    once: bool,
    mock_latency_ms: float = 0.0,
) -> int:
    """Run the stack; ingest `ingest` when given; stop on Ctrl-C/SIGTERM (or after, with once)."""
    console = Console(stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = await start_stack(
        workers=workers,
        pipeline=pipeline,
        data_dir=data_dir,
        concurrency=concurrency,
        mock_latency_ms=mock_latency_ms,
        console=console,
    )
    status = 0
    try:
        if ingest:
            pool = await create_pool(stack.database_url)
            try:
                ingesting = asyncio.create_task(
                    ingest_paths(pool, ingest, pipeline=pipeline, owner=DEV_OWNER)
                )
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait({ingesting, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if ingesting.done():
                    report = ingesting.result()
                    print_report(report, console)
                    status = 0 if report.ok else 1
                else:
                    ingesting.cancel()
            finally:
                await pool.close()
        if not once and not stop.is_set():
            console.print("running; press Ctrl-C to stop")
            await stop.wait()
    finally:
        console.print("stopping...")
        await stop_stack(stack)
        console.print("stopped")
    return status

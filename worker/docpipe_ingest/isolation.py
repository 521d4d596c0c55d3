"""Document parsing in isolation: each document is parsed in a child process of a small pool,
under a CPU-time, a wall-time and a memory limit. A hostile or huge document then costs one
child, never the worker: not its event loop (whose heartbeats keep the leases), not its memory,
not its other jobs. A parse whose job is abandoned or cancelled is killed with its child at once.

The children are fresh interpreters with the parsing libraries imported (replacing a killed one
takes about half a second, in the background of the slot's next parse); they run at a lower CPU
priority than the worker, so a parse never delays the worker's own loop, and they die with the
worker."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from docpipe_ingest import extraction
from docpipe_ingest.chunking import Chunk, chunk_markdown
from docpipe_ingest.extraction import DocumentError, UnreadableDocumentError

log = logging.getLogger(__name__)

# Below the worker's priority: on a busy machine the worker's loop (heartbeats, stores, the
# healthy documents' embeds) goes first and the parses take what is left.
CHILD_NICE = 10
# The exit code of a child that overran its CPU time inside code that never returned to Python.
_CPU_EXIT = 86
_PR_SET_PDEATHSIG = 1


def available_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """What one document (or one part of a large one) may use of its child process."""

    cpu_s: float = 60.0
    wall_s: float = 300.0
    memory_mb: int = 1024


class ParseLimitError(DocumentError):
    """The document needed more than a parse limit allows; the same bytes would again."""

    def __init__(self, message: str, *, filename: str, limit: str) -> None:
        super().__init__(message, filename=filename)
        self.limit = limit


class ParserCrashError(DocumentError):
    """The parser's process died on the document (a crash in a parsing library)."""


# -- the child --------------------------------------------------------------------------------


class _CPUTimeExceeded(BaseException):
    """Raised in the child by SIGXCPU; a BaseException so that no parser's handler eats it."""


def _on_sigxcpu(_signum: int, _frame: FrameType | None) -> None:
    global _cpu_signals
    _cpu_signals += 1
    if _cpu_signals > 1:
        # The first signal's exception never surfaced (code that does not return to Python).
        os._exit(_CPU_EXIT)
    raise _CPUTimeExceeded


_cpu_signals = 0


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _die_with_parent() -> None:
    # The child's parent is the forkserver, which exits when the worker does.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_main(conn: Connection, cpu_s: float, memory_mb: int) -> None:
    _die_with_parent()
    # Imported before the limits: the libraries' import is the child's fixed cost, not the
    # document's.
    for module in ("bs4", "markdownify", "pypdf", "docx", "lxml.etree"):
        with contextlib.suppress(ImportError):
            __import__(module)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl-c is the worker's to handle
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the worker closed the pipe or died
        except MemoryError:  # the document alone is larger than the memory limit
            with contextlib.suppress(Exception):
                conn.send(("limit", "memory"))
            return
        # RLIMIT_CPU counts the process's whole life: this request may use `cpu_s` from now.
        soft = int(_cpu_used() + cpu_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        reply = _serve(request)
        del request
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        if reply[0] == "limit":
            return  # the interrupted parser may have left anything behind: start afresh


def _serve(request: tuple[Any, ...]) -> tuple[Any, ...]:
    op, data, filename, *args = request
    try:
        if op == "parse":
            return (
                "ok",
                extraction.extract_markdown(data, filename=filename, content_type=args[0]),
            )
        if op == "pdf_pages":
            return ("ok", extraction.pdf_page_count(data, filename=filename))
        if op == "chunk":
            max_chars, overlap_chars = args
            return ("ok", chunk_markdown(data, max_chars=max_chars, overlap_chars=overlap_chars))
        if op == "pdf_range":
            first, last = args
            return (
                "ok",
                extraction.extract_pdf_pages(data, filename=filename, first=first, last=last),
            )
        raise ValueError(f"unknown parse request {op!r}")
    except _CPUTimeExceeded:
        return ("limit", "cpu")
    except MemoryError:
        return ("limit", "memory")
    except RecursionError as exc:
        message = f"cannot read {filename!r}: its structure is nested too deeply to parse ({exc})"
        return ("error", UnreadableDocumentError(message, filename=filename))
    except DocumentError as exc:
        return ("error", exc)
    except Exception as exc:  # a parsing library failing on these bytes: it would fail again
        message = f"cannot read {filename!r}: the parser failed on it ({type(exc).__name__}: {exc})"
        return ("error", UnreadableDocumentError(message, filename=filename))


# -- the worker's side ------------------------------------------------------------------------


class _Child:
    """One child process (`python -m docpipe_ingest.isolation`) and the worker's end of its
    socket. A fresh interpreter, not a fork: the worker's threads and event loop stay behind."""

    def __init__(self, limits: ParseLimits) -> None:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "docpipe_ingest.isolation", str(theirs.fileno())]
        command += [repr(limits.cpu_s), str(limits.memory_mb)]
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self.process = subprocess.Popen(
                command,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=environment,
                start_new_session=False,
            )
        finally:
            theirs.close()  # so that the child's death reads as EOF here
        self.conn = Connection(ours.detach())

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        self.conn.send(request)
        reply: tuple[Any, ...] = self.conn.recv()
        return reply

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.conn.close()

    def exit_code(self, wait_s: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(wait_s)
        return self.process.returncode


class ParsePool:
    """`processes` children (default: one per core) parsing documents under `limits`."""

    def __init__(self, processes: int | None = None, limits: ParseLimits | None = None) -> None:
        self.size = processes or available_cores()
        self.limits = limits or ParseLimits()
        # A slot holds an idle child, or None: a child to start when the slot is next used.
        self._slots: asyncio.Queue[_Child | None] | None = None
        self._busy: set[_Child] = set()
        self._idle: set[_Child] = set()
        self._closed = False
        # recv() blocks in a thread per parse in flight; start and reap need a few more.
        self._threads = ThreadPoolExecutor(self.size * 2 + 2, thread_name_prefix="docpipe-parse")
        # A pool dropped without close() (tests, scripts) still takes its children with it.
        self._finalizer = weakref.finalize(self, _kill_all, self._busy, self._idle)

    def _queue(self) -> asyncio.Queue[_Child | None]:
        if self._slots is None:
            self._slots = asyncio.Queue()
            for _ in range(self.size):
                self._slots.put_nowait(None)
        return self._slots

    async def start(self) -> None:
        """Start every child now rather than on first use."""
        slots = self._queue()
        taken = [await slots.get() for _ in range(self.size)]
        loop = asyncio.get_running_loop()
        try:
            for i, child in enumerate(taken):
                if child is None:
                    taken[i] = await loop.run_in_executor(self._threads, self._spawn)
        finally:
            for child in taken:
                slots.put_nowait(child)

    def _spawn(self) -> _Child:
        child = _Child(self.limits)
        self._idle.add(child)
        return child

    async def parse(self, data: bytes, *, filename: str, content_type: str | None) -> str:
        """The document's text (see `extraction.extract_markdown`), parsed in a child."""
        text: str = await self._call(("parse", data, filename, content_type), filename)
        return text

    async def pdf_page_count(self, data: bytes, *, filename: str) -> int:
        """The PDF's number of pages, read in a child."""
        count: int = await self._call(("pdf_pages", data, filename), filename)
        return count

    async def chunk(self, text: str, *, max_chars: int, overlap_chars: int) -> list[Chunk]:
        """`chunking.chunk_markdown` of a large text, in a child: off the worker's CPU share."""
        chunks: list[Chunk] = await self._call(
            ("chunk", text, "(text)", max_chars, overlap_chars), "(text)"
        )
        return chunks

    async def parse_pdf_pages(self, data: bytes, *, filename: str, first: int, last: int) -> str:
        """The text of pages [first, last) of a PDF, parsed in a child."""
        text: str = await self._call(("pdf_range", data, filename, first, last), filename)
        return text

    async def _call(self, request: tuple[Any, ...], filename: str) -> Any:
        if self._closed:
            raise RuntimeError("the parse pool is closed")
        loop = asyncio.get_running_loop()
        slots = self._queue()
        child = await slots.get()
        keep: _Child | None = None
        try:
            if child is None or not child.alive():
                if child is not None:
                    child.kill()
                    self._idle.discard(child)
                child = await loop.run_in_executor(self._threads, self._spawn)
            self._idle.discard(child)
            self._busy.add(child)
            started = time.monotonic()
            try:
                reply = await asyncio.wait_for(
                    loop.run_in_executor(self._threads, child.call, request), self.limits.wall_s
                )
            except TimeoutError:
                raise ParseLimitError(
                    f"parsing {filename!r} took longer than the wall-time limit of "
                    f"{self.limits.wall_s:g} s (DOCPIPE_PARSE_WALL_SECONDS); the document is too"
                    " large or too complex to parse",
                    filename=filename,
                    limit="wall_time",
                ) from None
            except (EOFError, OSError):
                # The child died mid-parse: only this document goes with it.
                code = await loop.run_in_executor(self._threads, child.exit_code, 2.0)
                raise self._death(filename, code, time.monotonic() - started) from None
            if reply[0] == "ok":
                keep = child
                return reply[1]
            if reply[0] == "error":
                keep = child
                raise reply[1]
            raise self._limit(filename, reply[1])
        finally:
            # Cancelled (the job was abandoned, cancelled or drained), timed out, died or hit a
            # limit: the child is killed and its slot starts a fresh one when next used.
            if child is not None:
                self._busy.discard(child)
                if keep is None:
                    child.kill()
                    self._reap(child)
                else:
                    self._idle.add(child)
            slots.put_nowait(keep)

    def _reap(self, child: _Child) -> None:
        with contextlib.suppress(RuntimeError):  # the executor is shut down: the pool is closed
            self._threads.submit(child.exit_code, 5.0)

    def _limit(self, filename: str, limit: str) -> ParseLimitError:
        if limit == "cpu":
            return ParseLimitError(
                f"parsing {filename!r} used more than the CPU-time limit of "
                f"{self.limits.cpu_s:g} s (DOCPIPE_PARSE_CPU_SECONDS); the document is too large"
                " or too complex to parse",
                filename=filename,
                limit="cpu_time",
            )
        return ParseLimitError(
            f"parsing {filename!r} needed more than the memory limit of "
            f"{self.limits.memory_mb} MB (DOCPIPE_PARSE_MEMORY_MB); the document expands to too"
            " much (a compression bomb?) or is too large",
            filename=filename,
            limit="memory",
        )

    def _death(self, filename: str, code: int | None, seconds: float) -> DocumentError:
        if code == _CPU_EXIT or code == -signal.SIGXCPU:
            return self._limit(filename, "cpu")
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        return ParserCrashError(
            f"the parser's process died while parsing {filename!r} ({how}, after {seconds:.1f} s;"
            f" its memory limit is {self.limits.memory_mb} MB, DOCPIPE_PARSE_MEMORY_MB); the"
            " document crashes the parser",
            filename=filename,
        )

    async def close(self) -> None:
        """Kill every child (a parse still running is abandoned) and stop the threads."""
        self._closed = True
        self._finalizer()
        self._threads.shutdown(wait=False, cancel_futures=True)


def _kill_all(*groups: set[_Child]) -> None:
    for group in groups:
        for child in list(group):
            child.kill()
        group.clear()


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])), float(sys.argv[2]), int(sys.argv[3]))

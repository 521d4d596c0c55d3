"""A real Prometheus server (Debian's `prometheus` binary) for tests and benchmarks: started with
a scrape configuration of static targets, or of a file the caller rewrites as pods come and go
(file-based discovery, applied as soon as the file changes), and queried through its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.ports import free_port

# A scrape target: "address:port" and the target labels a PodMonitor would attach.
Target = tuple[str, Mapping[str, str]]


def find_binary() -> str | None:
    """The `prometheus` binary, or None when it is not installed."""
    found = shutil.which("prometheus")
    if found is None and os.access("/usr/bin/prometheus", os.X_OK):
        found = "/usr/bin/prometheus"
    return found


@dataclass
class PrometheusServer:
    """A running `prometheus` scraping its targets every `scrape_interval_s`."""

    binary: str
    directory: Path
    scrape_interval_s: float = 1.0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not launched"
        return self.process.pid

    @property
    def targets_file(self) -> Path:
        return self.directory / "targets.json"

    def launch(self, targets: Sequence[Target] = (), *, discovered: bool = False) -> None:
        """Start the server scraping `targets` (or, `discovered`, what `set_targets` writes);
        wait until it is ready."""
        interval = f"{self.scrape_interval_s:g}s"
        job: dict[str, Any] = {"job_name": "docpipe-workers"}
        if discovered:
            self.set_targets(targets)
            job["file_sd_configs"] = [{"files": [str(self.targets_file)]}]
        else:
            job["static_configs"] = [
                {"targets": [address], "labels": dict(labels)} for address, labels in targets
            ]
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [job],
        }
        path = self.directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self._spawn(path)
        self._wait_ready()

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replace the discovered targets (written whole, then renamed: never read half)."""
        groups = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
        partial = self.targets_file.with_suffix(".tmp")
        partial.write_text(json.dumps(groups))
        partial.replace(self.targets_file)

    def _spawn(self, config: Path) -> None:
        log = (self.directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.directory / "prometheus.log").read_text()
                raise AssertionError(f"prometheus exited: {log}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError("prometheus did not get ready within 15 s")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/query", params={"query": promql}) as response,
        ):
            response.raise_for_status()
            result: list[dict[str, Any]] = (await response.json())["data"]["result"]
            return result

    async def wait_scraped(
        self, pods: Sequence[str], *, scrapes: int = 2, within: float = 15.0
    ) -> None:
        """Until every one of `pods` has been scraped successfully `scrapes` times."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rows = await self.query(f"sum_over_time(up[1m]) >= {scrapes}")
            if {r["metric"].get("pod") for r in rows} >= set(pods):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"prometheus did not scrape {len(pods)} pods within {within:g} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

"""The worker's HTTP endpoints on one port: /metrics for Prometheus, /healthz for liveness,
/readyz for readiness (the database answered recently and the worker is not shutting down)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


@dataclass
class HealthState:
    """What the probes report; the worker updates it, the endpoints only read it."""

    ready_check: Callable[[], str | None] = lambda: None
    draining: bool = False
    # The event loop ticks this; a loop stuck in blocking code stops ticking and fails liveness.
    last_tick: float = field(default_factory=time.monotonic)
    stall_after_s: float = 30.0

    def tick(self) -> None:
        self.last_tick = time.monotonic()


def build_health_app(state: HealthState) -> web.Application:
    """An aiohttp app serving /metrics, /healthz and /readyz from `state`."""

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        stalled = time.monotonic() - state.last_tick
        if stalled > state.stall_after_s:
            return web.json_response(
                {"status": "stalled", "seconds_since_tick": round(stalled, 1)}, status=503
            )
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if state.draining:
            return web.json_response({"status": "draining"}, status=503)
        problem = state.ready_check()
        if problem:
            return web.json_response({"status": "not ready", "reason": problem}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app

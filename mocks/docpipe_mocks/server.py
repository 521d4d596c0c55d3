"""One aiohttp server for both mock services, with fault injection and an admin API.

`GET/PUT /_admin/faults` reads and replaces the fault configuration at run time;
`GET/PUT /_admin/quotas` reads and replaces the quotas (`PUT ...?reset=true` also refills every
budget and zeroes the quota counts);
`GET /_admin/stats` counts the services' requests per endpoint and status, and per X-Request-ID,
and under `quotas` what each API key was served and refused, with a per-second history.
Every service path is also served under `/_faults/<fault>[=<arg>]/`, answering with that output
fault (docpipe_mocks.output_faults): successful answers with wrong content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from docpipe_mocks import llamaparse, openai
from docpipe_mocks.faults import Fault, FaultConfig, FaultInjector, FaultKind, Service
from docpipe_mocks.llamaparse import Extractor, LlamaParseSettings, read_text
from docpipe_mocks.openai import OpenAISettings
from docpipe_mocks.output_faults import service_path
from docpipe_mocks.quotas import QuotaConfig, QuotaState, bearer_key, ratelimit_headers

_log = logging.getLogger(__name__)

_ADMIN_PREFIX = "/_admin/"
_TRUNCATED_JSON = b'{"data": [{"embedding": [0.1,'


class MockConfig(BaseModel):
    """Everything a mock server needs: each service's settings and the initial faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Imported by name: a field called `llamaparse` would shadow the module in annotations.
    llamaparse: LlamaParseSettings = LlamaParseSettings()
    openai: OpenAISettings = OpenAISettings()
    faults: FaultConfig = FaultConfig()
    quotas: QuotaConfig = QuotaConfig()
    # Uploads to the parser are whole documents, far above aiohttp's 1 MiB default.
    max_body_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)


ErrorRenderer = Callable[[int, str, Mapping[str, str] | None], web.Response]


@dataclass(frozen=True, slots=True)
class _ServiceRoute:
    name: Service
    prefix: str
    api_key: str | None
    error: ErrorRenderer


def _llamaparse_error(status: int, message: str, headers: Mapping[str, str] | None) -> web.Response:
    return llamaparse.error_response(status, message, headers=headers)


def _openai_error(status: int, message: str, headers: Mapping[str, str] | None) -> web.Response:
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return openai.error_response(status, message, code=code, headers=headers)


INJECTOR = web.AppKey("fault_injector", FaultInjector)
QUOTAS = web.AppKey("quotas", QuotaState)
STATS = web.AppKey("request_stats", Counter[tuple[str, str]])
# Requests per X-Request-ID seen, for checking that clients pass their correlation id along;
# bounded so a long-running mock does not grow without end (oldest ids are forgotten first).
REQUEST_IDS = web.AppKey("request_ids", Counter[str])
_MAX_REQUEST_IDS = 10_000
SERVICE_ROUTES = web.AppKey("service_routes", tuple[_ServiceRoute, ...])
STOPPING = web.AppKey("stopping", asyncio.Event)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else "(no route)"
    return f"{request.method} {path}"


@web.middleware
async def _count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(_ADMIN_PREFIX):
        return await handler(request)
    # A request cancelled before it was answered (a hang the client gave up on) has no status.
    status = "no_response"
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    except Exception:
        status = "500"
        raise
    finally:
        request.app[STATS][_endpoint(request), status] += 1
        _count_request_id(request)


def _count_request_id(request: web.Request) -> None:
    header = request.headers.get("X-Request-ID")
    if header is None:
        return
    seen = request.app[REQUEST_IDS]
    # A request serving several (the intake API's shared query embeddings) lists their ids.
    for request_id in filter(None, (part.strip() for part in header.split(","))):
        if request_id not in seen and len(seen) >= _MAX_REQUEST_IDS:
            del seen[next(iter(seen))]  # a Counter keeps insertion order: this is the oldest
        seen[request_id] += 1


def _authorized(request: web.Request, api_key: str | None) -> bool:
    return api_key is None or request.headers.get("Authorization") == f"Bearer {api_key}"


@web.middleware
async def _inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A path under /_faults/<fault>/ is the service's own path with an output fault.
    path = service_path(request.path)
    service = next(
        (route for route in request.app[SERVICE_ROUTES] if path.startswith(route.prefix)),
        None,
    )
    if service is None:
        return await handler(request)
    if not _authorized(request, service.api_key):
        return service.error(401, "Incorrect API key provided.", None)
    fault = request.app[INJECTOR].next_fault(service.name)
    if fault.delay_seconds > 0:
        await asyncio.sleep(fault.delay_seconds)
    if fault.kind is FaultKind.NONE:
        return await handler(request)
    response = await _injected(request, service, fault)
    if service.name == "openai":
        # An injected answer spends no quota but, like every answer, shows the budget.
        key = bearer_key(request.headers.get("Authorization"))
        state = request.app[QUOTAS].peek_openai(key, time.monotonic())
        response.headers.update(ratelimit_headers(state))
    return response


async def _injected(request: web.Request, service: _ServiceRoute, fault: Fault) -> web.Response:
    match fault.kind:
        case FaultKind.ERROR:
            return service.error(500, "The mock server injected an internal error.", None)
        case FaultKind.RATE_LIMIT:
            headers = {"Retry-After": str(fault.retry_after_seconds)}
            return service.error(429, "Rate limit reached (injected by the mock).", headers)
        case FaultKind.HANG:
            # Answer only when the server stops; the client gives up (and, with handler
            # cancellation, disconnecting cancels this wait) long before.
            await request.app[STOPPING].wait()
            return service.error(503, "The mock server is shutting down.", None)
        case FaultKind.MALFORMED_JSON:
            return web.Response(body=_TRUNCATED_JSON, content_type="application/json")
        case FaultKind.WRONG_SHAPE:
            return web.json_response({"unexpected": "shape", "data": None})
        case FaultKind.NONE:
            raise AssertionError("a request without a fault goes to its handler")


def _field_errors(error: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(part) for part in item["loc"]) or "body", "message": item["msg"]}
        for item in error.errors(include_url=False)
    ]


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[INJECTOR].config.model_dump(mode="json"))


async def _put_faults(request: web.Request) -> web.Response:
    try:
        config = FaultConfig.model_validate_json(await request.read())
    except ValidationError as error:
        body = {"error": "invalid fault configuration", "fields": _field_errors(error)}
        return web.json_response(body, status=422)
    request.app[INJECTOR].configure(config)
    _log.info("fault configuration replaced: %s", config.model_dump_json())
    return web.json_response(config.model_dump(mode="json"))


async def _get_quotas(request: web.Request) -> web.Response:
    return web.json_response(request.app[QUOTAS].config.model_dump(mode="json"))


async def _put_quotas(request: web.Request) -> web.Response:
    reset = request.query.get("reset", "false").lower()
    if reset not in ("true", "false", "1", "0"):
        body = {
            "error": "invalid quota configuration",
            "fields": [{"field": "reset", "message": "must be true or false"}],
        }
        return web.json_response(body, status=422)
    try:
        config = QuotaConfig.model_validate_json(await request.read())
    except ValidationError as error:
        body = {"error": "invalid quota configuration", "fields": _field_errors(error)}
        return web.json_response(body, status=422)
    request.app[QUOTAS].configure(config, time.monotonic(), reset=reset in ("true", "1"))
    _log.info("quotas replaced (reset=%s): %s", reset, config.model_dump_json())
    return web.json_response(config.model_dump(mode="json"))


async def _get_stats(request: web.Request) -> web.Response:
    requests: dict[str, dict[str, int]] = {}
    for (endpoint, status), count in sorted(request.app[STATS].items()):
        requests.setdefault(endpoint, {})[status] = count
    request_ids: dict[str, int] = dict(request.app[REQUEST_IDS].items())
    quotas = request.app[QUOTAS].report(time.monotonic())
    return web.json_response({"requests": requests, "request_ids": request_ids, "quotas": quotas})


def build_app(config: MockConfig, extract: Extractor = read_text) -> web.Application:
    """Build the mock application: LlamaParse (parsing with `extract`) and OpenAI endpoints,
    faults, admin API."""
    app = web.Application(
        middlewares=[_count_requests, _inject_faults], client_max_size=config.max_body_bytes
    )
    app[INJECTOR] = FaultInjector(config.faults)
    app[QUOTAS] = QuotaState(config.quotas)
    app[STATS] = Counter()
    app[REQUEST_IDS] = Counter[str]()
    app[STOPPING] = asyncio.Event()
    app[SERVICE_ROUTES] = (
        _ServiceRoute(
            "llamaparse", llamaparse.PATH_PREFIX, config.llamaparse.api_key, _llamaparse_error
        ),
        _ServiceRoute("openai", openai.PATH_PREFIX, config.openai.api_key, _openai_error),
    )
    llamaparse.install(app, config.llamaparse, extract, app[QUOTAS])
    openai.install(app, config.openai, app[QUOTAS])
    app.router.add_get("/_admin/faults", _get_faults)
    app.router.add_put("/_admin/faults", _put_faults)
    app.router.add_get("/_admin/quotas", _get_quotas)
    app.router.add_put("/_admin/quotas", _put_quotas)
    app.router.add_get("/_admin/stats", _get_stats)

    async def release_hangs(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(release_hangs)
    return app


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # Windows: no uvloop
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _runner(config: MockConfig, extract: Extractor) -> web.AppRunner:
    # Cancelling a handler when its client disconnects ends injected hangs as soon as the client
    # gives up, instead of holding them until shutdown.
    return web.AppRunner(
        build_app(config, extract), handler_cancellation=True, shutdown_timeout=5.0
    )


@asynccontextmanager
async def serve(
    host: str, port: int, config: MockConfig, extract: Extractor = read_text
) -> AsyncIterator[str]:
    """Serve the mocks on `host`:`port` (0 picks a free port) and yield the bound base URL."""
    runner = _runner(config, extract)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


def run(host: str, port: int, config: MockConfig, extract: Extractor = read_text) -> None:
    """Serve the mocks on `host`:`port` until interrupted (Ctrl-C, SIGTERM) or cancelled."""
    web.run_app(
        build_app(config, extract),
        # uvloop where it exists: the mocks share the machine with what they stand in for the
        # remote services of, so the less CPU they take per request, the truer the measurements.
        loop=_new_event_loop(),
        host=host,
        port=port,
        handler_cancellation=True,
        shutdown_timeout=5.0,
        print=_log.info,
    )

"""The one layer of the operator that talks to the Kubernetes API (besides Kopf itself).

Every call goes through `KubeClient._call`, which refuses any (resource, verb) not listed in
`OPERATOR_CALLS` or `SECRET_CALLS`; `FRAMEWORK_CALLS` lists what Kopf does on its own. Together
they are the permissions the operator needs, and `manifests/base/rbac.yaml` must grant exactly
those (a test compares them), so the RBAC in the repository cannot drift from the code.
`SECRET_CALLS` are granted apart, only in the namespaces (and for the names) of the pipelines'
Secrets, or not at all (`docpipe operator --secrets=none`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from docpipe_operator.credentials import Credentials, same_credentials
from docpipe_operator.model import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    """An API resource: group ('' for core), version, plural, and optional subresource."""

    group: str
    version: str
    plural: str
    subresource: str = ""
    namespaced: bool = True

    @property
    def rbac_resource(self) -> str:
        """The name RBAC rules use: `plural` or `plural/subresource`."""
        return f"{self.plural}/{self.subresource}" if self.subresource else self.plural

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The URL path of the collection, or of one object when `name` is given."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace is not None and self.namespaced:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if self.subresource:
                base += f"/{self.subresource}"
        return base


DEPLOYMENTS = Resource("apps", "v1", "deployments")
SERVICES = Resource("", "v1", "services")
PODDISRUPTIONBUDGETS = Resource("policy", "v1", "poddisruptionbudgets")
PODMONITORS = Resource("monitoring.coreos.com", "v1", "podmonitors")
PODS = Resource("", "v1", "pods")
SECRETS = Resource("", "v1", "secrets")
PIPELINES = Resource(GROUP, VERSION, PLURAL)
PIPELINE_STATUS = Resource(GROUP, VERSION, PLURAL, subresource="status")
EVENTS = Resource("", "v1", "events")
PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)
NAMESPACED_PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)

# What this module's client does, and why; `_call` refuses anything else. No child is read: the
# rounds read them from the watches' indexes (see CHILD_WATCHES).
OPERATOR_CALLS: dict[Resource, frozenset[str]] = {
    # Deployments: the stable one and, during a rollout, the canary (deleted when it ends).
    DEPLOYMENTS: frozenset({"create", "patch", "delete"}),
    SERVICES: frozenset({"create", "patch"}),
    PODDISRUPTIONBUDGETS: frozenset({"create", "patch"}),
    PODMONITORS: frozenset({"create", "patch"}),
    # Pods: annotated with their deletion cost before a scale-down.
    PODS: frozenset({"patch"}),
    PIPELINE_STATUS: frozenset({"patch"}),
    # The manual rollback annotation (docpipe.io/rollback) is removed once acted on.
    PIPELINES: frozenset({"patch"}),
}

# The Secrets a pipeline references, each read by name (never listed or watched), at most once
# per refresh interval: their data's hash rolls the workers when it changes, and the DATABASE_URL
# serves to read the queue when no worker runs (scale from zero). Granted per namespace, apart
# from the rest (see required_permissions), or not at all.
SECRET_CALLS: dict[Resource, frozenset[str]] = {SECRETS: frozenset({"get"})}

# Kopf's watches of the children (`handlers`: an index per kind and a wake-up of the pipeline's
# round), selected by the label every child and worker pod carries.
CHILD_WATCHES: dict[Resource, frozenset[str]] = {
    resource: frozenset({"list", "watch"})
    for resource in (DEPLOYMENTS, SERVICES, PODDISRUPTIONBUDGETS, PODMONITORS, PODS)
}

# What Kopf does by itself with the settings of `runtime.py`: watch the resource and patch its
# finalizer and progress annotations, post Events, keep the peering object, follow CRDs.
FRAMEWORK_CALLS: dict[Resource, frozenset[str]] = {
    PIPELINES: frozenset({"list", "watch", "patch"}),
    PIPELINE_STATUS: frozenset({"patch"}),
    EVENTS: frozenset({"create"}),
    PEERINGS: frozenset({"get", "list", "watch", "patch"}),
    CRDS: frozenset({"list", "watch"}),
    **CHILD_WATCHES,
}


# Serving only some namespaces (`docpipe operator --namespace=NS`), Kopf peers in a KopfPeering in
# each of them and, with scanning off, neither lists namespaces nor follows CRDs: nothing
# cluster-wide is called, and everything is granted per namespace.
NAMESPACED_FRAMEWORK_CALLS: dict[Resource, frozenset[str]] = {
    PIPELINES: frozenset({"list", "watch", "patch"}),
    PIPELINE_STATUS: frozenset({"patch"}),
    EVENTS: frozenset({"create"}),
    NAMESPACED_PEERINGS: frozenset({"get", "list", "watch", "patch"}),
    **CHILD_WATCHES,
}


def required_permissions(
    *, namespaced: bool = False, secrets: bool = False
) -> dict[tuple[str, str], frozenset[str]]:
    """(API group, RBAC resource) → verbs: what the operator and Kopf together call.

    `namespaced`: when serving only some namespaces, all of it granted in each of them.
    `secrets`: with the Secret reads, which the RBAC grants apart (`SECRET_CALLS`).
    """
    needed: dict[tuple[str, str], frozenset[str]] = {}
    framework = NAMESPACED_FRAMEWORK_CALLS if namespaced else FRAMEWORK_CALLS
    tables = (OPERATOR_CALLS, framework, SECRET_CALLS) if secrets else (OPERATOR_CALLS, framework)
    for table in tables:
        for resource, verbs in table.items():
            key = (resource.group, resource.rbac_resource)
            needed[key] = needed.get(key, frozenset()) | verbs
    return needed


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ApiError):
    """404: the object (or the resource) does not exist."""


class CallNotAllowedError(Exception):
    """The code tried a call that `OPERATOR_CALLS` and `SECRET_CALLS` do not list (a bug, not a
    cluster error)."""


class KubeClient:
    """A small async client for the calls in `OPERATOR_CALLS`, JSON in and out."""

    def __init__(
        self, credentials: Credentials | kopf.ConnectionInfo, *, timeout: float = 10.0
    ) -> None:
        # The credentials are asked for before each request (they renew: `credentials`), not
        # read once: only the connection pool is kept, for as long as the TLS identity holds.
        self._credentials = (
            credentials if isinstance(credentials, Credentials) else Credentials.fixed(credentials)
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._session_tls: tuple[Any, ...] = ()
        self._retired: list[aiohttp.ClientSession] = []

    async def _info(self, rejected: kopf.ConnectionInfo | None = None) -> kopf.ConnectionInfo:
        """The current credentials; loaded again (in a thread: an exec plugin is a process) when
        due, or when `rejected` by the API server."""
        if rejected is None and not self._credentials.due():
            return self._credentials.info
        return await asyncio.to_thread(self._credentials.current, rejected)

    async def _open(self, info: kopf.ConnectionInfo) -> aiohttp.ClientSession:
        tls = _tls_identity(info)
        if self._session is None or self._session.closed or tls != self._session_tls:
            if self._session is not None:
                # A new client certificate or CA: requests in flight finish on the old pool,
                # closed at the next change (long idle by then) or at the end.
                for old in self._retired:
                    await old.close()
                self._retired = [self._session]
            ssl: Any = info.as_ssl_context() if info.server.startswith("https") else None
            connector = aiohttp.TCPConnector(ssl=ssl if ssl is not None else False, limit=20)
            self._session = aiohttp.ClientSession(
                base_url=info.server.rstrip("/"),
                connector=connector,
                timeout=self._timeout,
                trust_env=info.trust_env,
            )
            self._session_tls = tls
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        for session in [*self._retired, self._session]:
            if session is not None:
                await session.close()
        self._session, self._retired = None, []

    async def _request(
        self,
        method: str,
        path: str,
        *,
        data: str | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, str]:
        """(status, reason, body) of a request with the current credentials; after a 401, once
        more with credentials loaded again, if that gave new ones."""
        info = await self._info()
        for attempt in range(2):
            session = await self._open(info)
            async with session.request(
                method,
                path,
                data=data,
                params=params,
                headers={**(headers or {}), **info.as_http_headers()},
            ) as response:
                status, reason = response.status, response.reason or ""
                text = await response.text()
            if status != 401 or attempt:
                break
            fresh = await self._info(rejected=info)
            if same_credentials(fresh, info):
                break
            info = fresh
        return status, reason, text

    async def _call(
        self,
        verb: str,
        resource: Resource,
        *,
        namespace: str | None = None,
        name: str | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        allowed = OPERATOR_CALLS.get(resource, frozenset()) | SECRET_CALLS.get(
            resource, frozenset()
        )
        if verb not in allowed:
            raise CallNotAllowedError(
                f"{verb} {resource.rbac_resource} is not in OPERATOR_CALLS or SECRET_CALLS"
            )
        method = {
            "get": "GET",
            "list": "GET",
            "create": "POST",
            "patch": "PATCH",
            "delete": "DELETE",
        }[verb]
        path = resource.path(namespace, name)
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        status, reason, text = await self._request(
            method, path, data=data, params=params, headers=headers
        )
        if status >= 400:
            try:
                payload = json.loads(text)
                reason, message = payload.get("reason", ""), payload.get("message", text)
            except ValueError:
                message = text[:500]
            error = NotFoundError if status == 404 else ApiError
            raise error(status, reason, message)
        result: dict[str, Any] = json.loads(text) if text else {}
        return result

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return await self._call("get", resource, namespace=namespace, name=name)
        except NotFoundError:
            return None

    async def create(
        self, resource: Resource, namespace: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Create an object; the object as stored."""
        return await self._call("create", resource, namespace=namespace, body=body)

    async def merge_patch(
        self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to an object (or to its subresource)."""
        return await self._call(
            "patch",
            resource,
            namespace=namespace,
            name=name,
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, resource: Resource, namespace: str, name: str) -> None:
        """Delete an object and, in the background, what it owns; gone already is fine."""
        with contextlib.suppress(NotFoundError):
            await self._call(
                "delete",
                resource,
                namespace=namespace,
                name=name,
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
            )

    async def has_api_group(self, group: str) -> bool:
        """Whether the cluster serves an API group (e.g. monitoring.coreos.com); via discovery."""
        try:
            status, _, _ = await self._request("GET", f"/apis/{group}")
        except (TimeoutError, aiohttp.ClientError):
            return False
        return status == 200


def _tls_identity(info: kopf.ConnectionInfo) -> tuple[Any, ...]:
    """What a connection pool is built from: the server, its CA, the client certificate."""
    return (
        info.server,
        info.ca_path,
        info.ca_data,
        info.insecure,
        info.certificate_path,
        info.certificate_data,
        info.private_key_path,
        info.private_key_data,
        info.trust_env,
    )

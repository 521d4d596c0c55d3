"""The one layer of the operator that talks to the Kubernetes API (besides Kopf itself).

Every call goes through `KubeClient._call`, which refuses any (resource, verb) not listed in
`OPERATOR_CALLS`; `FRAMEWORK_CALLS` lists what Kopf does on its own. Together they are the
permissions the operator needs, and `manifests/base/rbac.yaml` must grant exactly those (a test
compares them), so the RBAC in the repository cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

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
    # The DATABASE_URL of a pipeline, read only when no worker runs (scale-from-zero), cached.
    SECRETS: frozenset({"get"}),
    PIPELINE_STATUS: frozenset({"patch"}),
    # The manual rollback annotation (docpipe.io/rollback) is removed once acted on.
    PIPELINES: frozenset({"patch"}),
}

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


def required_permissions(*, namespaced: bool = False) -> dict[tuple[str, str], frozenset[str]]:
    """(API group, RBAC resource) → verbs: what the operator and Kopf together call.

    `namespaced`: when serving only some namespaces, all of it granted in each of them.
    """
    needed: dict[tuple[str, str], frozenset[str]] = {}
    framework = NAMESPACED_FRAMEWORK_CALLS if namespaced else FRAMEWORK_CALLS
    for table in (OPERATOR_CALLS, framework):
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
    """The code tried a call that `OPERATOR_CALLS` does not list (a bug, not a cluster error)."""


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Credentials as Kopf finds them: the pod's service account, else $KUBECONFIG."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig: cannot reach the API")
    return info


class KubeClient:
    """A small async client for the calls in `OPERATOR_CALLS`, JSON in and out."""

    def __init__(self, info: kopf.ConnectionInfo, *, timeout: float = 10.0) -> None:
        self._info = info
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl: Any = (
                self._info.as_ssl_context() if self._info.server.startswith("https") else None
            )
            connector = aiohttp.TCPConnector(ssl=ssl if ssl is not None else False, limit=20)
            self._session = aiohttp.ClientSession(
                base_url=self._info.server.rstrip("/"),
                headers=self._info.as_http_headers(),
                connector=connector,
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        if verb not in OPERATOR_CALLS.get(resource, frozenset()):
            raise CallNotAllowedError(f"{verb} {resource.rbac_resource} is not in OPERATOR_CALLS")
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
        session = self._open()
        async with session.request(
            method, path, data=data, params=params, headers=headers
        ) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    payload = json.loads(text)
                    reason, message = payload.get("reason", ""), payload.get("message", text)
                except ValueError:
                    reason, message = response.reason or "", text[:500]
                error = NotFoundError if response.status == 404 else ApiError
                raise error(response.status, reason, message)
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
        session = self._open()
        try:
            async with session.get(f"/apis/{group}") as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

"""A Kubernetes API emulator for the operator tests and benchmarks, built on kmock's
`KubernetesEmulator`.

kmock 0.8 gives the HTTP server, request parsing, resource discovery and error shapes; the object
store is replaced by one that behaves like the real API server where the operator (and Kopf and
kubectl) depend on it (see shared/notes/kubernetes-emulation.md for what kmock lacks):

- every object gets `uid`, `resourceVersion`, `creationTimestamp`, `generation` (bumped when
  anything but metadata and status changes); create answers 201, a conflict 409, a failed
  JSON-patch `test` 422; `generateName` is honoured; PUT replaces;
- merge, strategic-merge (as merge) and JSON patches; the status subresource is separate from the
  main resource (each ignores the other's changes);
- lists carry `kind` and `resourceVersion`, and honour label and field selectors; watches are
  JSON lines, replay from `resourceVersion`, honour selectors and `timeoutSeconds`; a streaming
  list (`sendInitialEvents=true`, kubectl's wait) ends its initial events with the bookmark;
- deletion waits for finalizers, then the garbage collector removes dependents by owner uid
  (background propagation; `Foreground` keeps the owner until its dependents are gone, `Orphan`
  leaves them without the owner reference);
- a CustomResourceDefinition, once created, is enforced on its resource as the API server
  enforces it (`apiserver_schema`): pruning of unknown fields (`fieldValidation=Strict` refuses
  them with 400, `Warn`, the default, answers a Warning header), defaults, the structural schema
  and the CEL rules (422 with `details.causes`), ratcheting on updates; a test can store an object
  the schema refuses with `validate=False` (as if it predated today's CRD);
- the scale subresource of Deployments and of a CRD that declares one;
- Table output (`as=Table`) with a CRD's printer columns, so `kubectl get` shows them
  (`apiserver_table`);
- resource quantities in Pods and Deployments come back canonical (`quantities`: 0.5 → 500m);
- /version reports the chart's minimum Kubernetes version (helm/docpipe/Chart.yaml);
- each (API group, resource, verb) served is recorded in `calls`, for checking RBAC;
- each request's bearer token is counted in `tokens`; with `expected_tokens` set, a request
  without one of those is answered 401 (for the login tests);
- kmock's request history is trimmed, since each request re-filters it.

It leans on kmock internals (`_handle`, `_serve_version`, `_requests`): kmock is pinned.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import json
import re
import secrets
import uuid
from collections.abc import Callable, Container, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering

from tests.support import apiserver_schema, apiserver_table
from tests.support.quantities import QuantityError, canonical_quantity

Obj = dict[str, Any]
Key = tuple[str, str | None, str]  # "group/version/plural", namespace, name

DOCPIPE_RESOURCE = "docpipe.io/v1alpha1/documentpipelines"
DEPLOYMENTS = "apps/v1/deployments"
PODS = "/v1/pods"
SECRETS = "/v1/secrets"
EXTRA_RESOURCES: dict[str, kmock.ResourceInfo] = {
    DOCPIPE_RESOURCE: kmock.ResourceInfo(
        kind="DocumentPipeline",
        singular="documentpipeline",
        namespaced=True,
        shortnames={"dp"},
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        subresources={"status", "scale"},
    ),
    "kopf.dev/v1/clusterkopfpeerings": kmock.ResourceInfo(
        kind="ClusterKopfPeering",
        singular="clusterkopfpeering",
        namespaced=False,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
    ),
    "kopf.dev/v1/kopfpeerings": kmock.ResourceInfo(
        kind="KopfPeering",
        singular="kopfpeering",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
    ),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        subresources={"status"},
    ),
    "monitoring.coreos.com/v1/podmonitors": kmock.ResourceInfo(
        kind="PodMonitor",
        singular="podmonitor",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
    ),
}
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
# Resources whose pod templates carry resource quantities the server canonicalises.
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    PODS: ("spec",),
    DEPLOYMENTS: ("spec", "template", "spec"),
    "apps/v1/replicasets": ("spec", "template", "spec"),
    "apps/v1/statefulsets": ("spec", "template", "spec"),
}
CHART = Path(__file__).resolve().parents[2] / "helm" / "docpipe" / "Chart.yaml"
EVENT_LOG_SIZE = 20_000
REQUEST_HISTORY_KEPT = 50


def parse_path(path: str) -> tuple[str, str | None, str | None, str | None] | None:
    """("group/version/plural", namespace, name, subresource) of a resource URL; None otherwise."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    plural, name = rest[0], rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return f"{group}/{version}/{plural}", namespace, name, subresource


def chart_minimum_version(chart: Path = CHART) -> tuple[int, int, int]:
    """The oldest Kubernetes the chart supports (its `kubeVersion: ">=1.30.0-0"`)."""
    constraint = str(yaml.safe_load(chart.read_text(encoding="utf-8"))["kubeVersion"])
    found = re.search(r">=\s*v?(\d+)\.(\d+)(?:\.(\d+))?", constraint)
    if found is None:
        raise ValueError(f"{chart}: kubeVersion {constraint!r} has no lower bound")
    return int(found[1]), int(found[2]), int(found[3] or 0)


def canonicalise_quantities(rkey: str, kind: str, obj: Obj) -> None:
    """Write the resource quantities of a pod (template) in canonical form, in place; raise a
    400 as the server does for a value that is not a quantity."""
    pod: Any = obj
    for part in POD_TEMPLATE_PATHS.get(rkey, ()):
        pod = pod.get(part) if isinstance(pod, dict) else None
    if not isinstance(pod, dict) or rkey not in POD_TEMPLATE_PATHS:
        return
    for key in ("containers", "initContainers"):
        for container in pod.get(key) or []:
            resources = container.get("resources") or {}
            for amounts in (resources.get("requests") or {}, resources.get("limits") or {}):
                for name, amount in amounts.items():
                    try:
                        amounts[name] = canonical_quantity(amount)
                    except QuantityError as exc:
                        version = rkey.split("/")[1]
                        message = (
                            f'{kind} in version "{version}" cannot be handled as a {kind}: {exc}'
                        )
                        raise ApiFailureError(400, "BadRequest", message) from None


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return aiohttp.web.json_response(body, status=code)


class ApiFailureError(Exception):
    """An API error to answer with a Status object (`status`: the whole body, if given)."""

    def __init__(self, code: int, reason: str, message: str, status: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.status = status


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(target: Obj, ops: list[dict[str, Any]]) -> Obj:
    """RFC 6902 JSON patch (add, remove, replace, test)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = _pointer(op["path"])
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1] if parts else ""
        kind = op["op"]
        try:
            if kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
                if current != op.get("value"):
                    raise ApiFailureError(
                        422, "Invalid", f"the server rejected our request: test of {op['path']}"
                    )
            elif kind == "add" and isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op["value"])
            elif kind in ("add", "replace"):
                if isinstance(parent, list):
                    parent[int(last)] = op["value"]
                else:
                    parent[last] = op["value"]
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                raise ApiFailureError(422, "Invalid", f"unsupported JSON patch op {kind}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiFailureError(422, "Invalid", f"JSON patch {op}: {exc!r}") from None
    return doc


_SELECTOR_TERM = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<absent>[^\s,=!()]+)"
    r"|(?P<key>[^\s,=!()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*$"
)


def _split_selector(selector: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, ch in enumerate(selector):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            yield selector[start:i]
            start = i + 1
    yield selector[start:]


def label_matcher(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """A predicate over labels for a Kubernetes label selector string."""
    terms: list[tuple[str, str, frozenset[str]]] = []  # (operator, key, values)
    for term in _split_selector(selector) if selector else ():
        m = _SELECTOR_TERM.match(term)
        if m is None:
            raise ApiFailureError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        if m["absent"]:
            terms.append(("!", m["absent"], frozenset()))
        elif m["op"]:
            terms.append(("!=" if m["op"] == "!=" else "=", m["key"], frozenset({m["value"]})))
        elif m["setop"]:
            values = frozenset(v.strip() for v in m["values"].split(","))
            terms.append(("in" if m["setop"] == "in" else "notin", m["key"], values))
        else:
            terms.append(("exists", m["key"], frozenset()))

    def check(labels: dict[str, str]) -> bool:
        for op, key, values in terms:
            value = labels.get(key)
            ok = {
                "!": value is None,
                "exists": value is not None,
                "=": value in values,
                "in": value in values,
                "!=": value not in values,
                "notin": value not in values,
            }[op]
            if not ok:
                return False
        return True

    return check


def field_matcher(selector: str | None) -> Callable[[Obj], bool]:
    """A predicate for the field selectors kubectl and Kopf use (metadata name and namespace)."""
    if not selector:
        return lambda obj: True
    wanted: list[tuple[str, str, bool]] = []
    for term in selector.split(","):
        negate = "!=" in term
        field, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
        wanted.append((field.strip(), value.strip(), negate))

    def check(obj: Obj) -> bool:
        for field, value, negate in wanted:
            node: Any = obj
            for part in field.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if (str(node) == value) == negate:
                return False
        return True

    return check


def _with_finalizers(obj: Obj, finalizers: list[str]) -> Obj:
    obj["metadata"]["finalizers"] = finalizers
    if not finalizers:
        del obj["metadata"]["finalizers"]
    return obj


def _with_finalizer(obj: Obj, finalizer: str) -> Obj:
    return _with_finalizers(obj, [*(obj["metadata"].get("finalizers") or []), finalizer])


def _without_owner(obj: Obj, uid: str) -> Obj:
    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
    obj["metadata"]["ownerReferences"] = refs
    if not refs:
        del obj["metadata"]["ownerReferences"]
    return obj


class KubernetesApi(kmock.KubernetesEmulator):
    """kmock's emulator with a store that behaves like the API server (see the module doc)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        for key, info in EXTRA_RESOURCES.items():
            self.resources[key] = info
        self.store: dict[Key, Obj] = {}
        self.calls: set[tuple[str, str, str]] = set()
        self.request_count = 0
        # Answers by status code, and requests by verb (watches are long-lived: counted once).
        self.answers: collections.Counter[int] = collections.Counter()
        self.verbs: collections.Counter[str] = collections.Counter()
        self.requests_by: collections.Counter[str] = collections.Counter()  # "verb plural[/sub]"
        self._rv = itertools.count(1000)
        self._last_rv = 1000
        self._log: list[tuple[int, str, str, Obj]] = []
        self._changed = asyncio.Event()
        self.gone_resources: set[str] = set()
        # The served versions of each CustomResourceDefinition created here, by resource key.
        self.crds: dict[str, tuple[Obj, Obj]] = {}  # rkey: (the CRD, its version entry)
        # Warnings of admission (unknown fields under fieldValidation=Warn), newest last.
        self.warnings: list[str] = []
        # A kubeconfig that points at this emulator, once one is written (see support.cluster).
        self.kubeconfig: Path | None = None
        # The bearer token of each request ("" for none) and, when set, the only ones accepted:
        # any other request is answered 401, as an API server does.
        self.tokens: collections.Counter[str] = collections.Counter()
        self.expected_tokens: Container[str] | None = None

    # ---- the store: used by the HTTP handlers and directly by tests (as a kubelet would) ----

    def info(self, rkey: str) -> kmock.ResourceInfo:
        """The discovery info of a resource given as "group/version/plural"."""
        for resource in self.resources:
            if f"{resource.group}/{resource.version}/{resource.plural}" == rkey:
                return self.resources[resource]
        raise ApiFailureError(404, "NotFound", f"the server could not find the resource {rkey}")

    def _api_version(self, rkey: str) -> str:
        group, version, _ = rkey.split("/")
        return f"{group}/{version}" if group else version

    def _emit(self, rkey: str, kind: str, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self._log.append((rv, rkey, kind, copy.deepcopy(obj)))
        if len(self._log) > EVENT_LOG_SIZE:
            del self._log[: len(self._log) - EVENT_LOG_SIZE]
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _bump(self, obj: Obj) -> None:
        self._last_rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self._last_rv)

    def stored_objects(self, rkey: str, namespace: str | None = None) -> Iterator[Obj]:
        """The stored objects themselves, not copies (for a kubelet reading many; never change
        them)."""
        for (r, ns, _), o in self.store.items():
            if r == rkey and (namespace is None or ns == namespace):
                yield o

    def list_objects(self, rkey: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of a resource (in a namespace, if given)."""
        return [
            copy.deepcopy(o)
            for (r, ns, _), o in self.store.items()
            if r == rkey and (namespace is None or ns == namespace)
        ]

    def read_object(self, rkey: str, namespace: str | None, name: str) -> Obj | None:
        """A copy of one stored object, or None."""
        obj = self.store.get((rkey, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create_object(
        self,
        rkey: str,
        namespace: str | None,
        body: Obj,
        *,
        field_validation: str = "Strict",
        validate: bool = True,
    ) -> Obj:
        """Store a new object; raise ApiFailureError 409 if the name is taken, 422 (or 400 for
        unknown fields under `field_validation="Strict"`) if its CRD's schema refuses it;
        `validate=False` stores what the schema refuses (as an object older than its rules)."""
        info = self.info(rkey)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not info.namespaced:
            namespace = None
        elif namespace is None:
            namespace = meta.get("namespace")
        if info.namespaced and not namespace:
            raise ApiFailureError(400, "BadRequest", "a namespaced object needs a namespace")
        if namespace is not None and meta.get("namespace") not in (None, namespace):
            raise ApiFailureError(400, "BadRequest", "the namespace of the object does not match")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiFailureError(422, "Invalid", "metadata.name or generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key = (rkey, namespace, meta["name"])
        if key in self.store:
            raise ApiFailureError(409, "AlreadyExists", f'{rkey} "{meta["name"]}" already exists')
        if namespace is not None:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        obj["apiVersion"] = self._api_version(rkey)
        obj["kind"] = info.kind
        obj = self._admit(rkey, obj, None, field_validation=field_validation, validate=validate)
        self._bump(obj)
        self.store[key] = obj
        self._emit(rkey, "ADDED", obj)
        if rkey == CRDS:
            self._register_crd(obj)
        return copy.deepcopy(obj)

    def update_object(
        self,
        rkey: str,
        namespace: str | None,
        name: str,
        change: Callable[[Obj], Obj],
        *,
        subresource: str | None = None,
        field_validation: str = "Strict",
        validate: bool = True,
    ) -> Obj:
        """Apply `change` to a stored object with the API server's rules (see create_object for
        `field_validation` and `validate`); return the result."""
        key = (rkey, namespace, name)
        old = self.store.get(key)
        if old is None:
            raise ApiFailureError(404, "NotFound", f'{rkey} "{name}" not found')
        new = change(copy.deepcopy(old))
        new_meta = new.setdefault("metadata", {})
        sent_rv = new_meta.get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiFailureError(
                409, "Conflict", "the object has been modified; please apply your changes"
            )
        has_status = "status" in self.info(rkey).subresources
        if subresource == "status":
            # Only the status changes through /status.
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        for fixed in ("uid", "creationTimestamp", "namespace", "name", "generation"):
            if fixed in old["metadata"]:
                new["metadata"][fixed] = old["metadata"][fixed]
        if old["metadata"].get("deletionTimestamp"):
            new["metadata"]["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        else:
            new["metadata"].pop("deletionTimestamp", None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        new = self._admit(rkey, new, old, field_validation=field_validation, validate=validate)

        def essence(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if essence(new) != essence(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if new == {**old, "metadata": {**old["metadata"]}}:
            return copy.deepcopy(old)  # a no-op patch changes nothing, not even the version
        self._bump(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self.store[key] = new
            self._remove(key)
            return copy.deepcopy(new)
        self.store[key] = new
        self._emit(rkey, "MODIFIED", new)
        if rkey == CRDS:
            self._register_crd(new)
        return copy.deepcopy(new)

    def _admit(
        self, rkey: str, obj: Obj, old: Obj | None, *, field_validation: str, validate: bool
    ) -> Obj:
        """What the API server makes of an object before storing it: canonical quantities; for a
        custom resource, pruned, defaulted and validated against its CRD."""
        canonicalise_quantities(rkey, str(obj.get("kind")), obj)
        served = self.crds.get(rkey)
        if served is None:
            return obj
        crd, version = served
        schema = version.get("schema", {}).get("openAPIV3Schema") or {}
        admitted = apiserver_schema.admit(schema, obj, old)
        kind, group = crd["spec"]["names"]["kind"], crd["spec"]["group"]
        if admitted.pruned and field_validation == "Strict":
            status = apiserver_schema.strict_decoding_status(kind, version["name"], admitted.pruned)
            raise ApiFailureError(400, "BadRequest", status["message"], status)
        if field_validation == "Warn":
            self.warnings += [f'unknown field "{path}"' for path in admitted.pruned]
        if admitted.errors and validate:
            name = str(obj.get("metadata", {}).get("name", ""))
            status = apiserver_schema.invalid_status(group, kind, name, admitted.errors)
            raise ApiFailureError(422, "Invalid", status["message"], status)
        return admitted.obj

    def _register_crd(self, crd: Obj) -> None:
        """Serve and enforce the versions of a CustomResourceDefinition."""
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec.get("versions") or []:
            rkey = f"{spec['group']}/{version['name']}/{names['plural']}"
            if not version.get("served", True):
                self.crds.pop(rkey, None)
                continue
            self.crds[rkey] = (copy.deepcopy(crd), copy.deepcopy(version))
            self.resources[rkey] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames") or ()),
                categories=set(names.get("categories") or ()),
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                subresources=set(version.get("subresources") or {}),
            )

    def delete_object(
        self, rkey: str, namespace: str | None, name: str, *, propagation: str = "Background"
    ) -> Obj:
        """Delete an object: mark it while finalizers remain, else remove it and its dependents
        (`propagation`: Background, Foreground or Orphan, as in DeleteOptions)."""
        key = (rkey, namespace, name)
        obj = self.store.get(key)
        if obj is None:
            raise ApiFailureError(404, "NotFound", f'{rkey} "{name}" not found')
        if propagation not in ("Background", "Foreground", "Orphan"):
            message = (
                f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: '
                f'"{propagation}": supported values: "Foreground", "Background", "Orphan"'
            )
            raise ApiFailureError(422, "Invalid", message)
        uid = obj["metadata"]["uid"]
        if propagation == "Orphan":
            for dep_key in self._dependents(uid):
                self.update_object(*dep_key, lambda d: _without_owner(d, uid), validate=False)
        elif propagation == "Foreground" and self._dependents(uid):
            if "foregroundDeletion" not in (obj["metadata"].get("finalizers") or []):
                self.update_object(
                    *key, lambda o: _with_finalizer(o, "foregroundDeletion"), validate=False
                )
            obj = self.store[key]
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                self._bump(obj)
                self._emit(rkey, "MODIFIED", obj)
            for dep_key in self._dependents(uid):
                if dep_key in self.store:
                    self.delete_object(*dep_key)
            self._release_foreground(uid)
            current = self.store.get(key, obj)
            return copy.deepcopy(current)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                self._bump(obj)
                self._emit(rkey, "MODIFIED", obj)
            return copy.deepcopy(obj)
        self._remove(key)
        return copy.deepcopy(obj)

    def _dependents(self, uid: str) -> list[Key]:
        return [
            k
            for k, o in self.store.items()
            if any(ref.get("uid") == uid for ref in o["metadata"].get("ownerReferences") or [])
        ]

    def _release_foreground(self, uid: str) -> None:
        """Remove the foregroundDeletion finalizer of the owner `uid` once its dependents are
        gone (the garbage collector's part of a foreground deletion)."""
        if self._dependents(uid):
            return
        for key, owner in list(self.store.items()):
            meta = owner["metadata"]
            if meta["uid"] == uid and "foregroundDeletion" in (meta.get("finalizers") or []):
                remaining = [f for f in meta["finalizers"] if f != "foregroundDeletion"]

                def release(o: Obj, kept: list[str] = remaining) -> Obj:
                    return _with_finalizers(o, kept)

                self.update_object(*key, release, validate=False)

    def _remove(self, key: Key) -> None:
        obj = self.store.pop(key)
        self._bump(obj)
        self._emit(key[0], "DELETED", obj)
        if key[0] == CRDS:
            for rkey, (crd, _) in list(self.crds.items()):
                if crd["metadata"]["name"] == obj["metadata"]["name"]:
                    del self.crds[rkey]
        for ref in obj["metadata"].get("ownerReferences") or []:
            self._release_foreground(str(ref.get("uid")))
        # The garbage collector: dependents go with their owner (background propagation).
        uid = obj["metadata"]["uid"]
        for dep_key, dep in list(self.store.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in owners) and dep_key in self.store:
                self.delete_object(*dep_key)

    # ---- HTTP ----

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.request_count += 1
        scheme, _, token = raw_request.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        self.tokens[token] += 1
        if self.expected_tokens is not None and token not in self.expected_tokens:
            self.answers[401] += 1
            return _status(401, "Unauthorized", "Unauthorized")
        if len(self._requests) > 2 * REQUEST_HISTORY_KEPT:
            del self._requests[:-REQUEST_HISTORY_KEPT]
        body = await raw_request.read()
        try:
            request = await rendering.Request._parse(raw_request, id=self.request_count)
        except ValueError:
            # kmock's URL parser fails on /api/v1/namespaces; our own parser reads it.
            request = rendering.Request(
                id=self.request_count,
                raw_request=raw_request,
                url=raw_request.url,
                method=raw_request.method,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
                text=body.decode(errors="replace"),
                data=json.loads(body) if body else None,
            )
        self._requests.append(request)
        try:
            response = await self._handle(request)
        except Exception as exc:
            response = _status(500, type(exc).__name__, repr(exc))
        self.answers[response.status] += 1
        return response

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        parsed = parse_path(request.url.path)
        if parsed is None:
            return await self._discovery(request)
        rkey, namespace, name, subresource = parsed
        # kmock's own parsing mistakes /api/v1/namespaces/NAME for a namespace scope.
        request = attrs.evolve(request, name=name, namespace=namespace, subresource=subresource)
        group, _, plural = rkey.split("/")
        try:
            info = self.info(rkey)
            verb = self._verb(request)
            self.verbs[verb] += 1
            self.requests_by[f"{verb} {plural}{'/' + subresource if subresource else ''}"] += 1
            self.calls.add((group, f"{plural}/{subresource}" if subresource else plural, verb))
            namespace = namespace if info.namespaced else None
            # The server's default for a request without the parameter is Warn.
            validation = request.params.get("fieldValidation") or "Warn"
            warned = len(self.warnings)
            if verb == "watch":
                return await self._watch(request, rkey, namespace)
            if verb == "list":
                return self._list(request, rkey, namespace)
            if verb == "create":
                obj = self.create_object(
                    rkey, namespace, request.data or {}, field_validation=validation
                )
                return self._answer(obj, self.warnings[warned:], status=201)
            assert request.name is not None
            if subresource == "scale":
                return self._scale(request, rkey, namespace, request.name, verb)
            if verb == "get":
                found = self.read_object(rkey, namespace, request.name)
                if found is None:
                    raise ApiFailureError(404, "NotFound", f'{rkey} "{request.name}" not found')
                obj = found
                if rkey in self.crds and apiserver_table.wants_table(
                    request.headers.get("Accept", "")
                ):
                    return aiohttp.web.json_response(self._table(request, rkey, [obj]))
                return aiohttp.web.json_response(obj)
            if verb == "delete":
                propagation = self._propagation(request)
                deleted = self.delete_object(rkey, namespace, request.name, propagation=propagation)
                return aiohttp.web.json_response(deleted)
            if verb in ("patch", "update"):
                change = self._change(request, verb)
                obj = self.update_object(
                    rkey,
                    namespace,
                    request.name,
                    change,
                    subresource=request.subresource,
                    field_validation=validation,
                )
                return self._answer(obj, self.warnings[warned:])
            raise ApiFailureError(405, "MethodNotAllowed", f"{request.method} is not supported")
        except ApiFailureError as failure:
            if failure.status is not None:
                return aiohttp.web.json_response(failure.status, status=failure.code)
            return _status(failure.code, failure.reason, failure.message)

    @staticmethod
    def _answer(obj: Obj, warnings: list[str], status: int = 200) -> aiohttp.web.Response:
        """A JSON answer with the API server's Warning headers (RFC 7234 code 299)."""
        response = aiohttp.web.json_response(obj, status=status)
        for warning in warnings:
            response.headers.add("Warning", f"299 - {json.dumps(warning)}")
        return response

    @staticmethod
    def _propagation(request: rendering.Request) -> str:
        """The propagationPolicy of a DELETE, from the query or the DeleteOptions body."""
        policy = request.params.get("propagationPolicy")
        if not policy and request.body:
            options = json.loads(request.body)
            if isinstance(options, dict):
                policy = options.get("propagationPolicy")
                if not policy and options.get("orphanDependents") is True:
                    policy = "Orphan"
        return str(policy or "Background")

    def _table(self, request: rendering.Request, rkey: str, objects: list[Obj]) -> Obj:
        _, version = self.crds[rkey]
        return apiserver_table.table(
            apiserver_table.printer_columns(version),
            objects,
            resource_version=str(self._last_rv),
            include_object=request.params.get("includeObject") or "Metadata",
        )

    def _scale_paths(self, rkey: str) -> tuple[str, str, str | None]:
        """(spec replicas, status replicas, label selector) paths of a scalable resource."""
        if rkey in self.crds:
            scale = (self.crds[rkey][1].get("subresources") or {}).get("scale")
            if scale is None:
                raise ApiFailureError(404, "NotFound", f"{rkey} has no scale subresource")
            return (
                scale["specReplicasPath"],
                scale["statusReplicasPath"],
                scale.get("labelSelectorPath"),
            )
        if rkey in (DEPLOYMENTS, "apps/v1/replicasets", "apps/v1/statefulsets"):
            return ".spec.replicas", ".status.replicas", None
        raise ApiFailureError(404, "NotFound", f"{rkey} has no scale subresource")

    def _scale_of(self, rkey: str, obj: Obj) -> Obj:
        """The autoscaling/v1 Scale of an object."""
        spec_path, status_path, selector_path = self._scale_paths(rkey)
        replicas = apiserver_table.json_path(obj, spec_path)
        observed = apiserver_table.json_path(obj, status_path)
        if selector_path is not None:
            found = apiserver_table.json_path(obj, selector_path)
            selector = found[0] if found and isinstance(found[0], str) else ""
        else:
            labels = (obj.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": int(replicas[0]) if replicas else 0},
            "status": {"replicas": int(observed[0]) if observed else 0, "selector": selector},
        }

    def _scale(
        self, request: rendering.Request, rkey: str, namespace: str | None, name: str, verb: str
    ) -> aiohttp.web.Response:
        """GET, PUT and PATCH of the scale subresource."""
        obj = self.read_object(rkey, namespace, name)
        if obj is None:
            raise ApiFailureError(404, "NotFound", f'{rkey} "{name}" not found')
        scale = self._scale_of(rkey, obj)
        if verb == "get":
            return aiohttp.web.json_response(scale)
        if verb not in ("patch", "update"):
            raise ApiFailureError(405, "MethodNotAllowed", f"{request.method} is not supported")
        wanted = self._change(request, verb)(copy.deepcopy(scale))
        sent_rv = (wanted.get("metadata") or {}).get("resourceVersion")
        replicas = (wanted.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            message = (
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{apiserver_schema.go_value(replicas)}: must be greater than or equal to 0"
            )
            raise ApiFailureError(422, "Invalid", message)
        parts = self._scale_paths(rkey)[0].strip(".").split(".")

        def set_replicas(o: Obj) -> Obj:
            node = o
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = replicas
            if sent_rv:
                o["metadata"]["resourceVersion"] = sent_rv
            return o

        updated = self.update_object(rkey, namespace, name, set_replicas)
        return aiohttp.web.json_response(self._scale_of(rkey, updated))

    @staticmethod
    def _verb(request: rendering.Request) -> str:
        method = str(request.method.value).upper()
        if method == "GET":
            if request.params.get("watch") in ("true", "1"):
                return "watch"
            return "get" if request.name else "list"
        return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
            method, method.lower()
        )

    @staticmethod
    def _change(request: rendering.Request, verb: str) -> Callable[[Obj], Obj]:
        body = json.loads(request.body or b"null")
        if verb == "update":
            return lambda old: body
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype == "application/json-patch+json":
            return lambda old: json_patch(old, body)
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return lambda old: merge_patch(old, body)
        raise ApiFailureError(
            415, "UnsupportedMediaType", f"the patch type {ctype!r} is not supported"
        )

    def _list(
        self, request: rendering.Request, rkey: str, namespace: str | None
    ) -> aiohttp.web.Response:
        labels = label_matcher(request.params.get("labelSelector"))
        fields = field_matcher(request.params.get("fieldSelector"))
        items = [
            o
            for o in self.list_objects(rkey, namespace)
            if labels(o["metadata"].get("labels") or {}) and fields(o)
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        if rkey in self.crds and apiserver_table.wants_table(request.headers.get("Accept", "")):
            return aiohttp.web.json_response(self._table(request, rkey, items))
        return aiohttp.web.json_response(
            {
                "apiVersion": self._api_version(rkey),
                "kind": f"{self.info(rkey).kind}List",
                "metadata": {"resourceVersion": str(self._last_rv)},
                "items": items,
            }
        )

    async def _watch(
        self, request: rendering.Request, rkey: str, namespace: str | None
    ) -> aiohttp.web.StreamResponse:
        labels = label_matcher(request.params.get("labelSelector"))
        fields = field_matcher(request.params.get("fieldSelector"))
        if request.name:
            named = request.name
            base = fields
            fields = lambda o: o["metadata"]["name"] == named and base(o)  # noqa: E731

        def visible(obj: Obj) -> bool:
            ns_ok = namespace is None or obj["metadata"].get("namespace") == namespace
            return ns_ok and labels(obj["metadata"].get("labels") or {}) and fields(obj)

        as_table = rkey in self.crds and apiserver_table.wants_table(
            request.headers.get("Accept", "")
        )

        def line(kind: str, obj: Obj) -> bytes:
            if as_table and kind != "ERROR":
                obj = self._table(request, rkey, [obj])
            return self._line(kind, obj)

        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        loop = asyncio.get_running_loop()
        timeout = float(request.params.get("timeoutSeconds") or 1800)
        deadline = loop.time() + timeout
        since_text = request.params.get("resourceVersion") or "0"
        since = int(since_text) if since_text.isdigit() else 0
        # A streaming list (kubectl's WatchList): the current objects, then a bookmark that
        # marks the end of the initial events, whatever resourceVersion was given.
        initial_events = request.params.get("sendInitialEvents") == "true"
        try:
            if since == 0 or initial_events:
                since = self._last_rv
                for obj in self.list_objects(rkey, namespace):
                    if visible(obj):
                        await response.write(line("ADDED", obj))
                if initial_events:
                    await response.write(self._line("BOOKMARK", self._bookmark(rkey)))
            elif self._log and since < self._log[0][0] - 1:
                gone = {"kind": "Status", "code": 410, "reason": "Expired", "status": "Failure"}
                await response.write(self._line("ERROR", gone))
                return response
            while loop.time() < deadline:
                changed = self._changed
                for rv, key, kind, obj in self._log[self._first_after(since) :]:
                    since = rv
                    if key == rkey and visible(obj):
                        await response.write(line(kind, obj))
                try:
                    await asyncio.wait_for(changed.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        return response

    def _bookmark(self, rkey: str) -> Obj:
        """The bookmark that ends the initial events of a streaming list."""
        return {
            "kind": self.info(rkey).kind,
            "apiVersion": self._api_version(rkey),
            "metadata": {
                "resourceVersion": str(self._last_rv),
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        }

    def _first_after(self, rv: int) -> int:
        lo, hi = 0, len(self._log)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._log[mid][0] <= rv:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @staticmethod
    def _line(kind: str, obj: Obj) -> bytes:
        return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

    async def _discovery(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        return await super()._handle(request)

    async def _serve_server_version(self, request: rendering.Request) -> Any:
        major, minor, patch = chart_minimum_version()
        return {
            "major": str(major),
            "minor": str(minor),
            "gitVersion": f"v{major}.{minor}.{patch}",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-04-17T17:27:03Z",
            "goVersion": "go1.22.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    async def _serve_version(self, request: rendering.Request) -> Any:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and payload.get("groupVersion", "").startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        if isinstance(payload, dict):
            for entry in payload.get("resources", []):
                if "/" in entry["name"]:
                    # Subresources have no names of their own (kubectl warns of ambiguity else).
                    entry["singularName"] = ""
                    entry["shortNames"], entry["categories"] = [], []
        return payload

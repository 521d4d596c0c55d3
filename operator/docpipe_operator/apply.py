"""Applying a round: create, patch or delete the children that differ, annotate pods before a
scale-down, post the Events, write the status when it changed. Decides nothing: `decision` did.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import kopf

from docpipe_operator import cluster
from docpipe_operator.decision import (
    DELETION_COST,
    ROLLBACK_ANNOTATION,
    ChildChange,
    Memory,
    Pipeline,
    Round,
    status_patch,
)

log = logging.getLogger(__name__)

RESOURCES: dict[str, cluster.Resource] = {
    "Deployment": cluster.DEPLOYMENTS,
    "Service": cluster.SERVICES,
    "PodDisruptionBudget": cluster.PODDISRUPTIONBUDGETS,
    "PodMonitor": cluster.PODMONITORS,
}


async def apply_round(
    client: cluster.KubeClient,
    body: kopf.Body,
    pipeline: Pipeline,
    decided: Round,
    memory: Memory,
    now: datetime,
) -> Memory:
    """Carry out `decided`; return `memory` with the status as now stored."""
    namespace = pipeline.namespace
    for pod, cost in decided.deletion_costs.items():
        annotate = {"metadata": {"annotations": {DELETION_COST: str(cost)}}}
        # A pod gone meanwhile needs no cost.
        with contextlib.suppress(cluster.NotFoundError):
            await client.merge_patch(cluster.PODS, namespace, pod, annotate)
    error = None
    expected = dict(memory.expected)
    try:
        for change in decided.changes:
            created = await _change(client, namespace, change)
            if created is not None:
                expected[(change.kind, change.name)] = (time.monotonic(), created)
    except cluster.ApiError as exc:
        error = str(exc)
    memory = replace(memory, expected=expected)
    status = decided.status if error is None else decided.failed(error, now)
    events = (
        *decided.events,
        *(decided.rollout_events if error is None else ()),
        *decided.transitions(status),
    )
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if decided.clear_rollback:
        clear = {"metadata": {"annotations": {ROLLBACK_ANNOTATION: None}}}
        await client.merge_patch(cluster.PIPELINES, namespace, pipeline.name, clear)
    stored = memory.status if memory.status is not None else pipeline.status
    patch = status_patch(stored, status, figures=decided.figures_due)
    if patch is None:
        return replace(memory, status=stored)
    await client.merge_patch(cluster.PIPELINE_STATUS, namespace, pipeline.name, patch)
    return replace(memory, status=status, status_written=time.monotonic())


async def _change(client: cluster.KubeClient, namespace: str, change: ChildChange) -> str | None:
    """Make one change; the uid of the object a create made (None for any other change)."""
    resource = RESOURCES[change.kind]
    body: dict[str, Any] = dict(change.body or {})
    if change.verb == "create":
        try:
            created = await client.create(resource, namespace, body)
            return str((created.get("metadata") or {}).get("uid") or "") or None
        except cluster.ApiError as exc:
            # The watch has not shown it yet: it will, and wake the next round.
            if exc.status != 409:
                raise
            log.info(
                "%s %s/%s exists already: the watch will show it",
                change.kind,
                namespace,
                change.name,
            )
    elif change.verb == "patch":
        await client.merge_patch(resource, namespace, change.name, body)
    elif change.verb == "delete":
        await client.delete(resource, namespace, change.name)
    return None

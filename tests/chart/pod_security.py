"""The Pod Security Standards' "restricted" profile (which includes "baseline"), as the
PodSecurity admission controller checks it (Kubernetes 1.30 and later), for pod templates the
tests render: a namespace labelled `pod-security.kubernetes.io/enforce: restricted` admits a pod
exactly when `restricted_violations` finds nothing.

https://kubernetes.io/docs/concepts/security/pod-security-standards/
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tests.chart.rendering import Manifest

# Baseline: the only sysctls a pod may set.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
# Restricted: the only volume types.
VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


def pod_templates(manifests: Iterable[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template with metadata and spec) of every Pod and pod template rendered."""
    found = []
    for manifest in manifests:
        kind = manifest["kind"]
        where = f"{kind}/{manifest['metadata']['name']}"
        if kind == "Pod":
            found.append((where, {"metadata": manifest["metadata"], "spec": manifest["spec"]}))
        elif kind in WORKLOAD_KINDS:
            found.append((where, manifest["spec"]["template"]))
        elif kind == "CronJob":
            found.append((where, manifest["spec"]["jobTemplate"]["spec"]["template"]))
    return found


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in CONTAINER_LISTS:
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name', '?')}]", container


def _baseline_context(where: str, context: dict[str, Any]) -> list[str]:
    """Baseline rules that apply alike to the pod's and each container's securityContext."""
    found = []
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        found.append(f"{where}: windowsOptions.hostProcess")
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        found.append(f"{where}: seLinuxOptions.type {selinux['type']!r}")
    for field in ("user", "role"):
        if selinux.get(field):
            found.append(f"{where}: seLinuxOptions.{field} is set")
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor not in {None, "RuntimeDefault", "Localhost"}:
        found.append(f"{where}: appArmorProfile.type {apparmor!r}")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        found.append(f"{where}: seccompProfile.type {seccomp!r}")
    user = context.get("runAsUser")
    if user == 0:
        found.append(f"{where}: runAsUser 0")
    return found


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """What the restricted profile refuses in a pod (template): empty when it is admitted."""
    spec: dict[str, Any] = template.get("spec") or {}
    annotations: dict[str, str] = (template.get("metadata") or {}).get("annotations") or {}
    pod_context: dict[str, Any] = spec.get("securityContext") or {}
    found: list[str] = []

    # Baseline: host namespaces, host paths and ports, privilege, sysctls, AppArmor, SELinux.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"pod: {field}")
    found += _baseline_context("pod securityContext", pod_context)
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"pod: sysctl {sysctl.get('name')}")
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"pod: annotation {key}={value}")

    # Restricted: volume types.
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= VOLUME_TYPES:
            found.append(f"volume {volume.get('name')}: type {', '.join(sorted(kinds))}")

    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type") in SECCOMP_TYPES
    for where, container in _containers(spec):
        context: dict[str, Any] = container.get("securityContext") or {}
        found += _baseline_context(where, context)
        if context.get("privileged"):
            found.append(f"{where}: privileged")
        if (context.get("procMount") or "Default") != "Default":
            found.append(f"{where}: procMount {context['procMount']}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{where}: hostPort {port['hostPort']}")
        # Restricted: no privilege escalation, non-root, a seccomp profile, capabilities.
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            found.append(f"{where}: runAsNonRoot is not true (pod or container)")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is None and not pod_seccomp:
            found.append(
                f"{where}: no seccompProfile RuntimeDefault or Localhost (pod or container)"
            )
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{where}: capabilities.drop lacks ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"{where}: capabilities.add {', '.join(sorted(added))}")
    return found

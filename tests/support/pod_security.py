"""Pod Security admission's ``baseline`` and ``restricted`` levels (policy version ``latest``, Kubernetes
1.37), hand-written from k8s.io/pod-security-admission's checks, for pod specs the manager writes or ships.

Checked, baseline: host namespaces (hostNetwork, hostPID, hostIPC), Windows hostProcess, privileged
containers, capabilities added beyond the baseline set, hostPath volumes, hostPorts, AppArmor profiles
other than RuntimeDefault/Localhost, SELinux options (type outside the allowed ones, user or role set),
procMount other than Default, seccomp ``Unconfined``, unsafe sysctls. Restricted adds: volume types
(configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, secret),
allowPrivilegeEscalation false, runAsNonRoot true and no runAsUser 0, seccomp RuntimeDefault or
Localhost, capabilities dropping ALL and adding none but NET_BIND_SERVICE. Each check reads a container's
own securityContext over the pod's where Kubernetes does so. Not checked: the pod's metadata
annotations for AppArmor (the manager sets none of its own).
"""

from __future__ import annotations

from typing import Any

_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def baseline_violations(spec: dict[str, Any]) -> list[str]:
    """What the ``baseline`` level refuses in a pod spec."""
    pod = spec.get("securityContext") or {}
    found = [f"host namespace {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    found += [f"hostPath volume {v['name']}" for v in spec.get("volumes") or [] if "hostPath" in v]
    found += [
        f"unsafe sysctl {s['name']}" for s in pod.get("sysctls") or [] if s["name"] not in _SAFE_SYSCTLS
    ]
    for c in _containers(spec):
        context = {**pod, **(c.get("securityContext") or {})}
        name = c["name"]
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{name} is a Windows host process")
        if context.get("privileged"):
            found.append(f"{name} is privileged")
        extra = set((context.get("capabilities") or {}).get("add") or []) - _BASELINE_CAPABILITIES
        found += [f"{name} adds {cap}" for cap in sorted(extra)]
        found += [f"{name} uses a hostPort" for p in c.get("ports") or [] if p.get("hostPort")]
        if (context.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in (
            "RuntimeDefault",
            "Localhost",
        ):
            found.append(f"{name} has an AppArmor profile other than RuntimeDefault or Localhost")
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{name} sets SELinux options")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name} unmasks /proc")
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"{name} is seccomp Unconfined")
    return found


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """``baseline`` plus what the ``restricted`` level adds, in a pod spec."""
    found = baseline_violations(spec)
    pod = spec.get("securityContext") or {}
    found += [
        f"volume type of {v['name']}"
        for v in spec.get("volumes") or []
        if not set(v) - {"name"} <= _RESTRICTED_VOLUMES
    ]
    for c in _containers(spec):
        context = {**pod, **(c.get("securityContext") or {})}
        name = c["name"]
        if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
            found.append(f"{name} may escalate privileges")
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
            found.append(f"{name} may run as root")
        if (context.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name} has no seccomp profile")
        capabilities = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name} does not drop ALL capabilities")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name} adds capabilities")
    return found

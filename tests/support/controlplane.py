"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, built from the Go module proxy by ``scripts/build-controlplane``.

Started once per session (about ten seconds); each component can be stopped and started again on the same
ports and data (``stop``/``start``), so tests can take the apiserver or etcd away mid-stream. RBAC and the
admission chain are the real ones (Node,RBAC authorisation; PodSecurity, ServiceAccount and PodNodeSelector
admission among the defaults); an audit log records who asked for what. Pods are played by kwok
(``tests.support.kwok_stages``) on nodes labelled for it, or really run by the tests' runner kubelet
(``tests.support.runner_kubelet``) on nodes of their own.

Different from a production cluster on purpose: one node-lifecycle rule. The controller manager's node
lifecycle controller is off, so nodes never turn NotReady because a test stopped etcd or the apiserver for
longer than the grace period (that would taint them and evict the pods under test); the ``not-ready`` taint
a new node is created with is lifted by the tests instead (:func:`untaint`).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.components import free_port
from tests.support.kube_pki import KeyPair, Pki
from tests.support.kwok_stages import KWOK_NODE_LABEL, configuration

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-controlplane"
KWOK_NODE = "kwok-node"
# A RoleBinding of deploy/kubernetes, and the ServiceAccount it lets watch Jobs: (namespace, name, user).
RBAC_PROBE = ("oscar-svc", "oscar-controller", "system:serviceaccount:oscar:oscar-sa")
# The PodNodeSelector admission plugin's annotation: every pod of the namespace gets that node selector.
NODE_SELECTOR = "scheduler.alpha.kubernetes.io/node-selector"
# What the audit log keeps: who did what to which resource, for every request; with the body of each Job
# created (tests read back what the manager sent, once the Job is gone).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Request", "verbs": ["create"], "resources": [{"group": "batch", "resources": ["jobs"]}]},
        {"level": "Metadata"},
    ],
}


def locate_binaries() -> Path:
    """The folder of etcd, kube and kwok: ``$OSCAR_CONTROLPLANE_BIN`` or the build (run here if needed)."""
    given = os.environ.get("OSCAR_CONTROLPLANE_BIN")
    if given:
        return Path(given)
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=3600
    )
    return Path(done.stdout.strip())


def kubeconfig(server: str, ca: Path, *, user: dict[str, Any], namespace: str = "default") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
            "users": [{"name": "user", "user": user}],
            "contexts": [
                {"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}
            ],
            "current-context": "test",
        }
    )


def untaint(http: httpx.Client, node: str) -> None:
    """A node is created tainted ``not-ready``; the node lifecycle controller (off here, see above) lifts
    the taint once the node is Ready, so this does it in its place."""
    answer = http.patch(
        f"/api/v1/nodes/{node}",
        json={"spec": {"taints": None}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    answer.raise_for_status()


@dataclass
class Component:
    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class ControlPlane:
    binaries: Path
    folder: Path
    pki: Pki
    admin: KeyPair
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    kwok_port: int = field(default_factory=free_port)
    components: dict[str, Component] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca(self) -> Path:
        return self.pki.ca.cert

    @property
    def audit_log(self) -> Path:
        return self.folder / "audit.log"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.folder / "admin.kubeconfig"

    def admin_tls(self) -> ssl.SSLContext:
        """TLS as the admin: the apiserver checked against the CA, the admin's client certificate shown."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.admin.cert, self.admin.key)
        return context

    def http(self, **options: Any) -> httpx.Client:
        """A blocking client of the apiserver as the admin (system:masters)."""
        return httpx.Client(base_url=self.url, verify=self.admin_tls(), **options)

    def async_http(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=self.admin_tls(), **options)

    @classmethod
    def start_all(cls, binaries: Path, folder: Path) -> ControlPlane:
        pki = Pki.create(folder / "pki")
        plane = cls(binaries=binaries, folder=folder, pki=pki, admin=pki.client("admin"))
        (folder / "logs").mkdir(exist_ok=True)
        plane.admin_kubeconfig.write_text(
            kubeconfig(
                plane.url,
                plane.ca,
                user={"client-certificate": str(plane.admin.cert), "client-key": str(plane.admin.key)},
            )
        )
        plane._define()
        try:
            plane.start("etcd")
            plane.start("apiserver")
            plane.start("controller-manager")
            plane.start("scheduler")
            plane._add_kwok_node()
            plane.start("kwok")
            plane._wait_node_ready(KWOK_NODE)
            with plane.http(timeout=10) as http:
                untaint(http, KWOK_NODE)
            plane._wait_job_completes()
        except BaseException:
            plane.stop_all()
            raise
        return plane

    def _component_kubeconfig(self, name: str) -> Path:
        pair = self.pki.client(name)
        path = self.folder / f"{name}.kubeconfig"
        path.write_text(
            kubeconfig(
                self.url, self.ca, user={"client-certificate": str(pair.cert), "client-key": str(pair.key)}
            )
        )
        return path

    def _define(self) -> None:
        pki = self.pki
        serving = pki.apiserver()
        kubelet_client = pki.client("apiserver-kubelet-client")
        kwok_serving = pki.node_server("kwok")
        (self.folder / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        logs_file = self.folder / "kwok-pod.log"
        logs_file.write_text("2026-01-01T00:00:00.000000000Z stdout F a pod that kwok played\n")
        (self.folder / "kwok.yaml").write_text(
            configuration(node_port=self.kwok_port, logs_file=str(logs_file))
        )
        kube = str(self.binaries / "kube")
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        commands = {
            "etcd": [
                str(self.binaries / "etcd"),
                "--data-dir",
                str(self.folder / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{self.etcd_peer_port}",
                "--listen-metrics-urls",
                f"http://127.0.0.1:{free_port()}",
                "--unsafe-no-fsync",
            ],
            "apiserver": [
                kube,
                "apiserver",
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_public}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=PodNodeSelector",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={self.folder / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--profiling=false",
            ],
            "controller-manager": [
                kube,
                "controller-manager",
                f"--kubeconfig={self._component_kubeconfig('controller-manager')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                "--controllers=*,-node-lifecycle-controller",
                "--profiling=false",
            ],
            "scheduler": [
                kube,
                "scheduler",
                f"--kubeconfig={self._component_kubeconfig('scheduler')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            "kwok": [
                str(self.binaries / "kwok"),
                f"--kubeconfig={self._component_kubeconfig('kwok')}",
                f"--config={self.folder / 'kwok.yaml'}",
                f"--server-address=127.0.0.1:{self.kwok_port}",
                f"--tls-cert-file={kwok_serving.cert}",
                f"--tls-private-key-file={kwok_serving.key}",
            ],
        }
        for name, command in commands.items():
            self.components[name] = Component(name, command, self.folder / "logs" / f"{name}.log")

    def start(self, name: str, *, timeout: float = 60) -> None:
        """Start a component (again) and wait until it answers."""
        component = self.components[name]
        component.start()
        deadline = time.monotonic() + timeout
        while not self._healthy(name):
            if not component.alive():
                raise RuntimeError(f"{name} exited: {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not healthy after {timeout} s: {self.log_tail(name)}")
            time.sleep(0.1)

    def stop(self, name: str, *, kill: bool = False) -> None:
        self.components[name].stop(kill=kill)

    def compact_etcd(self) -> None:
        """A write, then etcd's history compacted up to it (through etcd's own HTTP gateway, the apiserver
        may be down): every resourceVersion seen so far is too old to watch from (410 Gone), as happens
        when a watcher was away longer than the history kept."""
        etcd = f"http://127.0.0.1:{self.etcd_port}/v3/kv"
        key = base64.b64encode(b"/oscar-tests/compaction").decode()
        with httpx.Client(timeout=10) as http:
            written = http.post(f"{etcd}/put", json={"key": key, "value": key})
            written.raise_for_status()
            revision = written.json()["header"]["revision"]
            http.post(f"{etcd}/compaction", json={"revision": revision, "physical": True}).raise_for_status()

    def stop_all(self) -> None:
        for name in reversed(list(self.components)):
            self.components[name].stop()

    def log_tail(self, name: str, lines: int = 30) -> str:
        text = (
            self.components[name].log.read_text(errors="replace")
            if self.components[name].log.exists()
            else ""
        )
        return "\n".join(text.splitlines()[-lines:])

    def _healthy(self, name: str) -> bool:
        try:
            if name == "etcd":
                return httpx.get(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2).status_code == 200
            if name == "apiserver":
                with self.http(timeout=2) as http:
                    return http.get("/readyz").status_code == 200 and self._rbac_in_force(http)
            if name in ("controller-manager", "scheduler"):
                port = next(
                    arg.split("=", 1)[1] for arg in self.components[name].command if "--secure-port" in arg
                )
                # Their serving certificates are self-signed, made at start: nothing to verify them against.
                answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2)  # noqa: S501
                return answer.status_code == 200
            return self.components[name].alive()  # kwok: its node turning Ready is waited for by the caller
        except httpx.HTTPError:
            return False

    def _rbac_in_force(self, http: httpx.Client) -> bool:
        """A restarted apiserver answers ``/readyz`` before its RBAC authoriser has every RoleBinding: for a
        moment it refuses what they allow (403). Ready means: the shipped Role is in force (once applied)."""
        namespace, name = RBAC_PROBE[0], RBAC_PROBE[1]
        path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings/{name}"
        if http.get(path).status_code == 404:
            return True  # not applied (yet): nothing to wait for
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": RBAC_PROBE[2],
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "watch",
                    "group": "batch",
                    "resource": "jobs",
                },
            },
        }
        answer = http.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", json=review)
        return answer.is_success and bool(answer.json()["status"].get("allowed"))

    def _add_kwok_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": KWOK_NODE, "labels": {KWOK_NODE_LABEL: "kwok", "type": "kwok"}},
        }
        with self.http(timeout=10) as http:
            http.post("/api/v1/nodes", json=node).raise_for_status()

    def _wait_job_completes(self, timeout: float = 90) -> None:
        """The controller manager starts its controllers one by one for seconds after it answers healthy:
        the plane is ready when a Job gets its pod, scheduled, played by kwok and seen Complete."""
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "plane-probe", "annotations": {NODE_SELECTOR: "type=kwok"}},
        }
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}
        container = {"name": "probe", "image": "probe", "command": ["true"]}
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "probe"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
        }
        deadline = time.monotonic() + timeout
        with self.http(timeout=10) as http:
            http.post("/api/v1/namespaces", json=namespace).raise_for_status()
            http.post("/api/v1/namespaces/plane-probe/serviceaccounts", json=account)  # 409: made already
            http.post("/apis/batch/v1/namespaces/plane-probe/jobs", json=job).raise_for_status()
            while time.monotonic() < deadline:
                status = http.get("/apis/batch/v1/namespaces/plane-probe/jobs/probe").json().get("status", {})
                if any(
                    c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", [])
                ):
                    return
                time.sleep(0.1)
        raise RuntimeError(
            f"a probe Job did not complete in {timeout} s: {self.log_tail('controller-manager')}"
        )

    def _wait_node_ready(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.http(timeout=10) as http:
            while time.monotonic() < deadline:
                node = http.get(f"/api/v1/nodes/{name}").json()
                conditions = (node.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return
                time.sleep(0.1)
        raise RuntimeError(f"node {name} not Ready after {timeout} s: {self.log_tail('kwok')}")


@dataclass(frozen=True)
class AuditRecord:
    verb: str  # create, get, list, watch, update, patch, delete, deletecollection
    resource: str  # jobs, pods/log...
    namespace: str
    name: str
    code: int
    body: dict[str, Any] | None = None  # the object sent, where the policy keeps it (Jobs created)
    dry_run: bool = False  # ?dryRun=All: checked, not stored
    group: str = ""  # the resource's API group: "" (core), "batch", "metrics.k8s.io"...


def audit_records(path: Path, *, user: str, start: int = 0) -> list[AuditRecord]:
    """What ``user`` asked the apiserver for, in order, from byte ``start`` of the audit log on."""
    records = []
    with path.open("rb") as log:
        log.seek(start)
        for line in log:
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete" or event["user"].get("username") != user:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            records.append(
                AuditRecord(
                    verb=event["verb"],
                    resource=resource,
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                    body=event.get("requestObject"),
                    dry_run="dryRun=" in event.get("requestURI", ""),
                    group=ref.get("apiGroup", ""),
                )
            )
    return records

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer

from oscar_manager.operations import Database
from oscar_manager.settings import Settings
from oscar_manager.storage.s3 import S3ObjectStore
from tests.support.app import app_client
from tests.support.cluster_view import Cluster
from tests.support.components import PostgresServer, unavailable
from tests.support.controlplane import ControlPlane, locate_binaries
from tests.support.databases import PostgresDatabases, SqliteDatabases
from tests.support.factories import make_settings
from tests.support.kafka import KafkaServer, kafka_home, start_kafka
from tests.support.kube_api import KubeApiDouble
from tests.support.kube_cluster import (
    MOTO_KEYS,
    JobNamespace,
    create_namespace,
    install_shipped_rbac,
    manager_settings,
    service_account_token,
)
from tests.support.kubelet import BusyboxImage, SupervisorKubelet
from tests.support.minio import MinioServer, locate_minio_binary, start_minio
from tests.support.runner_kubelet import ApiObjects, RunnerKubelet
from tests.support.supervisor import BusyboxRoot, build_executable, static_busybox
from tests.support.warm_pods import Warm, warm_backend

DATABASE_KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    url = os.environ.get("OSCAR_TEST_DATABASE_URL")
    server = None
    if not url:
        try:
            server = PostgresServer.start()
        except Exception as exc:
            unavailable(f"cannot start a PostgreSQL server: {exc}")
        url = server.url
    try:
        yield PostgresDatabases(url)
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def sqlite_databases(tmp_path_factory: pytest.TempPathFactory) -> SqliteDatabases:
    return SqliteDatabases(tmp_path_factory.mktemp("sqlite-templates"))


def _database(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool) -> Iterator[str]:
    if request.param == "sqlite":
        sqlite: SqliteDatabases = request.getfixturevalue("sqlite_databases")
        yield sqlite.create(tmp_path / "oscar.db", migrated=migrated)
        return
    postgres: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = postgres.create(migrated=migrated)
    try:
        yield url
    finally:
        postgres.drop(url)


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database, once on SQLite and once on PostgreSQL."""
    yield from _database(request, tmp_path, migrated=True)


@pytest.fixture(params=DATABASE_KINDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database with no tables, once on SQLite and once on PostgreSQL."""
    yield from _database(request, tmp_path, migrated=False)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url=database_url, data_dir=tmp_path / "data")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a fresh database, driven in-process, authenticated as the admin."""
    async with app_client(settings) as http:
        yield http


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The real Kubernetes control plane (``tests.support.controlplane``), built on first use (about ten
    minutes once, then cached in ``.cache/``) and started for the whole session (about ten seconds)."""
    try:
        binaries = locate_binaries()
    except (subprocess.SubprocessError, OSError) as exc:
        unavailable(f"cannot build the Kubernetes control plane: {exc}")
    try:
        plane = ControlPlane.start_all(binaries, tmp_path_factory.mktemp("controlplane"))
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        unavailable(f"cannot start the Kubernetes control plane: {exc}")
    try:
        yield plane
    finally:
        plane.stop_all()


@pytest.fixture(scope="session")
async def kube_admin(control_plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    """The apiserver as its admin, with ``deploy/kubernetes``'s namespaces and RBAC applied."""
    async with control_plane.async_http(timeout=30) as http:
        await install_shipped_rbac(http)
        yield http


@pytest.fixture(scope="session")
async def manager_token(kube_admin: httpx.AsyncClient) -> str:
    """A token of the shipped ServiceAccount: the manager runs with exactly the shipped RBAC."""
    return await service_account_token(kube_admin)


@pytest.fixture
async def kube_namespace(kube_admin: httpx.AsyncClient) -> JobNamespace:
    """A namespace of the test's own for its jobs, like the shipped one; its pods go to its own node."""
    return await create_namespace(kube_admin, node=f"node-{secrets.token_hex(4)}", credentials=MOTO_KEYS)


@pytest.fixture
async def kubernetes_settings(
    settings: Settings,
    control_plane: ControlPlane,
    kube_admin: httpx.AsyncClient,
    manager_token: str,
    kube_namespace: JobNamespace,
    moto_endpoint: str,
    tmp_path: Path,
    busybox: Path,
    supervisor_executable: Path,
    bwrap: str,
) -> AsyncIterator[Settings]:
    """``settings`` on the Kubernetes backend of the real control plane, as the shipped ServiceAccount. The
    test's node is the runner kubelet: its pods really run (the supervisor executable copied by the init
    container, in a busybox-only root). ``minio.default`` is moto's S3 server (emptied first: tests reuse
    bucket names)."""
    image = BusyboxImage(busybox=busybox, supervisor=supervisor_executable, bwrap=bwrap)
    node = kube_namespace.node
    pods = SupervisorKubelet(ApiObjects(kube_admin), tmp_path / "pods", node=node, image=image)
    serving = control_plane.pki.node_server(node)
    async with RunnerKubelet.running(http=kube_admin, node=node, serving=serving, runner=pods):
        async with httpx.AsyncClient() as http:
            (await http.post(f"{moto_endpoint}/moto-api/reset")).raise_for_status()
        yield manager_settings(
            settings,
            control_plane,
            manager_token,
            kube_namespace.name,
            tmp_path,
            minio_endpoint=moto_endpoint,
            minio_access_key=MOTO_KEYS["accessKey"],
            minio_secret_key=MOTO_KEYS["secretKey"],
            oscar_minio_listen=False,  # moto has no ListenBucketNotification
        )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread of this process, one for the whole session (tests use unique buckets)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto's S3 server is not installed: {exc}")
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_log.setLevel(logging.WARNING)  # one line per request otherwise
    try:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
    except Exception as exc:
        unavailable(f"cannot start moto's S3 server: {exc}")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def s3_store(moto_endpoint: str) -> AsyncIterator[S3ObjectStore]:
    async with S3ObjectStore.connect(
        endpoint=moto_endpoint, access_key="testing", secret_key="testing", region="us-east-1"
    ) as store:
        yield store


@pytest.fixture(scope="session")
async def kafka_broker() -> AsyncIterator[KafkaServer]:
    """A real Kafka broker (KRaft, one node) for the session; tests use topics of their own."""
    server = await start_kafka(kafka_home())
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture(scope="session")
def minio_binary() -> Path:
    """``$MINIO_BINARY`` or ``.cache/bin/minio`` (built by ``scripts/setup --test``, or here if missing)."""
    try:
        return locate_minio_binary()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        unavailable(f"no MinIO server binary: {exc}")


@pytest.fixture(scope="session")
async def minio_server(minio_binary: Path) -> AsyncIterator[MinioServer]:
    """A real MinIO for the whole session, without notification targets (tests use unique buckets)."""
    server = await start_minio(minio_binary)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture(scope="session")
async def minio_store(minio_server: MinioServer) -> AsyncIterator[S3ObjectStore]:
    async with S3ObjectStore.connect(
        endpoint=minio_server.endpoint,
        access_key=minio_server.access_key,
        secret_key=minio_server.secret_key,
        region="us-east-1",
    ) as store:
        yield store


@pytest.fixture
async def double() -> AsyncIterator[tuple[KubeApiDouble, str]]:
    """The Kubernetes API double on a loopback port: (the double, its URL)."""
    api = KubeApiDouble()
    server = TestServer(api.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield api, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture(scope="session")
def bwrap() -> str:
    found = shutil.which("bwrap")
    if found is None:
        unavailable("bubblewrap (bwrap) is not installed")
    return found


@pytest.fixture(scope="session")
def busybox(bwrap: str) -> Path:
    """A static busybox: the only program of the root the supervisor executable is tested in."""
    try:
        return static_busybox()
    except (RuntimeError, OSError, ValueError) as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def supervisor_executable(busybox: Path) -> Path:
    """``scripts/build-supervisor``'s executable: built on first use (under a minute), then reused while the
    hash of its inputs (the package's sources, pyproject.toml, the script) is unchanged."""
    try:
        return build_executable()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        unavailable(f"cannot build the supervisor executable: {exc}")


@pytest.fixture
def busybox_root(tmp_path: Path, bwrap: str, busybox: Path, supervisor_executable: Path) -> BusyboxRoot:
    """A fresh busybox-only root with the supervisor executable at /oscar/bin/supervisor."""
    root = BusyboxRoot.create(
        tmp_path / "root", busybox=busybox, supervisor=supervisor_executable, bwrap=bwrap
    )
    probe = root.execute(["/bin/true"])
    if probe.returncode != 0:
        unavailable(f"bubblewrap cannot start a sandbox here: {probe.stderr.decode(errors='replace')}")
    return root


@pytest.fixture
async def cluster(
    settings: Settings,
    control_plane: ControlPlane,
    kube_admin: httpx.AsyncClient,
    manager_token: str,
    kube_namespace: JobNamespace,
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    """A manager's place on the real control plane (its settings, its namespace), with a manual kubelet:
    the pods of its jobs run until the test ends them (``cluster.kubelet.finish``)."""
    node = kube_namespace.node
    serving = control_plane.pki.node_server(node)
    async with RunnerKubelet.running(http=kube_admin, node=node, serving=serving) as kubelet:
        yield Cluster(
            plane=control_plane,
            http=kube_admin,
            namespace=kube_namespace.name,
            kubelet=kubelet,
            settings=manager_settings(settings, control_plane, manager_token, kube_namespace.name, tmp_path),
            audit_start=control_plane.audit_log.stat().st_size,
        )


@pytest.fixture
async def warm_cluster(
    control_plane: ControlPlane,
    kube_admin: httpx.AsyncClient,
    manager_token: str,
    kube_namespace: JobNamespace,
    tmp_path: Path,
) -> AsyncIterator[Warm]:
    """A Kubernetes backend with warm pods that run (``tests.support.warm_pods``)."""
    async with warm_backend(control_plane, kube_admin, manager_token, kube_namespace, tmp_path) as warm:
        yield warm

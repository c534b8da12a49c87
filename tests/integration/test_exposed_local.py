"""Exposed services on the local backend, with real processes: servers in the bubblewrap sandbox (Python's
http.server, a websocket echo) reached through their relays, killed, crashing, scaled, stopped, removed.

Some tests look at the exposer's instances (the process to kill, how many run): nothing outside shows
them as directly, and the point is what the manager does with them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.backends.exposed import Endpoint, ExposedUnavailable
from oscar_manager.backends.exposed_deployment import Deployment
from oscar_manager.backends.exposed_local import LocalExposer
from oscar_manager.backends.exposed_policy import ExposeTimings
from oscar_manager.backends.local import LocalBackend
from oscar_manager.backends.sandbox import Sandbox, SandboxUnavailable
from oscar_manager.domain.service import (
    LOCAL_NETWORK_ANNOTATION,
    MinioDefault,
    Service,
    normalise_new,
    parse_service,
)
from oscar_manager.errors import BadRequest
from oscar_manager.local_runtime import shared_work_root, unprivileged_user
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from tests.support.components import unavailable
from tests.support.exposed_servers import WEBSOCKET_ECHO, websocket_echo
from tests.support.factories import make_settings

pytestmark = pytest.mark.asyncio

TIMINGS = ExposeTimings(
    probe_interval=0.1,
    probe_timeout=1.0,
    startup_timeout=30.0,
    crash_threshold=3,
    backoff_base=0.3,
    backoff_cap=2.0,
    ready_wait=20.0,
    connections_per_instance=1,
    scale_up_after=0.3,
    scale_down_after=1.0,
    stop_grace=1.0,
)
HTTP_SERVER = "exec python3 -m http.server {port} --bind 127.0.0.1\n"


def exposed_service(script: str, *, port: int = 8080, name: str = "web", **fields: Any) -> Service:
    expose = {"api_port": [port], **fields.pop("expose", {})}
    definition = {"name": name, "image": "img", "script": script, "cpu": "1", "expose": expose, **fields}
    return normalise_new(
        parse_service(definition),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )


@pytest.fixture
def sandbox() -> Sandbox:
    try:
        return Sandbox(require=True, run_as=unprivileged_user() if os.geteuid() == 0 else None)
    except SandboxUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def work_root(tmp_path: Path, sandbox: Sandbox) -> Path:
    if sandbox.runs_as is None:
        return tmp_path / "work"
    # Reachable by the user scripts run as (as the manager does when it runs as root).
    return shared_work_root(make_settings(database_url="sqlite://", data_dir=tmp_path / "data"))


@pytest.fixture
async def exposer(sandbox: Sandbox, work_root: Path) -> AsyncIterator[LocalExposer]:
    exposer = LocalExposer(sandbox=sandbox, work_root=work_root, timings=TIMINGS)
    yield exposer
    await exposer.close()


def deployment(exposer: LocalExposer, service: Service) -> Deployment:
    return exposer._deployments[service.name]


async def eventually(check: Callable[[], Any], within: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def get(endpoint: Endpoint, path: str) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(uds=endpoint.unix_socket)
    async with httpx.AsyncClient(transport=transport, base_url=endpoint.url, timeout=10) as client:
        return await client.get(path)


async def is_state(exposer: LocalExposer, service: Service, name: str) -> bool:
    return (await exposer.state(service)).state == name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_server_answers_through_its_endpoint_with_the_service_environment(
    exposer: LocalExposer,
) -> None:
    script = (
        'printf "%s\\n" "$OSCAR_SERVICE_BASE_PATH" "$OSCAR_SERVICE_NAME" "$OSCAR_SERVICE_TOKEN" "$GREETING"'
        ' "$API_KEY" > env.txt\n' + HTTP_SERVER.format(port=8080)
    )
    service = exposed_service(
        script, environment={"variables": {"GREETING": "hello"}, "secrets": {"API_KEY": "s3cret"}}
    )
    await exposer.expose(service)
    endpoint = await exposer.endpoint(service)
    assert endpoint.unix_socket is not None
    # Only the manager may open the relays' sockets: no local user, and no sandbox, reaches the server.
    assert os.stat(Path(endpoint.unix_socket).parent).st_mode & 0o077 == 0
    answer = await get(endpoint, "/env.txt")
    assert answer.status_code == 200
    assert answer.text.splitlines() == [
        "/system/services/web/exposed",
        "web",
        service.token,
        "hello",
        "s3cret",
    ]
    state = await exposer.state(service)
    assert (state.state, state.active_instances, state.affected_instances) == ("ready", 1, 0)
    assert state.last_transition_time is not None

    async def logged(text: str) -> bool:
        return any(text in line for _, line in await exposer.logs(service, tail_lines=50))

    await eventually(lambda: logged('"GET /env.txt HTTP/1.1" 200'))
    assert await logged("oscar-manager: instance web-1 started")
    for stamp, _ in await exposer.logs(service, tail_lines=50):
        assert stamp.endswith("Z")
        datetime.fromisoformat(stamp[:26] + "+00:00")


async def test_a_websocket_echo_passes_through_the_relay(exposer: LocalExposer) -> None:
    script = f"cat > ws.py <<'EOF'\n{WEBSOCKET_ECHO}\nEOF\nPORT=8080 exec python3 ws.py\n"
    service = exposed_service(script)
    await exposer.expose(service)
    endpoint = await exposer.endpoint(service)
    assert endpoint.unix_socket is not None
    messages = ["hello", "x" * 300, "ünïcode"]
    assert await websocket_echo(endpoint.unix_socket, messages) == messages


async def test_a_killed_instance_is_replaced(exposer: LocalExposer) -> None:
    service = exposed_service("echo pong > ping\n" + HTTP_SERVER.format(port=8080))
    await exposer.expose(service)
    await exposer.endpoint(service)
    (first,) = deployment(exposer, service).instances
    assert first._spawned is not None
    os.kill(first._spawned.process.pid, signal.SIGKILL)  # the sandbox and everything in it
    await eventually(
        lambda: [i for i in deployment(exposer, service).instances if i.ready and i is not first]
    )
    answer = await get(await exposer.endpoint(service), "/ping")
    assert answer.text == "pong\n"
    assert await is_state(exposer, service, "ready")
    lines = [line for _, line in await exposer.logs(service, tail_lines=100)]
    assert "oscar-manager: instance web-1 ended: exited with code 137" in lines
    assert "oscar-manager: instance web-2 started" in lines


async def test_a_server_crashing_at_start_fails_with_its_reason_after_backoff(exposer: LocalExposer) -> None:
    service = exposed_service('echo "cannot load the model" >&2; exit 3\n')
    await exposer.expose(service)
    await eventually(lambda: is_state(exposer, service, "failed"))
    state = await exposer.state(service)
    assert "exited with code 3 before answering on port 8080" in state.reason
    assert "cannot load the model" in state.reason
    assert "3 failed starts in a row" in state.reason
    assert state.active_instances == 0
    with pytest.raises(ExposedUnavailable, match="exited with code 3"):
        await exposer.endpoint(service)
    # The starts are spaced by a growing backoff (0.3 s, then 0.6 s).
    await eventually(lambda: len(_start_times(exposer, service)) >= 3)
    starts = _start_times(exposer, service)
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.3
    assert gaps[1] >= 0.6


def _start_times(exposer: LocalExposer, service: Service) -> list[float]:
    lines = deployment(exposer, service).logs(1000)
    return [
        datetime.fromisoformat(stamp[:26] + "+00:00").timestamp()
        for stamp, line in lines
        if line.endswith(" started")
    ]


async def test_a_port_nothing_listens_on(sandbox: Sandbox, work_root: Path) -> None:
    timings = ExposeTimings(
        probe_interval=0.1, ready_wait=0.3, startup_timeout=1.5, crash_threshold=2, backoff_base=0.1
    )
    exposer = LocalExposer(sandbox=sandbox, work_root=work_root, timings=timings)
    service = exposed_service("echo serving elsewhere; exec sleep 600\n")
    try:
        await exposer.expose(service)
        # Not healthy, but running: the endpoint is given, and the connection is closed without a byte
        # (what the proxy answers as 502).
        endpoint = await eventually(lambda: _endpoint_or_none(exposer, service))
        assert endpoint.unix_socket is not None
        reader, writer = await asyncio.open_unix_connection(endpoint.unix_socket)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed with our request unread (a reset), or before it was all sent: a refused port
        writer.close()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            await get(endpoint, "/")
        assert (await exposer.state(service)).state == "pending"
        # Never healthy within the startup timeout: killed, started again, then failed.
        await eventually(lambda: is_state(exposer, service, "failed"))
        reason = (await exposer.state(service)).reason
        assert "nothing answered on port 8080 within 1.5 s" in reason
    finally:
        await exposer.close()


async def _endpoint_or_none(exposer: LocalExposer, service: Service) -> Endpoint | None:
    try:
        return await exposer.endpoint(service)
    except ExposedUnavailable:
        return None


async def test_scales_up_under_load_to_max_and_back_to_min_when_idle(exposer: LocalExposer) -> None:
    service = exposed_service(HTTP_SERVER.format(port=8080), expose={"min_scale": 1, "max_scale": 3})
    await exposer.expose(service)
    await exposer.endpoint(service)
    most = 0
    held = []
    try:
        # Connections held open (http.server waits for their request line) are load on the instances.
        for _ in range(5):
            endpoint = await exposer.endpoint(service)
            assert endpoint.unix_socket is not None
            held.append(await asyncio.open_unix_connection(endpoint.unix_socket))

        def ready_count() -> int:
            nonlocal most
            instances = deployment(exposer, service).instances
            most = max(most, len(instances))
            return sum(1 for i in instances if i.ready)

        await eventually(lambda: ready_count() == 3)
        state = await exposer.state(service)
        assert (state.state, state.active_instances) == ("ready", 3)
        await asyncio.sleep(1.0)
        ready_count()
        assert most == 3  # never past max_scale
    finally:
        for _, writer in held:
            writer.close()
    await eventually(lambda: len(deployment(exposer, service).instances) == 1)
    await asyncio.sleep(1.5)
    assert len(deployment(exposer, service).instances) == 1  # never below min_scale
    assert await is_state(exposer, service, "ready")


@pytest.mark.parametrize("network", [False, True], ids=["isolated", "host-network"])
async def test_no_network_unless_asked(exposer: LocalExposer, network: bool) -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    host_server = await asyncio.start_server(answer, "127.0.0.1", 0)
    host_port = host_server.sockets[0].getsockname()[1]
    check = (
        "python3 -c \"import socket\ntry:\n socket.create_connection(('127.0.0.1', "
        f"{host_port}), timeout=3); print('reached')\nexcept OSError: print('unreachable')\" > reach.txt\n"
    )
    # On the host's network the server binds a host port: a free one, not 8080.
    port = free_port() if network else 8080
    annotations = {LOCAL_NETWORK_ANNOTATION: "true"} if network else {}
    service = exposed_service(
        check + HTTP_SERVER.format(port=port),
        port=port,
        annotations=annotations,
        expose={"min_scale": 2, "max_scale": 3},
    )
    try:
        await exposer.expose(service)
        answer_text = (await get(await exposer.endpoint(service), "/reach.txt")).text
    finally:
        host_server.close()
    assert answer_text == ("reached\n" if network else "unreachable\n")
    # Instances on the host's network would all bind that one port: one only.
    await eventually(
        lambda: len([i for i in deployment(exposer, service).instances if i.ready]) == (1 if network else 2)
    )


async def test_stop_start_restart_and_update(exposer: LocalExposer, work_root: Path) -> None:
    script = 'echo "$VERSION" > version\n' + HTTP_SERVER.format(port=8080)
    service = exposed_service(script, environment={"variables": {"VERSION": "one"}})
    await exposer.expose(service)
    await exposer.endpoint(service)
    (first,) = deployment(exposer, service).instances
    await exposer.expose(service)  # idempotent: the start-up re-expose of a running service
    assert deployment(exposer, service).instances == [first]

    await exposer.stop(service)
    state = await exposer.state(service)
    assert (state.state, state.active_instances, state.reason) == ("stopped", 0, "Deployment is stopped.")
    assert deployment(exposer, service).instances == []
    assert not first.link.path.exists()
    with pytest.raises(ExposedUnavailable, match="stopped"):
        await exposer.endpoint(service)
    await asyncio.sleep(0.5)
    assert deployment(exposer, service).instances == []  # nothing comes back while stopped

    await exposer.start(service)
    await exposer.endpoint(service)
    assert await is_state(exposer, service, "ready")
    (second,) = deployment(exposer, service).instances

    # A restart replaces the instance, the old one serving until the new one is healthy.
    await exposer.restart(service)
    most = 0

    def replaced() -> bool:
        nonlocal most
        instances = deployment(exposer, service).instances
        most = max(most, len(instances))
        return len(instances) == 1 and instances[0] is not second and instances[0].ready

    await eventually(replaced)
    assert most == 2

    updated = service.model_copy(
        update={"environment": service.environment.model_copy(update={"variables": {"VERSION": "two"}})}
    )
    await exposer.expose(updated, previous=service)
    await eventually(lambda: _served_version(exposer, updated), within=30)


async def _served_version(exposer: LocalExposer, service: Service) -> bool:
    return (await get(await exposer.endpoint(service), "/version")).text == "two\n"


async def test_default_command_is_refused(exposer: LocalExposer) -> None:
    service = exposed_service("true\n", expose={"default_command": True})
    with pytest.raises(BadRequest, match="default_command"):
        await exposer.expose(service)
    assert await exposer.logs(service, tail_lines=10) == []


async def test_unexpose_and_backend_stop_leave_nothing_behind(sandbox: Sandbox, work_root: Path) -> None:
    backend = LocalBackend(
        stores=Stores(LocalObjectStore(work_root.parent / "buckets")),
        sandbox=sandbox,
        work_root=work_root,
        concurrency=1,
        job_timeout=60,
        expose_timings=TIMINGS,
    )
    exposer = backend.exposed
    assert exposer is not None
    one = exposed_service(HTTP_SERVER.format(port=8080), name="one")
    two = exposed_service(HTTP_SERVER.format(port=8080), name="two")
    await exposer.expose(one)
    await exposer.expose(two)
    endpoint_one = await exposer.endpoint(one)
    endpoint_two = await exposer.endpoint(two)
    assert endpoint_one.unix_socket
    assert endpoint_two.unix_socket
    sockets = Path(endpoint_one.unix_socket).parent

    await exposer.unexpose(one)
    assert not _exists(endpoint_one.unix_socket)
    assert len(_homes(work_root)) == 1
    with pytest.raises(ExposedUnavailable):
        await exposer.endpoint(one)
    await exposer.unexpose(one)  # nothing left: nothing to do

    await backend.stop()
    assert not _exists(sockets)
    assert _homes(work_root) == []
    cgroups = sandbox._cgroups
    if cgroups is not None:
        assert cgroups.job_dirs() == []


def _homes(work_root: Path) -> list[Path]:
    """The instances' home folders."""
    return list(work_root.glob("exposed-*"))


def _exists(path: str | Path) -> bool:
    return os.path.exists(path)


async def test_health_path_decides_readiness(exposer: LocalExposer) -> None:
    # The server answers at once, 404 on its health path until the file is there.
    script = "(sleep 1.5; echo ok > healthz) &\n" + HTTP_SERVER.format(port=8080)
    service = exposed_service(script, expose={"health_path": "healthz"})
    await exposer.expose(service)
    await eventually(lambda: any(i.link.up.is_set() for i in deployment(exposer, service).instances))
    await asyncio.sleep(0.5)
    assert await is_state(exposer, service, "pending")
    await eventually(lambda: is_state(exposer, service, "ready"))
    assert (await get(await exposer.endpoint(service), "/healthz")).text == "ok\n"


LOW_PORTS = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def hosts_low_ports() -> str:
    """The first port anyone may bind on the host's network (this test process's namespace)."""
    return Path(LOW_PORTS).read_text()


async def test_a_server_may_bind_port_80_in_its_own_network_and_starts_after_its_relay(
    exposer: LocalExposer,
) -> None:
    """As in a container: the relay opens the low ports of the sandbox's network before the script starts
    (the script waits for it), whatever user the server runs as; the host's setting stays as it was."""
    before = hosts_low_ports()
    script = f"cat {LOW_PORTS} > low-ports-at-start\n" + HTTP_SERVER.format(port=80)
    service = exposed_service(script, port=80)
    await exposer.expose(service)
    answer = await get(await exposer.endpoint(service), "/low-ports-at-start")
    assert answer.text == "0\n"  # already open when the script's first line ran
    assert hosts_low_ports() == before


async def test_on_the_hosts_network_low_ports_stay_closed(exposer: LocalExposer) -> None:
    """A service sharing the host's network gets no low port there: the relay never touches the host's
    setting, and the server (an unprivileged user) cannot bind one."""
    if int(hosts_low_ports()) <= 80:
        pytest.skip("this host lets anyone bind port 80 already")
    before = hosts_low_ports()
    service = exposed_service(
        HTTP_SERVER.format(port=80), port=80, annotations={LOCAL_NETWORK_ANNOTATION: "true"}
    )
    await exposer.expose(service)
    state = await eventually(lambda: _state_if(exposer, service, "failed"))
    assert "Permission denied" in state.reason
    assert hosts_low_ports() == before


async def _state_if(exposer: LocalExposer, service: Service, name: str) -> Any:
    state = await exposer.state(service)
    return state if state.state == name else None


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the relay as another user, which only root may")
async def test_a_relay_that_cannot_enter_the_sandbox_fails_the_instance_saying_why(
    sandbox: Sandbox, work_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay joins the sandbox's network as the user who made it; another user may not, and the
    instance is not left running unreachable."""
    real = sandbox.host_command

    def as_someone_else(argv: Sequence[str]) -> list[str]:
        command = real(argv)
        return [
            "setpriv",
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            "--",
            *command[command.index("--") + 1 :],
        ]

    monkeypatch.setattr(sandbox, "host_command", as_someone_else)
    exposer = LocalExposer(sandbox=sandbox, work_root=work_root, timings=TIMINGS)
    service = exposed_service(HTTP_SERVER.format(port=8080))
    try:
        await exposer.expose(service)
        state = await eventually(lambda: _state_if(exposer, service, "failed"))
        assert "its relay did not start" in state.reason
        assert "cannot enter the sandbox's network namespace" in state.reason
        assert deployment(exposer, service).instances == []
    finally:
        await exposer.close()


async def test_without_bubblewrap_one_instance_serves_on_the_hosts_network(work_root: Path) -> None:
    """Opted in (``OSCAR_ALLOW_UNSANDBOXED``): no namespace to enter, the relay reaches the host's port."""
    plain = Sandbox(
        bwrap=None, allow_unsandboxed=True, run_as=unprivileged_user() if os.geteuid() == 0 else None
    )
    exposer = LocalExposer(sandbox=plain, work_root=work_root, timings=TIMINGS)
    port = free_port()
    service = exposed_service("echo plain > where.txt\n" + HTTP_SERVER.format(port=port), port=port)
    try:
        await exposer.expose(service)
        answer = await get(await exposer.endpoint(service), "/where.txt")
        assert answer.text == "plain\n"
        assert len(deployment(exposer, service).instances) == 1
    finally:
        await exposer.close()


async def test_the_server_holds_no_descriptor_of_the_manager(exposer: LocalExposer) -> None:
    """Bubblewrap's info (the pid the relay enters the network of) and the pipe the script waited on are
    not the script's: a server that wrote a forged pid there, or held the gate, could steer its relay. It
    gets /dev/null as its stdin and its output, nothing else."""
    script = "ls -l /proc/self/fd > fds 2>&1\n" + HTTP_SERVER.format(port=8080)
    service = exposed_service(script)
    await exposer.expose(service)
    listing = (await get(await exposer.endpoint(service), "/fds")).text
    descriptors = {line.split()[8]: line.split()[-1] for line in listing.splitlines()[1:]}
    assert set(descriptors) == {"0", "1", "2", "3"}, listing  # 3: ls's own reading of /proc/self/fd
    assert descriptors["0"] == "/dev/null"

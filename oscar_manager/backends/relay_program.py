"""The relay of an exposed instance: a program of its own, standard library only.

The instance's server listens on ``127.0.0.1:<api_port>`` in the sandbox's own network namespace, which
nothing outside can reach. The relay runs on the host, beside the sandbox: it first joins that namespace
(``join_network_of`` the sandbox's first process), so that what it connects to is the sandbox's loopback,
while its files, its processes and its interpreter stay the host's (the sandbox's root may be an image with
no Python in it, and nothing in the sandbox can see or signal the relay). The manager hands it, on its
stdin (a Unix socket pair), a listening Unix socket whose path only the manager can open; the relay accepts
there, connects to the port inside the namespace and copies bytes both ways (HTTP, websocket upgrades,
anything), closing a connection at once, without a byte, when nothing listens on the port. On stdin it
reports the number of connections open through it (one line per change), which the manager reads as the
instance's load; it ends when the manager closes that socket.

It is started by ``exposed_relay`` as ``python3 -I -S -c <this file's text> <api_port> [<pid>]``, as the
scripts' user: it imports nothing of the manager, so it needs no access to the manager's installation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import socket
import sys

CHUNK = 1 << 16
CONTROL_FD = 0
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"  # this network namespace's


def setns(fd: int, kind: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12
        os.setns(fd, kind)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, kind) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def join_network_of(pid: int) -> bool:
    """Enter the network namespace of process ``pid`` (the sandbox's first one); False when it is this
    process's own already (the sandbox shares the host's network). Unprivileged, that takes first entering
    the user namespace that owns it, which its creator (the scripts' user, as this relay) may; nothing
    else of the sandbox is entered. Must run while this process has one thread."""
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if os.fstat(net).st_ino == os.stat("/proc/self/ns/net").st_ino:
        os.close(net)
        return False
    try:
        setns(net, CLONE_NEWNET)
    except PermissionError:
        setns(fcntl.ioctl(net, NS_GET_USERNS), CLONE_NEWUSER)
        setns(net, CLONE_NEWNET)
    os.close(net)
    return True


def open_low_ports() -> None:
    """Let the server bind ports below 1024 in the namespace just joined, as a container's may (its
    capabilities, dropped, live in a user namespace that does not own the network). The manager starts
    the script only after this relay's first report, so the server never races it."""
    with open(UNPRIVILEGED_PORT_START, "w") as sysctl:
        sysctl.write("0")


class Relay:
    def __init__(self, control: socket.socket, listener: socket.socket, port: int) -> None:
        self.control = control
        self.listener = listener
        self.port = port
        self.open = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def report(self) -> None:
        # Non-blocking and tiny: the manager reads every line; a full buffer only drops a stale count.
        try:
            self.control.send(b"%d\n" % self.open)
        except BlockingIOError:
            pass
        except OSError:
            os._exit(0)  # the manager is gone: so is this instance

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.report()  # the first line says the relay is up
        closed = asyncio.ensure_future(loop.sock_recv(self.control, 1))
        closed.add_done_callback(lambda _: os._exit(0))  # the manager closed its end, or is gone
        while True:
            client, _ = await loop.sock_accept(self.listener)
            client.setblocking(False)
            task = asyncio.create_task(self.relay(client))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def relay(self, client: socket.socket) -> None:
        upstream = await self.connect()
        if upstream is None:
            client.close()
            return
        self.open += 1
        self.report()
        try:
            both = [asyncio.create_task(pump(client, upstream)), asyncio.create_task(pump(upstream, client))]
            done, pending = await asyncio.wait(both, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            for task in done:
                task.exception()  # a reset connection ends the pair; nothing more to say
        finally:
            self.open -= 1
            self.report()
            client.close()
            upstream.close()

    async def connect(self) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            try:
                await loop.sock_connect(upstream, (host, self.port))
            except OSError:
                upstream.close()
                continue
            return upstream
        return None


async def pump(source: socket.socket, target: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(source, CHUNK):
        await loop.sock_sendall(target, data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)  # pass the half-close on: the other way may still be talking


def main() -> None:
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        try:
            if join_network_of(int(sys.argv[2])):  # never the host's own sysctl
                open_low_ports()
        except OSError as exc:
            sys.exit(f"oscar relay: cannot enter the sandbox's network namespace: {exc}")
    control = socket.socket(fileno=CONTROL_FD)
    _, fds, _, _ = socket.recv_fds(control, 16, 1)
    if not fds:
        sys.exit("oscar relay: no listening socket was handed over")
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    control.setblocking(False)
    asyncio.run(Relay(control, listener, port).serve())


if __name__ == "__main__":
    main()

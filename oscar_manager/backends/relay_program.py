"""The relay inside an exposed instance's sandbox: a program of its own, standard library only.

The instance's server listens on ``127.0.0.1:<api_port>`` in the sandbox's own network namespace, which
nothing outside can reach. The manager hands this relay, on descriptor 3 (a Unix socket pair), a listening
Unix socket whose path only the manager can open; the relay accepts there, connects to the port inside the
namespace and copies bytes both ways (HTTP, websocket upgrades, anything), closing a connection at once,
without a byte, when nothing listens on the port. On descriptor 3 it reports the number of connections open
through it (one line per change), which the manager reads as the instance's load.

It is started by ``exposed_relay`` as ``python3 -I -S -c <this file's text> <api_port>``: it imports
nothing of the manager, so it needs no access to the manager's installation, only a host ``python3``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys

CHUNK = 1 << 16
CONTROL_FD = 3


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

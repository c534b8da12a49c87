"""The manager's side of an instance's relay (``relay_program``): the relay process, the socket handed to
it, its load reports, and the health probe sent through it.

Why a relay: the instance runs with bubblewrap's ``--unshare-net``, so its port exists only in a network
namespace of its own (a loopback), and several instances all listen on ``api_port`` without colliding.
The manager cannot enter that namespace itself (``setns`` is per thread and the manager has many; as
root it would also leave the manager's threads in a script's namespace), and sharing the host's network
would expose the port to every local user. The relay is a process of its own, run on the host as the
scripts' user, that joins the sandbox's network namespace only (not its files: the sandbox's root may be an
image without Python), and serves the port on a Unix socket in a folder only the manager can open (mode
0700, outside every sandbox), so the proxy is the only way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
from functools import cache
from pathlib import Path
from typing import Final

from oscar_manager.backends import relay_program
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.supervisor.stage import DEFAULT_PATH

BACKLOG: Final = 128
# What the relay says on its way out (why it could not start) is kept up to this.
STDERR_BYTES: Final = 4096
REAP_SECONDS: Final = 5.0  # for a killed relay to be reaped


@cache
def relay_source() -> str:
    return Path(relay_program.__file__).read_text()


def relay_python() -> str:
    """The interpreter the relay runs with: the system's ``python3``, else the manager's own (readable by
    the scripts' user in the usual installations)."""
    return shutil.which("python3", path=DEFAULT_PATH) or sys.executable


class RelayLink:
    """One instance's relay: the listening socket at ``path`` (made here, handed to the relay at start), and
    the control socket the relay reports its open connections on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.open_connections = 0
        self.up = asyncio.Event()  # the relay said its first word: it accepts connections
        self.process: asyncio.subprocess.Process | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control, self._relay_end = socket.socketpair()
        try:
            self._listener.bind(str(path))
            self._listener.listen(BACKLOG)
            # Queued until the relay reads it; our copy is closed once handed over, so that connections
            # made after the relay is gone are refused rather than left waiting.
            socket.send_fds(self._control, [b"L"], [self._listener.fileno()])
        except BaseException:
            self.close()
            raise
        self._control.setblocking(False)

    async def start(self, sandbox: Sandbox, *, port: int, inside_pid: int | None) -> None:
        """Start the relay for ``port`` in the network namespace of process ``inside_pid`` (None: the
        host's, where there is no sandbox to enter)."""
        argv = [relay_python(), "-I", "-S", "-c", relay_source(), str(port)]
        if inside_pid is not None:
            argv.append(str(inside_pid))
        program, *args = sandbox.host_command(argv)
        self.process = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=self._relay_end.fileno(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"},
            cwd="/",  # not the manager's folder, which the scripts' user may not enter
            start_new_session=True,  # a signal to the manager's group is not the relay's
        )
        # The relay holds its copies now: connections made after it is gone are refused, not left waiting.
        self._relay_end.close()
        self._listener.close()

    async def ended(self) -> str:
        """Wait for the relay to end; what it said on its way out."""
        if self.process is None:
            return ""
        assert self.process.stderr is not None
        said = await self.process.stderr.read(STDERR_BYTES)
        await self.process.wait()
        return said.decode(errors="replace").strip()

    async def follow(self) -> None:
        """Read the relay's reports until it closes its end (it, or the whole instance, is gone)."""
        loop = asyncio.get_running_loop()
        pending = b""
        while data := await loop.sock_recv(self._control, 4096):
            *lines, pending = (pending + data).split(b"\n")
            if lines and lines[-1].isdigit():
                self.open_connections = int(lines[-1])
            self.up.set()
        self.open_connections = 0

    async def stop(self) -> None:
        """:meth:`close`, and the relay's end awaited (its process reaped, its pipes closed)."""
        self.close()
        if self.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), REAP_SECONDS)

    def close(self) -> None:
        """The relay ends (its control socket closed; killed too, in case it is stuck) and the socket's
        path is removed."""
        for sock in (self._listener, self._control, self._relay_end):
            sock.close()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def probe(path: Path, *, http_path: str | None, host: str, within: float) -> bool:
    """Is the instance's server up? Through the relay: with ``http_path``, a GET of it answered 200 to 399
    (as a Kubernetes HTTP probe); without, the port taking the connection (any answer, or none yet within
    ``within`` seconds; the relay closes at once, without a byte, when nothing listens there)."""
    request = (
        f"GET {http_path or '/'} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: oscar-manager-probe\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        return http_path is None
    except OSError:
        return False
    finally:
        if writer is not None:
            writer.close()
    if http_path is None:
        return bool(status_line)
    parts = status_line.split()
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400

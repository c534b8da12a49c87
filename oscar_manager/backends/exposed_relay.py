"""The manager's side of an instance's relay (``relay_program``): the socket handed to it, its load reports,
and the health probe sent through it.

Why a relay: the instance runs with bubblewrap's ``--unshare-net``, so its port exists only in a network
namespace of its own (a loopback), and several instances all listen on ``api_port`` without colliding.
Entering that namespace from the manager (``setns``) needs privileges the manager may not have, and
sharing the host's network would expose the port to every local user. The relay runs inside the sandbox
and serves the port on a Unix socket in a folder only the manager can open (mode 0700, outside every
sandbox), so the proxy is the only way in.
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
from oscar_manager.supervisor.stage import DEFAULT_PATH

# Run in the sandbox before the script: keep the control socket (our stdin) as descriptor 3 for the relay,
# started in the background, then close it for the script (which gets /dev/null as its stdin).
PRELUDE: Final = 'exec 3<&0; "$1" -I -S -c "$2" "$3" & exec 3<&-'
BACKLOG: Final = 128


@cache
def relay_source() -> str:
    return Path(relay_program.__file__).read_text()


def relay_python() -> str:
    """The interpreter the relay runs with: the sandbox's ``python3`` (the host's, bound read-only), else
    the manager's own (readable by the script's user in the usual installations)."""
    return shutil.which("python3", path=DEFAULT_PATH) or sys.executable


def prelude_args(python: str, api_port: int) -> list[str]:
    return [python, relay_source(), str(api_port)]


class RelayLink:
    """One instance's relay: the listening socket at ``path`` (made here, handed to the relay at start), and
    the control socket the relay reports its open connections on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.open_connections = 0
        self.up = asyncio.Event()  # the relay said its first word: it accepts connections
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

    def relay_end(self) -> int:
        """The descriptor to give the sandbox as its stdin."""
        return self._relay_end.fileno()

    def handed_over(self) -> None:
        """The sandbox holds its copies now: drop ours."""
        self._relay_end.close()
        self._listener.close()

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

    def close(self) -> None:
        for sock in (self._listener, self._control, self._relay_end):
            sock.close()
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

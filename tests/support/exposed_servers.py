"""Servers for exposed-service tests (scripts run in the sandbox with the host's python3, standard library
only), and a websocket client that talks through an instance's Unix socket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# A websocket echo server on 127.0.0.1:$PORT (RFC 6455, short frames); a plain GET gets "ok".
WEBSOCKET_ECHO = r"""
import base64, hashlib, os, socket, struct, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def frame(opcode, data):
    n = len(data)
    return bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else b"\x7e" + struct.pack(">H", n)) + data

def handle(conn):
    f = conn.makefile("rb")
    key = None
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if key is None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        conn.close()
        return
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        head = f.read(2)
        if len(head) < 2:
            return
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", f.read(2))[0]
        mask = f.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(length)))
        if opcode == 8:
            conn.sendall(b"\x88\x00")
            return
        conn.sendall(frame(opcode, data))

server = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
print("websocket echo listening", flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


async def websocket_echo(unix_socket: str, messages: list[str]) -> list[str]:
    """Open a websocket through ``unix_socket``, send each message and return what came back."""
    reader, writer = await asyncio.open_unix_connection(unix_socket)
    try:
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        status = await reader.readline()
        assert status.split()[1] == b"101", status
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        assert headers[b"sec-websocket-accept"] == base64.b64encode(
            hashlib.sha1(key + WEBSOCKET_GUID, usedforsecurity=False).digest()
        )
        answers = []
        for message in messages:
            data = message.encode()
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            size = bytes([0x80 | len(data)]) if len(data) < 126 else b"\xfe" + struct.pack(">H", len(data))
            writer.write(b"\x81" + size + mask + masked)
            head = await reader.readexactly(2)
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", await reader.readexactly(2))[0]
            answers.append((await reader.readexactly(length)).decode())
        writer.write(b"\x88\x80" + os.urandom(4))  # close, masked, no payload
        assert (await reader.readexactly(2))[0] == 0x88
        return answers
    finally:
        writer.close()

"""The frames the CNI front (cnipy/cni/front.c) and the node daemon exchange over a unix stream socket.

One connection carries one CNI call. Both directions use the same envelope:

    magic  b"CNF1"   4 bytes (the protocol version; a daemon never executes a request with another magic)
    length           u32, big-endian: the size of the body that follows
    body

Request body: u32 item count N >= 2, then N items, each a u32 length and that many bytes:
    item 0 the plugin name (a key of cnipy.plugins.registry.PLUGINS), item 1 stdin, items 2.. "KEY=VALUE".
Reply body: u32 exit code, then two items: stdout and stderr.

Binary lengths rather than JSON keep the C side free of any escaping; sizes are bounded on both sides.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = b"CNF1"
HEADER = struct.Struct(">4sI")
U32 = struct.Struct(">I")
MAX_STDIN = 4 * 1024 * 1024
MAX_ENV_BYTES = 1024 * 1024
MAX_ITEMS = 4096
# The largest request body: stdin one byte over the CNI limit (so the plugin, not the wire, reports it) + env.
MAX_REQUEST = MAX_STDIN + 1 + MAX_ENV_BYTES + 64 * 1024
MAX_REPLY = 16 * 1024 * 1024
# Which variables the front forwards: the CNI protocol's and cnipy's own.
FORWARDED_PREFIXES = ("CNI_", "CNIPY_")


class ProtocolError(Exception):
    """A frame that does not follow this module's format (the peer is not a cnipy front or daemon)."""


@dataclass(frozen=True)
class CallRequest:
    plugin: str
    env: Mapping[str, str]
    stdin: bytes


@dataclass(frozen=True)
class CallReply:
    exit_code: int
    stdout: bytes
    stderr: bytes


def _items(parts: list[bytes]) -> bytes:
    return b"".join([U32.pack(len(parts))] + [U32.pack(len(p)) + p for p in parts])


def _frame(body: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(body)) + body


def forwarded(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(FORWARDED_PREFIXES)}


def encode_request(req: CallRequest) -> bytes:
    env = [f"{k}={v}".encode() for k, v in req.env.items()]
    return _frame(_items([req.plugin.encode(), req.stdin, *env]))


def encode_reply(reply: CallReply) -> bytes:
    return _frame(U32.pack(reply.exit_code & 0xFFFFFFFF) + _items([reply.stdout, reply.stderr]))


def parse_header(header: bytes, limit: int) -> int:
    """The body length announced by an 8-byte header; ProtocolError for a foreign magic or an oversized body."""
    magic, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {limit}")
    return int(length)


def _split(body: bytes, offset: int) -> list[bytes]:
    if len(body) < offset + 4:
        raise ProtocolError("truncated item count")
    (count,) = U32.unpack_from(body, offset)
    if count > MAX_ITEMS:
        raise ProtocolError(f"{count} items exceed the limit of {MAX_ITEMS}")
    pos = offset + 4
    out = []
    for _ in range(count):
        if len(body) < pos + 4:
            raise ProtocolError("truncated item length")
        (size,) = U32.unpack_from(body, pos)
        pos += 4
        if len(body) < pos + size:
            raise ProtocolError("truncated item")
        out.append(body[pos:pos + size])
        pos += size
    if pos != len(body):
        raise ProtocolError("trailing bytes after the last item")
    return out


def decode_request(body: bytes) -> CallRequest:
    items = _split(body, 0)
    if len(items) < 2:
        raise ProtocolError("a request needs a plugin name and stdin")
    env: dict[str, str] = {}
    env_bytes = 0
    for raw in items[2:]:
        env_bytes += len(raw)
        key, sep, value = raw.partition(b"=")
        if not sep or not key:
            raise ProtocolError("an environment item is not KEY=VALUE")
        env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    if env_bytes > MAX_ENV_BYTES:
        raise ProtocolError("environment too large")
    try:
        plugin = items[0].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("the plugin name is not ASCII") from None
    return CallRequest(plugin, env, items[1])


def decode_reply(body: bytes) -> CallReply:
    if len(body) < 4:
        raise ProtocolError("truncated exit code")
    (code,) = U32.unpack_from(body, 0)
    items = _split(body, 4)
    if len(items) != 2:
        raise ProtocolError("a reply carries stdout and stderr")
    return CallReply(int(code), items[0], items[1])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def call(socket_path: str, request: CallRequest, timeout: float = 30.0) -> CallReply:
    """One call through the daemon from Python (the C front does the same): health checks and tests."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(encode_request(request))
        length = parse_header(_recv_exact(sock, HEADER.size), MAX_REPLY)
        return decode_reply(_recv_exact(sock, length))

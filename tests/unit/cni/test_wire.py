"""The front <-> daemon frames: round trips, and every malformed frame is a ProtocolError, never a crash."""

from __future__ import annotations

import struct

import pytest

from cnipy.cni import wire


def body_of(frame: bytes) -> bytes:
    assert frame[:4] == wire.MAGIC
    length = wire.parse_header(frame[:8], wire.MAX_REQUEST)
    assert length == len(frame) - 8
    return frame[8:]


def test_request_round_trip() -> None:
    req = wire.CallRequest("cnipy-bridge", {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=b=c;D=", "CNIPY_X": ""},
                           b'{"cniVersion":"1.0.0"}\n')
    assert wire.decode_request(body_of(wire.encode_request(req))) == req


def test_reply_round_trip() -> None:
    reply = wire.CallReply(1, b'{"code":7}\n', b"about\n")
    assert wire.decode_reply(body_of(wire.encode_reply(reply))) == reply


def test_big_stdin_round_trip() -> None:
    req = wire.CallRequest("cnipy-loopback", {}, b"x" * (wire.MAX_STDIN + 1))
    assert wire.decode_request(body_of(wire.encode_request(req))).stdin == req.stdin


def test_forwarded_keeps_only_cni_and_cnipy_variables() -> None:
    assert wire.forwarded({"CNI_PATH": "/a", "CNIPY_LOG_FILE": "/l", "PATH": "/bin", "XCNI_": "x"}) == {
        "CNI_PATH": "/a", "CNIPY_LOG_FILE": "/l"}


@pytest.mark.parametrize("header", [b"HTTP/1.1", b"CNF2\x00\x00\x00\x01",
                                    b"CNF1" + struct.pack(">I", wire.MAX_REQUEST + 1)])
def test_bad_headers(header: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse_header(header, wire.MAX_REQUEST)


def items(*parts: bytes, count: int | None = None) -> bytes:
    n = len(parts) if count is None else count
    return struct.pack(">I", n) + b"".join(struct.pack(">I", len(p)) + p for p in parts)


@pytest.mark.parametrize("body", [
    b"",                                            # no item count
    items(b"cnipy-loopback"),                       # no stdin item
    items(b"cnipy-loopback", b"", count=3),         # announced more items than present
    items(b"cnipy-loopback", b"") + b"junk",        # trailing bytes
    items(b"cnipy-loopback", b"", b"NOEQUALS"),     # an env item without '='
    items(b"cnipy-loopback", b"", b"=value"),       # an env item without a key
    items("cnipy-\u00e9".encode(), b""),            # a non-ASCII plugin name
    struct.pack(">I", wire.MAX_ITEMS + 1),          # too many items
    struct.pack(">II", 2, 1000) + b"short",         # an item longer than the body
])
def test_malformed_request_bodies(body: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.decode_request(body)


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x00" + items(b"out"),
                                  b"\x00\x00\x00\x00" + items(b"a", b"b", b"c")])
def test_malformed_reply_bodies(body: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.decode_reply(body)

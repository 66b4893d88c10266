"""The CNI daemon without root: fake plugins, real unix sockets in a temporary directory.

It must answer every call the way `skel.execute` would, refuse nothing silently, keep serving after bad clients,
run calls in parallel, and leave no socket behind.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cnipy.cni import skel, wire
from cnipy.cni.daemon import Daemon, DaemonError, default_resolver
from cnipy.cni.errors import AddressExhausted
from cnipy.cni.types import Result

CONF = b'{"cniVersion":"1.0.0","name":"cnfnet","type":"fake"}'
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/cnfx", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/nonexistent"}


class Fakes:
    """Plugins the tests' resolver hands out, by name."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(8, timeout=10)
        self.release = threading.Event()
        self.seen_env: dict[str, str] = {}

    def resolve(self, name: str) -> skel.Plugin:
        if name == "cnipy-loopback":  # the real registry, for VERSION parity
            return default_resolver(name)

        def record(req: Any) -> Result:
            self.seen_env = dict(req.env)
            return Result(req.config.cni_version)

        def exhausted(req: Any) -> Result:
            raise AddressExhausted("no addresses left", "10.0.0.0/30")

        def bug(req: Any) -> Result:
            raise RuntimeError("boom")

        def parallel(req: Any) -> Result:
            self.barrier.wait()  # only returns when 8 calls run at the same time
            return Result(req.config.cni_version)

        def blocked(req: Any) -> Result:
            self.release.wait(10)
            return Result(req.config.cni_version)

        table = {"record": record, "exhausted": exhausted, "bug": bug, "parallel": parallel, "blocked": blocked}
        if name not in table:
            raise LookupError(f"no cnipy plugin named {name!r}")
        return SimpleNamespace(ABOUT=f"fake {name}", cmd_add=table[name])  # type: ignore[return-value]


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


def start(sock: Path, fakes: Fakes, **kw: Any) -> tuple[Daemon, threading.Thread]:
    d = Daemon(str(sock), resolve=fakes.resolve, **kw)
    d.bind()
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    return d, t


@pytest.fixture
def served(tmp_path: Path, fakes: Fakes) -> Iterator[tuple[str, Daemon]]:
    sock = tmp_path / "run" / "cni.sock"
    d, t = start(sock, fakes, recv_timeout=0.5, max_concurrent=16)
    yield str(sock), d
    fakes.release.set()
    d.stop()
    t.join(5)
    d.close(grace=5)


def call(sock: str, plugin: str, env: dict[str, str] | None = None, stdin: bytes = CONF) -> wire.CallReply:
    return wire.call(sock, wire.CallRequest(plugin, ENV if env is None else env, stdin), timeout=10)


def raw(sock: str, data: bytes, shut: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(sock)
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def error_of(reply: wire.CallReply) -> dict[str, Any]:
    assert reply.exit_code == 1
    err = json.loads(reply.stdout)
    assert isinstance(err, dict)
    return err


def test_socket_and_directory_permissions(served: tuple[str, Daemon]) -> None:
    sock, _ = served
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700


def test_version_matches_in_process_execute(served: tuple[str, Daemon]) -> None:
    sock, _ = served
    env = {"CNI_COMMAND": "VERSION"}
    reply = call(sock, "cnipy-loopback", env, b'{"cniVersion":"0.4.0"}')
    direct = skel.execute(default_resolver("cnipy-loopback"), env, b'{"cniVersion":"0.4.0"}')
    assert (reply.exit_code, reply.stdout, reply.stderr) == (direct.exit_code, direct.stdout, direct.stderr)
    about = call(sock, "cnipy-loopback", {}, b"")
    assert about.exit_code == 0 and about.stdout == b"" and b"CNI cnipy-loopback plugin" in about.stderr


def test_plugin_errors_keep_their_codes(served: tuple[str, Daemon]) -> None:
    sock, _ = served
    assert error_of(call(sock, "exhausted"))["code"] == 101
    bug = error_of(call(sock, "bug"))
    assert bug["code"] == 100 and "RuntimeError" in bug["msg"]
    unknown = error_of(call(sock, "cnipy-nonesuch"))
    assert unknown["code"] == 7 and "cnipy-nonesuch" in unknown["msg"]
    bad_json = error_of(call(sock, "record", stdin=b"{nope"))
    assert bad_json["code"] == 6


def test_only_cni_variables_come_from_the_caller(served: tuple[str, Daemon], fakes: Fakes) -> None:
    sock, _ = served
    assert call(sock, "record", {**ENV, "LD_PRELOAD": "/evil.so", "CNIPY_LOG_FILE": "/tmp/x"}).exit_code == 0
    assert fakes.seen_env["CNI_IFNAME"] == "eth0" and fakes.seen_env["CNIPY_LOG_FILE"] == "/tmp/x"
    assert fakes.seen_env.get("LD_PRELOAD") != "/evil.so"


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CNF1" + struct.pack(">I", wire.MAX_REQUEST + 1),
    b"CNF1" + struct.pack(">I", 4) + struct.pack(">I", 1),
])
def test_malformed_requests_get_an_error_reply(served: tuple[str, Daemon], garbage: bytes) -> None:
    sock, _ = served
    out = raw(sock, garbage)
    assert out[:4] == wire.MAGIC
    reply = wire.decode_reply(out[8:])
    assert error_of(reply)["code"] == 100 and "malformed" in error_of(reply)["msg"]
    assert call(sock, "record").exit_code == 0  # and the daemon still serves


def test_clients_that_vanish_or_stall_do_not_hurt(served: tuple[str, Daemon]) -> None:
    sock, _ = served
    # Half a request, then gone.
    frame = wire.encode_request(wire.CallRequest("record", ENV, CONF))
    assert raw(sock, frame[: len(frame) // 2]) == b""
    # A client that sends half and stalls: dropped after recv_timeout (0.5 s) while others are served.
    with socket.socket(socket.AF_UNIX) as stalled:
        stalled.connect(sock)
        stalled.sendall(frame[:10])
        assert call(sock, "record").exit_code == 0
        stalled.settimeout(5)
        assert stalled.recv(10) == b""
    # A client that leaves before the reply: the call completes, the daemon carries on.
    with socket.socket(socket.AF_UNIX) as early:
        early.connect(sock)
        early.sendall(frame)
    assert call(sock, "record").exit_code == 0


def test_calls_run_in_parallel(served: tuple[str, Daemon]) -> None:
    sock, _ = served
    replies: list[wire.CallReply] = []
    threads = [threading.Thread(target=lambda: replies.append(call(sock, "parallel"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert [r.exit_code for r in replies] == [0] * 8


def test_a_full_process_leaves_connections_waiting(tmp_path: Path, fakes: Fakes) -> None:
    d, t = start(tmp_path / "cni.sock", fakes, max_concurrent=1)
    try:
        results: list[wire.CallReply] = []
        first = threading.Thread(target=lambda: results.append(call(str(tmp_path / "cni.sock"), "blocked")))
        first.start()
        time.sleep(0.2)
        with socket.socket(socket.AF_UNIX) as waiting:  # connects (backlog) but is not taken while full
            waiting.settimeout(5)
            waiting.connect(str(tmp_path / "cni.sock"))
            waiting.sendall(wire.encode_request(wire.CallRequest("record", ENV, CONF)))
            waiting.settimeout(0.3)
            with pytest.raises(TimeoutError):
                waiting.recv(1)
            fakes.release.set()
            first.join(10)
            waiting.settimeout(5)
            out = b""
            while chunk := waiting.recv(65536):
                out += chunk
        assert wire.decode_reply(out[8:]).exit_code == 0
        assert [r.exit_code for r in results] == [0]
    finally:
        fakes.release.set()
        d.stop()
        t.join(5)
        d.close(grace=5)


def test_the_acknowledgement_comes_before_the_result(served: tuple[str, Daemon], fakes: Fakes) -> None:
    sock, _ = served
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(sock)
        s.sendall(wire.encode_request(wire.CallRequest("blocked", ENV, CONF)))
        assert s.recv(4) == wire.MAGIC  # the call has started, its result is not there yet
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(1)
        fakes.release.set()
        s.settimeout(5)
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        assert wire.decode_reply(rest[4:]).exit_code == 0


def test_one_daemon_per_socket_and_clean_shutdown(tmp_path: Path, fakes: Fakes) -> None:
    sock = tmp_path / "cni.sock"
    sock.write_bytes(b"")  # a stale file from a daemon that died is replaced
    d, t = start(sock, fakes)
    try:
        with pytest.raises(DaemonError):
            Daemon(str(sock), resolve=fakes.resolve).bind()
        assert call(str(sock), "record").exit_code == 0
    finally:
        d.stop()
        t.join(5)
        d.close(grace=5)
    assert not t.is_alive()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_unsafe_directory_is_refused(tmp_path: Path, fakes: Fakes) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(DaemonError):
        Daemon(str(shared / "cni.sock"), resolve=fakes.resolve).bind()


def test_code_changes_stop_a_watching_daemon(tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnipy.cni import daemon as D

    source = tmp_path / "fake_module.py"
    source.write_text("")
    os.utime(source, ns=(1_000_000_000, 1_000_000_000))
    monkeypatch.setitem(sys.modules, "cnipy._cnf_fake", SimpleNamespace(__file__=str(source)))
    d, t = start(tmp_path / "cni.sock", fakes)
    try:
        D._watch_code(d, interval=0.05)
        time.sleep(0.2)
        assert t.is_alive()  # nothing changed yet
        os.utime(source)
        t.join(5)
        assert not t.is_alive()
    finally:
        d.stop()
        t.join(5)
        d.close(grace=5)

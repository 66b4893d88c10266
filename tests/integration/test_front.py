"""The compiled CNI front with and without the daemon: the same outcome on every path, and no hang when the
daemon fails.

Paths compared: the front forwarding to a running daemon, the front with no daemon (it execs Python), and the
plain Python executable. Every namespace, daemon and socket made here is removed, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cnipy.cni import build_front, wire
from cnipy.cni.invoke import own_plugin_name
from tests.conftest import need
from tests.support import netns as N

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python3"
LAUNCH = ROOT / "cnipy" / "cni" / "launch.py"
LOOPBACK = {"cniVersion": "1.0.0", "name": "cnfnet", "type": "cnipy-loopback"}

Outcome = tuple[int, bytes, bytes]

SLOW_DAEMON = r"""
import sys, time
from types import SimpleNamespace
sys.path.insert(0, sys.argv[1])
from cnipy.cni.daemon import Daemon, default_resolver
real = default_resolver("cnipy-loopback")
delay = float(sys.argv[3])
def slow(verb):
    def call(req):
        time.sleep(delay)
        return verb(req)
    return call
fake = SimpleNamespace(ABOUT=real.ABOUT, cmd_add=slow(real.cmd_add), cmd_del=slow(real.cmd_del),
                       cmd_check=real.cmd_check)
d = Daemon(sys.argv[2], resolve=lambda name: fake, max_concurrent=int(sys.argv[4]))
d.bind()
d.serve_forever()
"""


@pytest.fixture(scope="module")
def fronts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc")
    out = tmp_path_factory.mktemp("fronts")
    try:
        build_front.build(out)
    except build_front.BuildError as exc:
        pytest.skip(f"cannot build the front: {exc}")
    return out


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {proc.stderr.read() if proc.stderr else b''!r}") from None
            time.sleep(0.05)
    raise RuntimeError("daemon did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "run" / "cni.sock"
    proc = subprocess.Popen([str(PYTHON), "-m", "cnipy.cni.daemon", "--socket", str(sock)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc)
        yield sock
    finally:
        stop(proc)
    assert not sock.exists(), "the daemon left its socket behind"


@pytest.fixture
def slow_daemon(tmp_path: Path) -> Iterator[Callable[..., tuple[Path, subprocess.Popen[bytes]]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(delay: float = 3.0, slots: int = 8) -> tuple[Path, subprocess.Popen[bytes]]:
        sock = tmp_path / f"slow{len(procs)}" / "cni.sock"
        proc = subprocess.Popen([str(PYTHON), "-I", "-c", SLOW_DAEMON, str(ROOT), str(sock), str(delay), str(slots)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        wait_for_socket(sock, proc)
        return sock, proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def cni_env(command: str | None, netns: str = "/run/netns/cnfnone", **extra: str) -> dict[str, str]:
    env = {"CNI_CONTAINERID": "cnfctr", "CNI_NETNS": netns, "CNI_IFNAME": "lo", "CNI_PATH": "/usr/lib/cni",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if command is not None:
        env["CNI_COMMAND"] = command
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str], stdin: bytes, timeout: float = 60) -> Outcome:
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def three_ways(fronts: Path, sock: Path, env: dict[str, str], stdin: bytes) -> dict[str, Outcome]:
    front = [str(fronts / "cnipy-loopback")]
    return {
        "daemon": run(front, {**env, "CNIPY_CNI_SOCKET": str(sock)}, stdin),
        "fallback": run(front, {**env, "CNIPY_CNI_SOCKET": str(sock) + ".absent"}, stdin),
        "python": run([str(PYTHON), "-I", "-S", str(LAUNCH), "cnipy-loopback"], env, stdin),
    }


def assert_same(results: dict[str, Outcome]) -> Outcome:
    first = results["python"]
    for path, got in results.items():
        assert got == first, f"{path} differs from python: {got!r} != {first!r}"
    return first


CASES: list[tuple[str, str | None, bytes, dict[str, str]]] = [
    ("about", None, b"", {}),
    ("version-no-stdin", "VERSION", b"", {}),
    ("version-0.4.0", "VERSION", b'{"cniVersion":"0.4.0"}', {}),
    ("bad-json", "ADD", b"{bad", {}),
    ("unknown-verb", "FROB", json.dumps(LOOPBACK).encode(), {}),
    ("missing-env", "ADD", json.dumps(LOOPBACK).encode(), {"CNI_IFNAME": ""}),
    ("incompatible", "ADD", json.dumps({**LOOPBACK, "cniVersion": "9.9.9"}).encode(), {}),
    ("no-namespace", "ADD", json.dumps(LOOPBACK).encode(), {}),
    ("del-no-namespace", "DEL", json.dumps(LOOPBACK).encode(), {}),
    ("too-large", "ADD", b" " * (4 * 1024 * 1024) + json.dumps(LOOPBACK).encode(), {}),
    ("gc", "GC", json.dumps({**LOOPBACK, "cniVersion": "1.1.0"}).encode(), {}),
]


@pytest.mark.parametrize(("case", "command", "stdin", "extra"), CASES, ids=[c[0] for c in CASES])
def test_every_path_answers_the_same(fronts: Path, daemon: Path, case: str, command: str | None, stdin: bytes,
                                     extra: dict[str, str]) -> None:
    results = three_ways(fronts, daemon, cni_env(command, **extra), stdin)
    code, out, err = assert_same(results)
    if case.startswith("version"):
        assert code == 0 and "supportedVersions" in json.loads(out)
    elif case == "about":
        assert code == 0 and b"cnipy-loopback" in err
    elif case in ("del-no-namespace", "gc"):
        assert code == 0
    else:
        assert code == 1 and isinstance(json.loads(out)["code"], int)


def test_add_check_del_the_same_on_every_path(fronts: Path, daemon: Path) -> None:
    # One megabyte of padding: a big stdin that is still valid crosses the socket intact.
    conf = json.dumps(LOOPBACK).encode() + b" " * (1024 * 1024)
    with N.namespaces(1, prefix="cnf") as (ns,):
        for verb in ("ADD", "CHECK", "DEL", "DEL"):
            code, out, _ = assert_same(three_ways(fronts, daemon, cni_env(verb, ns.path), conf))
            assert code == 0, out
            if verb == "ADD":
                assert json.loads(out)["interfaces"][0]["sandbox"] == ns.path


def test_concurrent_calls(fronts: Path, daemon: Path) -> None:
    front = str(fronts / "cnipy-loopback")
    with N.namespaces(16, prefix="cnf") as spaces:
        def add(ns: N.Netns) -> Outcome:
            return run([front], cni_env("ADD", ns.path, CNIPY_CNI_SOCKET=str(daemon)), json.dumps(LOOPBACK).encode())

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(add, spaces))
        for ns, (code, out, _) in zip(spaces, results, strict=True):
            assert code == 0, out
            assert json.loads(out)["interfaces"][0]["sandbox"] == ns.path
            assert "UP" in ns.run("ip", "-o", "link", "show", "lo").stdout


def test_socket_permissions(daemon: Path) -> None:
    assert stat.S_IMODE(daemon.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.parent.stat().st_mode) == 0o700


def start_front(fronts: Path, sock: Path, command: str, ns: str, **extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(fronts / "cnipy-loopback")], env=cni_env(command, ns, CNIPY_CNI_SOCKET=str(sock),
                                                                           **extra),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(LOOPBACK).encode())
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() must not touch it
    return proc


def finish(proc: subprocess.Popen[bytes], timeout: float = 20) -> tuple[int, Any]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, json.loads(out) if out.strip() else None


def test_daemon_killed_during_add_reports_try_again_later(fronts: Path, slow_daemon: Any) -> None:
    sock, proc = slow_daemon(delay=3.0)
    with N.namespaces(1, prefix="cnf") as (ns,):
        front = start_front(fronts, sock, "ADD", ns.path)
        time.sleep(1.0)
        proc.kill()
        started = time.monotonic()
        code, out = finish(front)
        assert time.monotonic() - started < 5
        assert code == 1 and out["code"] == 11 and "ADD" in out["msg"], out


def test_daemon_killed_during_del_runs_it_in_python(fronts: Path, slow_daemon: Any) -> None:
    sock, proc = slow_daemon(delay=3.0)
    with N.namespaces(1, prefix="cnf") as (ns,):
        front = start_front(fronts, sock, "DEL", ns.path)
        time.sleep(1.0)
        proc.kill()
        code, out = finish(front)
        assert code == 0 and out is None
        assert "UP" not in ns.run("ip", "-o", "link", "show", "lo").stdout  # the Python DEL did the work


def test_a_queued_add_runs_in_python_when_the_daemon_dies(fronts: Path, slow_daemon: Any) -> None:
    # One slot: the second ADD waits in the socket backlog, unaccepted, so it never ran and is safe to run here.
    sock, proc = slow_daemon(delay=3.0, slots=1)
    with N.namespaces(2, prefix="cnf") as (a, b):
        first = start_front(fronts, sock, "ADD", a.path)
        time.sleep(0.5)
        second = start_front(fronts, sock, "ADD", b.path)
        time.sleep(0.5)
        proc.kill()
        code1, out1 = finish(first)
        code2, out2 = finish(second)
        assert code1 == 1 and out1["code"] == 11
        assert code2 == 0 and out2["interfaces"][0]["sandbox"] == b.path
        assert "UP" in b.run("ip", "-o", "link", "show", "lo").stdout


def test_no_reply_in_time_is_an_error_not_a_hang(fronts: Path, slow_daemon: Any) -> None:
    sock, _ = slow_daemon(delay=8.0)
    with N.namespaces(1, prefix="cnf") as (ns,):
        started = time.monotonic()
        code, out = finish(start_front(fronts, sock, "ADD", ns.path, CNIPY_FRONT_TIMEOUT="1"))
        assert time.monotonic() - started < 4
        assert code == 1 and out["code"] == 11 and "did not answer" in out["msg"], out


def test_a_stale_socket_file_falls_back(fronts: Path, tmp_path: Path) -> None:
    stale = tmp_path / "cni.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: connect is refused
    with N.namespaces(1, prefix="cnf") as (ns,):
        code, out = finish(start_front(fronts, stale, "ADD", ns.path))
        assert code == 0 and out["interfaces"][0]["sandbox"] == ns.path


def test_a_foreign_server_is_not_trusted(fronts: Path, tmp_path: Path) -> None:
    path = tmp_path / "foreign.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with N.namespaces(1, prefix="cnf") as (ns,):
            code, out = finish(start_front(fronts, path, "ADD", ns.path))
            assert code == 0 and out["interfaces"][0]["sandbox"] == ns.path
    finally:
        t.join(5)
        server.close()


def test_the_fronts_are_recognised_as_ours_and_rebuilt_only_on_change(fronts: Path) -> None:
    assert own_plugin_name(fronts / "cnipy-bridge") == "cnipy-bridge"
    assert own_plugin_name(fronts / "cnipy-host-local") == "cnipy-host-local"
    assert build_front.build(fronts) == []


def test_front_needs_no_shell(fronts: Path) -> None:
    # A static executable that runs with an empty environment and no PATH.
    proc = subprocess.run([str(fronts / "cnipy-loopback")], env={"CNIPY_CNI_SOCKET": ""}, capture_output=True,
                          timeout=30, check=False)
    assert proc.returncode == 0 and b"cnipy-loopback" in proc.stderr


def children_of(pid: int, expect: int = 0) -> list[int]:
    """The pid's children; with `expect`, wait (the socket is up before the workers are forked) until there are
    that many."""
    deadline = time.monotonic() + 10
    while True:
        try:
            found = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            found = []
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                   for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_worker_processes_stop_with_the_daemon(fronts: Path, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "cni.sock"
    argv = [str(PYTHON), "-m", "cnipy.cni.daemon", "--socket", str(sock), "--processes", "3"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc)
        workers = children_of(proc.pid, expect=2)
        assert len(workers) == 2
        with N.namespaces(1, prefix="cnf") as (ns,):
            for _ in range(6):  # whichever process accepts, the answer is the same
                code, out = finish(start_front(fronts, sock, "ADD", ns.path))
                assert code == 0 and out["interfaces"][0]["sandbox"] == ns.path
            # Many at once: a connection wakes one waiting process (EPOLLEXCLUSIVE), and none is left unserved.
            fronts_at_once = [start_front(fronts, sock, "ADD", ns.path) for _ in range(12)]
            assert all(finish(f)[0] == 0 for f in fronts_at_once)
        # SIGKILL the main process: the workers follow it, and a new daemon can take over the stale socket.
        proc.kill()
        proc.wait()
        assert gone(workers)
        again = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_socket(sock, again)
            workers = children_of(again.pid, expect=2)
        finally:
            stop(again)
        assert again.returncode == 0 and gone(workers) and not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Runs as nobody with the system Python and nothing of the checkout: it only sends the frame it is given.
CLIENT_AS_NOBODY = r"""
import socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(bytes.fromhex(sys.argv[2]))
    out = b""
    while chunk := s.recv(65536):
        out += chunk
print(out.hex())
"""


def test_other_users_are_refused_even_if_they_reach_the_socket() -> None:
    # The socket is 0600 in a 0700 directory; open both up to prove the daemon's own check (SO_PEERCRED).
    work = Path(tempfile.mkdtemp(prefix="cnf"))
    sock = work / "run" / "cni.sock"
    proc = subprocess.Popen([str(PYTHON), "-m", "cnipy.cni.daemon", "--socket", str(sock), "--processes", "1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc)
        for d in (work, sock.parent):
            os.chmod(d, 0o711)
        os.chmod(sock, 0o666)
        frame = wire.encode_request(wire.CallRequest("cnipy-loopback", {"CNI_COMMAND": "VERSION"}, b""))
        client = subprocess.run(["/usr/bin/python3", "-I", "-c", CLIENT_AS_NOBODY, str(sock), frame.hex()],
                                user=65534, capture_output=True, text=True, timeout=30, check=False)
        assert client.returncode == 0, client.stderr
        out = bytes.fromhex(client.stdout.strip())
        reply = wire.decode_reply(out[wire.HEADER.size:])
        assert reply.exit_code == 1 and json.loads(reply.stdout)["code"] == 4
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)

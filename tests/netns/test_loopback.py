"""cnipy-loopback in real network namespaces, run as an executable the way a runtime runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import netns as N
from tests.support.cni import GO_CNI, PLUGINS, env, run_exec

LOOPBACK = PLUGINS / "cnipy-loopback"
SERVER = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); "
          "print(s.getsockname()[1], flush=True); c, _ = s.accept(); c.sendall(c.recv(64)[::-1]); c.close()")
CLIENT = ("import socket, sys; c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5); "
          "c.sendall(b'ping'); print(c.recv(64).decode())")


@pytest.fixture
def bare_ns() -> Iterator[N.Netns]:
    """A namespace with `lo` still down (the shared fixture brings it up); removed even if the test fails."""
    ns = N.Netns(N.unique("cnh"))
    N.run(["ip", "netns", "add", ns.name])
    try:
        yield ns
    finally:
        N.delete(ns)


def conf(version: str = "1.0.0") -> dict[str, str]:
    return {"cniVersion": version, "name": "cnhlo", "type": "cnipy-loopback"}


def lo_up(ns: N.Netns) -> bool:
    link = json.loads(ns.run("ip", "-j", "link", "show", "lo").stdout)[0]
    return "UP" in link["flags"]


def echo_over_loopback(ns: N.Netns) -> str:
    """A server and a client, two processes in the namespace, talking over 127.0.0.1."""
    server = ns.popen(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        if not port:
            return "server failed: " + (server.stderr.read() if server.stderr else "")
        client = ns.run(sys.executable, "-c", CLIENT, port, check=False, timeout=10)
        return client.stdout.strip() if client.returncode == 0 else "client failed"
    finally:
        server.kill()
        server.wait(5)
        for s in (server.stdout, server.stderr):
            if s is not None:
                s.close()


def test_add_brings_lo_up_and_traffic_flows(bare_ns: N.Netns) -> None:
    assert not lo_up(bare_ns)
    assert echo_over_loopback(bare_ns) != "gnip"
    run = run_exec(LOOPBACK, env("ADD", netns=bare_ns.path, ifname="lo"), conf())
    assert run.code == 0, run
    assert run.json == {"cniVersion": "1.0.0",
                        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": bare_ns.path}],
                        "ips": [{"interface": 0, "address": "127.0.0.1/8"}, {"interface": 0, "address": "::1/128"}],
                        "dns": {}}
    assert lo_up(bare_ns)
    assert echo_over_loopback(bare_ns) == "gnip"


def test_same_answer_as_the_reference(bare_ns: N.Netns) -> None:
    if not (GO_CNI / "loopback").exists():
        pytest.skip("reference plugins missing")
    ours = run_exec(LOOPBACK, env("ADD", netns=bare_ns.path, ifname="lo"), conf())
    go = run_exec(GO_CNI / "loopback", env("ADD", netns=bare_ns.path, ifname="lo"), conf())
    assert (ours.code, ours.json) == (go.code, json.loads(go.stdout))
    # Older versions: the reference (v1.1.1) prints its 1.0.0-shaped result under the old version string; we
    # convert as the spec says (0.3.x/0.4.0 carry "version" per IP, 0.2.0 has ip4/ip6).
    old = run_exec(LOOPBACK, env("ADD", netns=bare_ns.path, ifname="lo"), conf("0.4.0")).json
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert run_exec(LOOPBACK, env("ADD", netns=bare_ns.path, ifname="lo"), conf("0.2.0")).json == {
        "cniVersion": "0.2.0", "ip4": {"ip": "127.0.0.1/8"}, "ip6": {"ip": "::1/128"}, "dns": {}}


def test_check_and_del(bare_ns: N.Netns) -> None:
    e = {"netns": bare_ns.path, "ifname": "lo"}
    assert run_exec(LOOPBACK, env("CHECK", **e), conf()).json["code"] != 0  # lo is down: CHECK fails
    assert run_exec(LOOPBACK, env("ADD", **e), conf()).code == 0
    assert run_exec(LOOPBACK, env("CHECK", **e), conf()).code == 0
    assert run_exec(LOOPBACK, env("CHECK", **e), conf("0.3.1")).json["code"] == 1  # CHECK needs 0.4.0
    assert run_exec(LOOPBACK, env("DEL", **e), conf()).code == 0
    assert not lo_up(bare_ns)
    assert run_exec(LOOPBACK, env("DEL", **e), conf()).code == 0  # twice
    assert run_exec(LOOPBACK, env("CHECK", **e), conf()).code != 0


def test_namespace_gone(tmp_path: Path) -> None:
    ns = N.Netns(N.unique("cnh"))
    N.run(["ip", "netns", "add", ns.name])
    N.delete(ns)
    e = {"netns": ns.path, "ifname": "lo"}
    assert run_exec(LOOPBACK, env("DEL", **e), conf()).code == 0  # gone on DEL: success
    no_netns = env("DEL", ifname="lo")
    del no_netns["CNI_NETNS"]
    assert run_exec(LOOPBACK, no_netns, conf()).code == 0
    for verb in ("ADD", "CHECK"):
        run = run_exec(LOOPBACK, env(verb, **e), conf())
        assert run.code == 1 and run.json["code"] == 3, run
    not_a_netns = tmp_path / "file"
    not_a_netns.write_text("")
    run = run_exec(LOOPBACK, env("ADD", netns=str(not_a_netns), ifname="lo"), conf())
    assert run.code == 1 and run.json["code"] == 3 and b"Traceback" not in run.stdout + run.stderr
    assert not Path(ns.path).exists()


def test_malformed_requests_change_nothing_in_the_kernel(bare_ns: N.Netns) -> None:
    """Protocol-level bad input (versions, environment, undecodable stdin) aimed at a real namespace: every call is
    refused with its code; `lo` stays down and nothing appears in the namespace. (Host-wide link lists are not
    compared: other suites create links concurrently.)"""
    from tests.support.malformed import CASES, check_error, request_for

    cases = [c for c in CASES if c.code in (1, 4, 6) and not c.name.startswith("hostlocal-")][::2]
    before = bare_ns.run("ip", "-o", "addr").stdout + bare_ns.run("ip", "-o", "link").stdout
    for case in cases:
        environ, stdin = request_for(case, env("ADD", netns=bare_ns.path, ifname="lo"), conf())
        if case.env.get("CNI_NETNS") is None and "CNI_NETNS" not in case.env:
            environ.setdefault("CNI_NETNS", bare_ns.path)
        run = run_exec(LOOPBACK, environ, stdin)
        check_error(run.stdout, run.stderr, run.code, case.code)
        assert not lo_up(bare_ns), case.name
    assert len(cases) >= 30
    assert bare_ns.run("ip", "-o", "addr").stdout + bare_ns.run("ip", "-o", "link").stdout == before

"""Services in the lab: a `cnipy proxy` in every node, real connections to ClusterIPs and NodePorts.

Each test brings up its own lab (a unique `cns` name); the `lab_name` fixture removes it even when the test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from cnipy.lab import LabSpec, check, down, procs, services, status, up
from cnipy.lab.connectivity import CLIENT_LOCAL, CLIENT_NODEPORT, POD_CLUSTERIP, SERVICE_KINDS, exchange, serving
from cnipy.lab.errors import ServicesNotReady
from cnipy.netlink.ns import call_in
from tests.conftest import need
from tests.netns.lab.conftest import PLUGINS, HostSnapshot, leftovers, root_for

ROOT = Path(__file__).resolve().parents[3]
CONNECTIONS = 400  # per source node, 1,200 in all over 6 endpoints
# Chi-square with 5 degrees of freedom above which an equal share is rejected: P(false alarm) = 1e-4.
CHI2_LIMIT = 25.74


@pytest.fixture
def lab_name() -> Iterator[str]:
    name = f"cns{secrets.token_hex(4)}"
    yield name
    down(name, state_root=root_for(name), detach=False)
    shutil.rmtree(root_for(name), ignore_errors=True)


def spec(name: str, state_root: Path, **kw: object) -> LabSpec:
    return LabSpec(name=name, state_root=state_root, plugins=PLUGINS, **kw)  # type: ignore[arg-type]


def answers(src_netns: str, ip: IPv4Address, port: int, count: int, timeout: float = 2.0) -> Counter[str]:
    """Who answered `count` connections from src_netns to ip:port ("netns peer"; "-" for no answer)."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        try:
            reply = exchange(src_netns, ip, port, timeout)
        except OSError:
            seen["-"] += 1
            continue
        seen[f"{reply.netns} {reply.peer}"] += 1
    return seen


def health_check(netns: str, ip: IPv4Address, port: int) -> tuple[int, int]:
    """(HTTP status, localEndpoints) of GET / on a healthCheckNodePort, from inside `netns`."""
    sock = call_in(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with sock:
        sock.settimeout(2.0)
        sock.connect((str(ip), port))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), int(json.loads(body)["localEndpoints"])


@pytest.mark.parametrize(("mode", "segments"), [("nftables", 1), ("iptables", 2)])
def test_services_reach_every_endpoint_from_every_node_and_down_removes_the_proxies(
        lab_name: str, state_root: Path, mode: str, segments: int) -> None:
    need("nft" if mode == "nftables" else "iptables-restore")
    before = HostSnapshot.take()
    lab = up(spec(lab_name, state_root, nodes=3, pods_per_node=2, segments=segments, services=mode))
    proxies = {name: pid for name, pid in procs.recorded(lab).items() if name.startswith("proxy-")}
    assert sorted(proxies) == ["proxy-n1", "proxy-n2", "proxy-n3"]

    matrix = check(lab)
    assert matrix.ok, [(o.probe.kind, o.probe.src.label, o.probe.dst.label, o.detail) for o in matrix.failures]
    assert len(matrix.by_kind(POD_CLUSTERIP)) == 6 and len(matrix.by_kind(CLIENT_NODEPORT)) == 3
    assert all(o.ok for kind in SERVICE_KINDS for o in matrix.by_kind(kind))

    web, web_np, web_local = services.lab_services(lab)
    client = lab.client
    endpoints = {b.netns for b in web.backends}
    with serving({(b.netns, b.ip) for b in web.backends}) as broken:
        assert not broken
        total: Counter[str] = Counter()
        for node in lab.nodes:  # pod -> ClusterIP from every node: every endpoint answers (the source pod
            # itself too: hairpin), nothing fails, and the shares are equal
            seen = answers(lab.pods_on(node)[0].netns, web.cluster_ip, web.port, CONNECTIONS)
            assert "-" not in seen and {who.split()[0] for who in seen} == endpoints, (node.name, seen)
            total.update(who.split()[0] for who in seen.elements())
        expected = len(lab.nodes) * CONNECTIONS / len(endpoints)  # an equal share each
        chi2 = sum((n - expected) ** 2 / expected for n in total.values())
        assert chi2 < CHI2_LIMIT, (chi2, total)
        assert web_np.node_port is not None and web_local.node_port is not None
        for node in lab.nodes:  # client -> NodePort on every node's underlay address, cluster policy
            seen = answers(client.netns, node.underlay_ip.ip, web_np.node_port, 30)
            assert "-" not in seen and {who.split()[0] for who in seen} <= endpoints, (node.name, seen)
        # externalTrafficPolicy Local: only n1 has endpoints; they see the client itself; n2 and n3 drop.
        n1, n2, n3 = lab.nodes
        seen = answers(client.netns, n1.underlay_ip.ip, web_local.node_port, 20)
        local = {f"{b.netns} {client.underlay_ip.ip}" for b in web_local.backends}
        assert set(seen) == local, seen
        for node in (n2, n3):
            assert answers(client.netns, node.underlay_ip.ip, web_local.node_port, 1, 1.0) == {"-": 1}
    # What a load balancer asks each node: its healthCheckNodePort says whether it has local endpoints.
    assert web_local.health_check_node_port is not None
    assert [health_check(client.netns, n.underlay_ip.ip, web_local.health_check_node_port) for n in lab.nodes] \
        == [(200, len(web_local.backends)), (503, 0), (503, 0)]

    if mode == "nftables":  # the CLI shows the Services' rows and the spread, and passes
        env = dict(os.environ, CNIPY_LAB_STATE_ROOT=str(state_root))
        out = subprocess.run([str(ROOT / ".venv" / "bin" / "cnipy"), "lab", "check", "--name", lab_name],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Which endpoints answered" in out.stdout and "n/a" not in out.stdout
        assert "web-local NodePort Local" in subprocess.run(
            [str(ROOT / ".venv" / "bin" / "cnipy"), "lab", "status", "--name", lab_name],
            env=env, capture_output=True, text=True, timeout=60).stdout

    report = down(lab_name, state_root=state_root)
    assert not report.leftovers and not report.warnings, report
    assert not [pid for pid in proxies.values() if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]]
    assert leftovers(lab_name, state_root, before) == []


def test_a_proxy_that_fails_is_named_and_check_fails_only_its_probes(
        lab_name: str, state_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need("nft")
    monkeypatch.setattr(services, "proxy_argv",
                        lambda lab, node: ["sh", "-c", "echo 'proxy: cannot start' >&2; exit 3"])
    with pytest.raises(ServicesNotReady, match="proxy: cannot start"):
        up(spec(lab_name, state_root, nodes=2, pods_per_node=1, services="nftables"))
    st = status(lab_name, state_root)
    assert st.phase == "up" and st.lab is not None  # the rest of the lab works
    matrix = check(st.lab, timeout=1.0)
    assert matrix.failures and {o.probe.kind for o in matrix.failures} <= {POD_CLUSTERIP, CLIENT_NODEPORT,
                                                                           CLIENT_LOCAL}
    assert all(o.ok for o in matrix.outcomes if o.probe.kind not in SERVICE_KINDS)


def test_up_again_restarts_a_proxy_that_stopped(lab_name: str, state_root: Path) -> None:
    need("nft")
    lab = up(spec(lab_name, state_root, nodes=2, pods_per_node=1, services="nftables"))
    old = procs.recorded(lab)["proxy-n2"]
    assert procs.kill_all([old]) == []
    assert "proxy-n2" not in procs.recorded(lab)
    up(spec(lab_name, state_root, nodes=2, pods_per_node=1, services="nftables"))
    assert procs.recorded(lab)["proxy-n2"] != old
    health = services.healthz(lab.nodes[1])
    assert health is not None and health["healthy"]
    assert check(lab).ok

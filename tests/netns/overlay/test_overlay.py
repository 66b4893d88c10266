"""The overlay in real namespaces with a real etcd: reachability (vxlan, host-gw, DirectRouting), a node joining
and leaving, repair of state removed by hand, and an etcd outage."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.netns.overlay.topo import Cluster, Node, in_ns, ns_http

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster_factory() -> Iterator[list[Cluster]]:
    made: list[Cluster] = []
    yield made
    for c in made:
        c.close()


def up(made: list[Cluster], nodes: int = 3, pods: int = 1, **kw: object) -> Cluster:
    c = Cluster(**kw)  # type: ignore[arg-type]
    made.append(c)
    c.build(nodes)
    for n in c.nodes:
        c.start_agent(n)
    c.wait_ready()
    for n in c.nodes:
        for _ in range(pods):
            c.add_pod(n)
    return c


def routes(node: Node) -> str:
    return in_ns(node.ns, "ip", "route", "show", "proto", "77")


def fdb(node: Node) -> str:
    return in_ns(node.ns, "bridge", "fdb", "show", "dev", "cnipy.1", check=False)


def test_vxlan_three_nodes_every_pod_reaches_every_pod(cluster_factory: list[Cluster]) -> None:
    c = up(cluster_factory, pods=2)
    c.wait_reachable(timeout=5)
    n1 = c.nodes[0]
    link = in_ns(n1.ns, "ip", "-d", "link", "show", "cnipy.1")
    assert "vxlan id 1" in link and "mtu 1450" in link and "dstport 4789" in link
    from cnipy.netlink.vxlan import tx_checksum_offload
    assert tx_checksum_offload(n1.ns, "cnipy.1")  # "auto" on a kernel >= 5.7 leaves it on (flannel#1279)
    # per peer: neighbour, FDB entry to the underlay address, onlink route
    for peer in c.nodes[1:]:
        sub = peer.pods[0].ip.exploded.rsplit(".", 1)[0]
        assert f"{sub}.0/24 via {sub}.0 dev cnipy.1" in routes(n1) and "onlink" in routes(n1)
        assert f"dst {peer.ip.ip}" in fdb(n1)
        assert f"{sub}.0 lladdr" in in_ns(n1.ns, "ip", "neigh", "show", "dev", "cnipy.1")
    env = n1.subnet_file.read_text()
    assert "CNIPY_MTU=1450" in env and "CNIPY_NETWORK=10.244.0.0/16" in env
    assert stat.S_IMODE(os.stat(n1.subnet_file).st_mode) == 0o600
    masq = in_ns(n1.ns, "iptables", "-w", "-t", "nat", "-S", "CNIPY-OVERLAY-MASQ")
    assert "-s 10.244.0.0/16 -d 10.244.0.0/16" in masq and "MASQUERADE" in masq
    code, metrics = ns_http(n1.ns, 9867, "/metrics")
    assert code == 200 and "cnipy_overlay_peers 2" in metrics and "cnipy_overlay_ready 1" in metrics


def test_static_mode_without_etcd(cluster_factory: list[Cluster]) -> None:
    c = up(cluster_factory, static=True)
    c.wait_reachable(timeout=5)
    kvs = json.loads((c.dir / "leases.json").read_text())["kvs"]
    assert {json.loads(v["value"])["node"] for k, v in kvs.items() if "/subnets/" in k} == {"n1", "n2", "n3"}


def test_plugin_del_after_the_agent_is_gone_and_gc(cluster_factory: list[Cluster]) -> None:
    c = up(cluster_factory, nodes=1, pods=3)
    n1 = c.nodes[0]
    p1, p2, p3 = n1.pods
    ipam = n1.dir / "ipam" / "overlay"
    assert (ipam / str(p2.ip)).exists() and len(list((n1.dir / "cni").iterdir())) == 3
    for f in (n1.dir / "cni").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    # GC: only p1 and p3 are still valid; p2's address and saved config go
    c.cni(n1, "GC", "", "", **{"cni.dev/valid-attachments": [
        {"containerID": f"{c.tag}{p.name}", "ifname": "eth0"} for p in (p1, p3)]})
    assert not (ipam / str(p2.ip)).exists() and (ipam / str(p1.ip)).exists()
    assert len(list((n1.dir / "cni").iterdir())) == 2
    # the agent goes away with its subnet file: DEL still works from what was saved
    c.stop_agent(n1)
    n1.subnet_file.unlink()
    c.cni(n1, "DEL", p1.ns, f"{c.tag}{p1.name}")
    assert not (ipam / str(p1.ip)).exists()
    assert "eth0" not in in_ns(p1.ns, "ip", "link")
    c.cni(n1, "DEL", p1.ns, f"{c.tag}{p1.name}")  # twice is fine
    # and ADD now is "try again later"
    with pytest.raises(RuntimeError, match='"code":11'):
        c.add_pod(n1)


def test_host_gw_three_nodes(cluster_factory: list[Cluster]) -> None:
    c = up(cluster_factory, backend="host-gw")
    c.wait_reachable(timeout=5)
    n1 = c.nodes[0]
    assert "cnipy.1" not in in_ns(n1.ns, "ip", "link")
    for peer in c.nodes[1:]:
        assert f"via {peer.ip.ip} dev eth0" in routes(n1)
    assert "CNIPY_MTU=1500" in n1.subnet_file.read_text()


def test_host_gw_refuses_a_peer_on_another_segment(cluster_factory: list[Cluster]) -> None:
    c = up(cluster_factory, backend="host-gw", segments=2, pods=0)
    n1, n2, n3 = c.nodes  # n1, n3 on segment 1; n2 on segment 2
    time.sleep(0.5)
    assert f"via {n3.ip.ip}" in routes(n1) and str(n2.ip.ip) not in routes(n1)
    assert "cnipy_overlay_peers_rejected 1" in ns_http(n1.ns, 9867, "/metrics")[1]
    assert "not on this node's L2 subnet" in c.logs(n1)


def vxlan_packets(node: Node, action: object) -> int:
    """UDP 4789 packets seen on node's underlay while `action()` runs (tcpdump)."""
    proc = subprocess.Popen(["ip", "netns", "exec", node.ns, "tcpdump", "-i", "eth0", "-nn", "-l", "-q",
                             "udp port 4789"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # tcpdump attaches
        action()  # type: ignore[operator]
        time.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    return len([line for line in out.splitlines() if line.strip()])


def test_direct_routing_same_segment_direct_other_segment_vxlan(cluster_factory: list[Cluster]) -> None:
    c = up(cluster_factory, segments=2, direct_routing=True)
    c.wait_reachable(timeout=5)
    n1, n2, n3 = c.nodes
    assert f"via {n3.ip.ip} dev eth0" in routes(n1)  # same segment: plain route
    assert "dev cnipy.1" in routes(n1) and str(n3.ip.ip) not in fdb(n1)
    p1, p2, p3 = n1.pods[0], n2.pods[0], n3.pods[0]
    from tests.netns.overlay.topo import tcp_exchange
    assert vxlan_packets(n1, lambda: tcp_exchange(p1, p3) and tcp_exchange(p3, p1)) == 0
    assert vxlan_packets(n1, lambda: tcp_exchange(p1, p2) and tcp_exchange(p2, p1)) > 0


def test_a_node_joins_and_leaves(cluster_factory: list[Cluster]) -> None:
    c = up(cluster_factory)
    c.wait_reachable(timeout=5)
    n4 = c.add_node()
    c.start_agent(n4, "--release-on-exit")
    c.wait_ready([n4])  # ready: its lease is in etcd
    started = time.monotonic()
    from cnipy.overlay import subnetfile
    sub4 = str(subnetfile.read(n4.subnet_file).subnet.network)
    while not all(sub4 in routes(n) for n in c.nodes[:3]):
        assert time.monotonic() - started < 1.0, "convergence target (1 s at this size) missed"
        time.sleep(0.02)
    c.add_pod(n4)
    c.wait_reachable(timeout=5)
    c.stop_agent(n4)  # --release-on-exit: node removal
    deadline = time.monotonic() + 5
    while any(sub4 in routes(n) or str(n4.ip.ip) in fdb(n) for n in c.nodes[:3]):
        assert time.monotonic() < deadline, [routes(n) for n in c.nodes[:3]]
        time.sleep(0.1)
    assert "cnipy.1" not in in_ns(n4.ns, "ip", "link")
    # a node removed while its agent is down: `cnipy agent --remove-node` deletes its lease
    n3 = c.nodes[2]
    sub3 = str(subnetfile.read(n3.subnet_file).subnet.network)
    c.stop_agent(n3)  # plain SIGTERM: the lease stays (a restart would take it back)
    time.sleep(0.3)
    assert sub3 in routes(c.nodes[0])
    from tests.netns.overlay.topo import PY
    out = in_ns(c.nodes[0].ns, PY, "-c", "import sys; from cnipy.cli.agent import agent_command; "
                "agent_command(sys.argv[1:])", "--remove-node", "--node", "n3", "--etcd", c.etcd_url)
    assert sub3 in out
    deadline = time.monotonic() + 3
    while any(sub3 in routes(n) for n in c.nodes[:2]):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_state_removed_by_hand_is_repaired(cluster_factory: list[Cluster]) -> None:
    # the netlink monitor, not the periodic resync, must do it
    c = up(cluster_factory, resync=30.0, backend_options={"ChecksumOffload": "off"})
    c.wait_reachable(timeout=5)
    n1, n2 = c.nodes[0], c.nodes[1]
    from cnipy.netlink.vxlan import tx_checksum_offload
    assert not tx_checksum_offload(n1.ns, "cnipy.1")
    sub2 = n2.pods[0].ip.exploded.rsplit(".", 1)[0]

    def repaired(check: object, what: str) -> None:
        deadline = time.monotonic() + 3
        while not check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what} not repaired:\n{c.logs(n1)}"
            time.sleep(0.05)

    in_ns(n1.ns, "ip", "route", "del", f"{sub2}.0/24")
    repaired(lambda: f"{sub2}.0/24" in routes(n1), "route")
    in_ns(n1.ns, "bridge", "fdb", "del", c_mac(c, n2), "dev", "cnipy.1", "dst", str(n2.ip.ip))
    repaired(lambda: f"dst {n2.ip.ip}" in fdb(n1), "fdb entry")
    in_ns(n1.ns, "ip", "link", "del", "cnipy.1")
    repaired(lambda: f"{sub2}.0/24" in routes(n1) and f"dst {n2.ip.ip}" in fdb(n1), "vxlan device")
    assert not tx_checksum_offload(n1.ns, "cnipy.1")
    c.wait_reachable(timeout=3)


def c_mac(c: Cluster, node: Node) -> str:
    from cnipy.overlay.backends import vtep_mac
    return vtep_mac(node.name)


@pytest.mark.slow
def test_etcd_outage_keeps_traffic_and_leases_renew(cluster_factory: list[Cluster]) -> None:
    outage = float(os.environ.get("CNIPY_ETCD_OUTAGE", "30"))
    c = up(cluster_factory, lease_ttl=6, pods=1)  # keep-alive every 2 s, a TTL far shorter than the outage
    c.wait_reachable(timeout=5)
    pods = c.pods()
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        from tests.netns.overlay.topo import tcp_exchange
        while not stop.is_set():
            for a in pods:
                for b in pods:
                    if a is not b and not tcp_exchange(a, b):
                        failures.append(f"{a.name}->{b.name} at {time.monotonic():.1f}")
            time.sleep(0.5)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    c.stop_etcd()
    time.sleep(outage)
    renewals_before = [metric(c, n, "cnipy_overlay_lease_renewals_total") for n in c.nodes]
    c.start_etcd()
    deadline = time.monotonic() + 15
    renewed = "cnipy_overlay_lease_renewals_total"
    while any(metric(c, n, renewed) <= r for n, r in zip(c.nodes, renewals_before, strict=True)):
        assert time.monotonic() < deadline, "leases were not renewed after etcd came back"
        time.sleep(0.2)
    stop.set()
    t.join(10)
    assert failures == []
    assert all(metric(c, n, "cnipy_overlay_store_errors_total") > 0 for n in c.nodes)
    c.wait_reachable(timeout=5)
    # leases still there: a 4th node sees all three
    n4 = c.add_node()
    c.start_agent(n4)
    c.wait_ready([n4])
    assert metric(c, n4, "cnipy_overlay_peers") == 3


def metric(c: Cluster, node: Node, name: str) -> float:
    for line in ns_http(node.ns, 9867, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")

"""IPv6 through the real ``ip6 cnipy`` table, in the topology's IPv6 addresses (nftables: the only IPv6 back end)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import pytest

from cnipy.proxy.model import ClusterState
from cnipy.proxy.nftables.backend import NftablesProxier
from cnipy.proxy.nftables.render import sticky_set_name
from cnipy.proxy.nftables.runner import Nft
from cnipy.proxy.plan import NodeConfig, build_family_plans, build_plans
from tests.conftest import need
from tests.netns.proxy.topology import PY, Topology
from tests.support.netns import Netns
from tests.unit.proxy.builders import endpoints, service, state

CHI2_DF2_P001 = 13.82  # chi-square critical value, 2 degrees of freedom, p = 0.001
POD_CIDR6 = IPv6Network("fd00:244::/48")


@pytest.fixture(autouse=True)
def _nft() -> None:
    need("nft")


def v6_config(**kw: Any) -> NodeConfig[IPv6Network]:
    base: dict[str, Any] = {"node_name": "node1", "cluster_cidrs": (POD_CIDR6,), "ip_family": 6}
    base.update(kw)
    return NodeConfig(**base)


def sync6(ns: Netns, st: ClusterState, **kw: Any) -> NftablesProxier:
    cfg = v6_config(**kw)
    p = NftablesProxier(Nft("ip6", prefix=("ip", "netns", "exec", ns.name)), cfg)
    p.sync(build_plans(st, cfg), None)
    return p


def test_cluster_ip_over_ipv6_spreads_over_endpoints(topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(3)
    s = service("web", "fd00:96::10")
    sync6(topo.node, state((s, endpoints(s, *topo.endpoint_ips6))))
    r = topo.probe("tcp", "fd00:96::10", "80", "600")
    counts = r["ok"]
    assert isinstance(counts, dict)
    assert r["fail"] == 0 and sum(counts.values()) == 600 and len(counts) == 3, r
    chi2 = sum((n - 200) ** 2 / 200 for n in counts.values())
    assert chi2 < CHI2_DF2_P001, f"shares not equal: {counts} (chi2={chi2:.1f})"
    # the client is outside the pod CIDR: masqueraded to the node's bridge address
    assert r["peers"] == {"fd00:244:1::1": 600}


def test_node_port_on_the_node_ipv6_address(topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2)
    s = service("web", "fd00:96::10", type="NodePort", node_port=30080)
    sync6(topo.node, state((s, endpoints(s, *topo.endpoint_ips6))))
    r = topo.probe("tcp", "fd00:100::1", "30080", "20")
    assert r["fail"] == 0 and r["peers"] == {"fd00:244:1::1": 20}, r
    r = topo.probe("tcp", "fd00:96::10", "80", "10", ns=topo.node)  # from the node itself (output hook)
    assert r["fail"] == 0, r
    r = topo.probe("tcp", "::1", "30080", "1", "1", ns=topo.node)  # no localhost NodePorts over IPv6
    assert r["fail"] == 1 and r["errors"] == {"ConnectionRefusedError": 1}, r
    # the IPv4 side of the same node is untouched: no IPv4 table, no IPv4 NodePort
    r = topo.probe("tcp", "192.168.100.1", "30080", "1", "1")
    assert r["fail"] == 1, r


def test_service_without_endpoints_rejects_at_once_over_ipv6(topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    s = service("empty", "fd00:96::14", type="NodePort", node_port=30083)
    dns = service("dns", "fd00:96::53", 53, protocol="UDP", target=53)
    sync6(topo.node, state((s, None), (dns, None)))
    start = time.monotonic()
    r = topo.probe("tcp", "fd00:96::14", "80", "3", "5")
    assert r["errors"] == {"ConnectionRefusedError": 3}, r
    r = topo.probe("tcp", "fd00:100::1", "30083", "3", "5")
    assert r["errors"] == {"ConnectionRefusedError": 3}, r
    # UDP gets an ICMPv6 port unreachable: a connected socket reports it as refused
    udp = ("import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\ns.settimeout(3)\n"
           "s.connect(('fd00:96::53', 53))\ns.send(b'x')\ntry:\n    s.recv(64)\n"
           "except OSError as exc:\n    print(type(exc).__name__)\n")
    assert topo.client.run(PY, "-c", udp, timeout=30).stdout.strip() == "ConnectionRefusedError"
    assert time.monotonic() - start < 4  # refused, not timed out


def test_external_traffic_policy_local_keeps_the_client_ipv6_address(topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2, two_nodes=True)
    assert topo.node2 is not None
    s = service("web", "fd00:96::10", type="NodePort", node_port=30080, etp="Local")
    st = state((s, endpoints(s, *topo.endpoint_ips6, node="node1")))
    sync6(topo.node, st)
    sync6(topo.node2, st, node_name="node2")
    # 3 s each: the first connection may need a SYN retransmission (1 s) while neighbour discovery completes
    r = topo.probe("tcp", "fd00:100::1", "30080", "20", "3")
    assert r["fail"] == 0 and r["peers"] == {"fd00:100::2": 20}, r  # not masqueraded
    start = time.monotonic()
    r = topo.probe("tcp", "fd00:101::1", "30080", "2", "0.5")  # node2 has no local endpoint: dropped
    assert r["fail"] == 2 and r["errors"] == {"TimeoutError": 2}, r
    assert time.monotonic() - start < 10


def test_ipv6_client_ip_affinity_sticks(topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(3)
    s = service("web", "fd00:96::10", affinity=60, type="NodePort", node_port=30080)
    st = state((s, endpoints(s, *topo.endpoint_ips6)))
    p = sync6(topo.node, st)
    r = topo.probe("tcp", "fd00:96::10", "80", "40")
    counts = r["ok"]
    assert isinstance(counts, dict) and r["fail"] == 0 and len(counts) == 1, r
    (ep,) = counts
    endpoint = topo.endpoint_ips6[int(ep[2:])]
    # recorded in the client set of that endpoint for this service, and in no other
    listed = p.nft.list_sets("sticky-")
    dest = "fd00:96::10 . tcp . 80"
    assert {n: [e.key for e in entries] for n, entries in listed.items()
            if n in {sticky_set_name(dest, f"{ip} . 8080") for ip in topo.endpoint_ips6} and entries} == {
        sticky_set_name(dest, f"{endpoint} . 8080"): ["fd00:100::2"]}
    # the NodePort sticks too
    r = topo.probe("tcp", "fd00:100::1", "30080", "20", "3")
    assert r["fail"] == 0 and len(r["ok"]) == 1, r  # type: ignore[arg-type]
    # a full resync (the table is replaced) keeps the client on its endpoint
    p.sync(build_plans(st, v6_config()), None)
    name = sticky_set_name(dest, f"{endpoint} . 8080")
    assert [e.key for e in p.nft.list_sets(name)[name]] == ["fd00:100::2"]  # carried over, before any packet
    assert topo.probe("tcp", "fd00:96::10", "80", "20")["ok"] == {ep: 20}
    # its endpoint leaves: the client moves to another one, and sticks there
    rest = [ip for ip in topo.endpoint_ips6 if ip != endpoint]
    p.sync(build_plans(state((s, endpoints(s, *rest))), v6_config()), {s.key})
    r = topo.probe("tcp", "fd00:96::10", "80", "20")
    assert r["fail"] == 0 and len(r["ok"]) == 1 and ep not in r["ok"], r  # type: ignore[operator, arg-type]


def test_this_nft_cannot_record_ipv6_affinity(netns: Netns) -> None:
    """Why the IPv6 table keeps affinity in per-endpoint sets (render.StickyDest) rather than in the IPv4 table's
    dynamic map: this nft cannot generate the rule that writes it. If it can, render.IPV6.affinity may be on."""
    text = ("table ip6 t {\n map m { typeof ip6 saddr . ip6 daddr . tcp dport : ip6 daddr . tcp dport ; "
            "flags dynamic,timeout ; }\n chain r { update @m { ip6 saddr . ip6 daddr . tcp dport timeout 60s : "
            "ip6 daddr . tcp dport } ; }\n}\n")
    proc = subprocess.run(["ip", "netns", "exec", netns.name, "nft", "-f", "-"], input=text, text=True,
                          capture_output=True, timeout=30)
    assert proc.returncode != 0, "this nft records IPv6 affinity entries: render.IPV6.affinity may be on"


def test_dual_stack_tables_coexist(topo_factory: Callable[..., Topology]) -> None:
    """One service with a cluster IP of each family, a proxier per family: reachable over both."""
    import dataclasses
    from ipaddress import ip_address

    from cnipy.proxy.dualstack import MetaProxier
    topo = topo_factory(2)
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    s = dataclasses.replace(s, cluster_ips=(ip_address("10.96.0.10"), ip_address("fd00:96::10")))
    st = ClusterState({s.key: s}, {s.key: (endpoints(s, topo.endpoint_ips[0]),
                                           endpoints(s, topo.endpoint_ips6[1]))})
    prefix = ("ip", "netns", "exec", topo.node.name)
    v4 = NodeConfig("node1", cluster_cidrs=(IPv4Network("10.244.0.0/16"),))
    v6 = v6_config()
    proxier = MetaProxier({4: NftablesProxier(Nft("ip", prefix=prefix), v4),
                           6: NftablesProxier(Nft("ip6", prefix=prefix), v6)})
    proxier.sync(build_family_plans(st, (v4, v6)), None)
    assert topo.probe("tcp", "10.96.0.10", "80", "5")["ok"] == {"ep0": 5}
    assert topo.probe("tcp", "fd00:96::10", "80", "5")["ok"] == {"ep1": 5}
    assert topo.probe("tcp", "192.168.100.1", "30080", "5")["ok"] == {"ep0": 5}
    assert topo.probe("tcp", "fd00:100::1", "30080", "5")["ok"] == {"ep1": 5}
    proxier.cleanup()
    tables = topo.node.run("nft", "list", "tables").stdout
    assert "cnipy" not in tables

"""IPv6 in the topology's IPv6 addresses, through the real ``ip6 cnipy`` table or ip6tables (nf_tables and legacy)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

import pytest

from cnipy.proxy.iptables import names
from cnipy.proxy.model import ClusterState
from cnipy.proxy.nftables.render import sticky_set_name
from cnipy.proxy.plan import NodeConfig, build_family_plans, build_plans
from cnipy.proxy.sync import Proxier
from tests.conftest import need
from tests.netns.proxy.conftest import make_proxier
from tests.netns.proxy.topology import PY, Topology
from tests.support.netns import Netns
from tests.unit.proxy.builders import endpoints, service, state

CHI2_DF2_P001 = 13.82  # chi-square critical value, 2 degrees of freedom, p = 0.001
POD_CIDR6 = IPv6Network("fd00:244::/48")


@pytest.fixture(params=["nftables", "iptables", "iptables-legacy"])
def mode6(request: pytest.FixtureRequest) -> str:
    need({"nftables": "nft", "iptables": "ip6tables-restore", "iptables-legacy": "ip6tables-legacy-restore"}[
        request.param])
    return str(request.param)


def v6_config(**kw: Any) -> NodeConfig[IPv6Network]:
    base: dict[str, Any] = {"node_name": "node1", "cluster_cidrs": (POD_CIDR6,), "ip_family": 6}
    base.update(kw)
    return NodeConfig(**base)


def sync6(mode: str, ns: Netns, st: ClusterState, **kw: Any) -> Proxier:
    cfg = v6_config(**kw)
    p = make_proxier(mode, ns, cfg)
    p.sync(build_plans(st, cfg), None)
    return p


def test_cluster_ip_over_ipv6_spreads_over_endpoints(mode6: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(3)
    s = service("web", "fd00:96::10")
    sync6(mode6, topo.node, state((s, endpoints(s, *topo.endpoint_ips6))))
    r = topo.probe("tcp", "fd00:96::10", "80", "600")
    counts = r["ok"]
    assert isinstance(counts, dict)
    assert r["fail"] == 0 and sum(counts.values()) == 600 and len(counts) == 3, r
    chi2 = sum((n - 200) ** 2 / 200 for n in counts.values())
    assert chi2 < CHI2_DF2_P001, f"shares not equal: {counts} (chi2={chi2:.1f})"
    # the client is outside the pod CIDR: masqueraded to the node's bridge address
    assert r["peers"] == {"fd00:244:1::1": 600}


def test_node_port_on_the_node_ipv6_address(mode6: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2)
    s = service("web", "fd00:96::10", type="NodePort", node_port=30080)
    sync6(mode6, topo.node, state((s, endpoints(s, *topo.endpoint_ips6))))
    r = topo.probe("tcp", "fd00:100::1", "30080", "20")
    assert r["fail"] == 0 and r["peers"] == {"fd00:244:1::1": 20}, r
    r = topo.probe("tcp", "fd00:96::10", "80", "10", ns=topo.node)  # from the node itself (output hook)
    assert r["fail"] == 0, r
    r = topo.probe("tcp", "::1", "30080", "1", "1", ns=topo.node)  # no localhost NodePorts over IPv6
    assert r["fail"] == 1 and r["errors"] == {"ConnectionRefusedError": 1}, r
    # the IPv4 side of the same node is untouched: no IPv4 table, no IPv4 NodePort
    r = topo.probe("tcp", "192.168.100.1", "30080", "1", "1")
    assert r["fail"] == 1, r


def test_service_without_endpoints_rejects_at_once_over_ipv6(mode6: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    s = service("empty", "fd00:96::14", type="NodePort", node_port=30083)
    dns = service("dns", "fd00:96::53", 53, protocol="UDP", target=53)
    sync6(mode6, topo.node, state((s, None), (dns, None)))
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


def test_external_traffic_policy_local_keeps_the_client_ipv6_address(
        mode6: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2, two_nodes=True)
    assert topo.node2 is not None
    s = service("web", "fd00:96::10", type="NodePort", node_port=30080, etp="Local")
    st = state((s, endpoints(s, *topo.endpoint_ips6, node="node1")))
    sync6(mode6, topo.node, st)
    sync6(mode6, topo.node2, st, node_name="node2")
    # 3 s each: the first connection may need a SYN retransmission (1 s) while neighbour discovery completes
    r = topo.probe("tcp", "fd00:100::1", "30080", "20", "3")
    assert r["fail"] == 0 and r["peers"] == {"fd00:100::2": 20}, r  # not masqueraded
    start = time.monotonic()
    r = topo.probe("tcp", "fd00:101::1", "30080", "2", "0.5")  # node2 has no local endpoint: dropped
    assert r["fail"] == 2 and r["errors"] == {"TimeoutError": 2}, r
    assert time.monotonic() - start < 10


def _affinity_clients(mode: str, p: Proxier, topo: Topology) -> dict[str, list[str]]:
    """Per endpoint address of default/web (fd00:96::10 port 80), the client addresses the kernel recorded for
    affinity to it: the nftables per-endpoint sets, or the xt_recent list named after its KUBE-SEP chain."""
    out: dict[str, list[str]] = {}
    for ip in topo.endpoint_ips6:
        if mode == "nftables":
            name = sticky_set_name("fd00:96::10 . tcp . 80", f"{ip} . 8080")
            out[ip] = [e.key for e in p.nft.list_sets(name).get(name, [])]  # type: ignore[attr-defined]
        else:
            sep = names.sep_chain("default/web", "tcp", f"[{ip}]:8080")
            proc = topo.node.run("cat", f"/proc/net/xt_recent/{sep}", check=False)  # absent: no such rule
            out[ip] = [str(ip_address(line.split()[0].removeprefix("src="))) for line in proc.stdout.splitlines()]
    return {ip: clients for ip, clients in out.items() if clients}


def test_ipv6_client_ip_affinity_sticks(mode6: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(3)
    s = service("web", "fd00:96::10", affinity=60, type="NodePort", node_port=30080)
    st = state((s, endpoints(s, *topo.endpoint_ips6)))
    p = sync6(mode6, topo.node, st)
    r = topo.probe("tcp", "fd00:96::10", "80", "40")
    counts = r["ok"]
    assert isinstance(counts, dict) and r["fail"] == 0 and len(counts) == 1, r
    (ep,) = counts
    endpoint = topo.endpoint_ips6[int(ep[2:])]
    # recorded (the client's whole IPv6 address) for that endpoint of this service, and no other
    assert _affinity_clients(mode6, p, topo) == {endpoint: ["fd00:100::2"]}
    # the NodePort sticks too
    r = topo.probe("tcp", "fd00:100::1", "30080", "20", "3")
    assert r["fail"] == 0 and len(r["ok"]) == 1, r  # type: ignore[arg-type]
    # a full resync (every rule rewritten) keeps the client on its endpoint
    p.sync(build_plans(st, v6_config()), None)
    assert _affinity_clients(mode6, p, topo) == {endpoint: ["fd00:100::2"]}  # carried over, before any packet
    assert topo.probe("tcp", "fd00:96::10", "80", "20")["ok"] == {ep: 20}
    # its endpoint leaves: the client moves to another one, and sticks there
    rest = [ip for ip in topo.endpoint_ips6 if ip != endpoint]
    p.sync(build_plans(state((s, endpoints(s, *rest))), v6_config()), {s.key})
    r = topo.probe("tcp", "fd00:96::10", "80", "20")
    assert r["fail"] == 0 and len(r["ok"]) == 1 and ep not in r["ok"], r  # type: ignore[operator, arg-type]


def test_hairpin_over_ipv6(mode6: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    s = service("web", "fd00:96::10")
    sync6(mode6, topo.node, state((s, endpoints(s, topo.endpoint_ips6[0]))))
    r = topo.probe("tcp", "fd00:96::10", "80", "5", "3", ns=topo.endpoints[0])  # the endpoint reaches itself
    assert r["fail"] == 0 and r["ok"] == {"ep0": 5}, r
    assert r["peers"] == {"fd00:244:1::1": 5}, r  # masqueraded, so the reply comes back through the node


def test_this_nft_cannot_record_ipv6_affinity(netns: Netns) -> None:
    """Why the IPv6 table keeps affinity in per-endpoint sets (render.StickyDest) rather than in the IPv4 table's
    dynamic map: this nft cannot generate the rule that writes it. If it can, render.IPV6.affinity may be on."""
    need("nft")
    text = ("table ip6 t {\n map m { typeof ip6 saddr . ip6 daddr . tcp dport : ip6 daddr . tcp dport ; "
            "flags dynamic,timeout ; }\n chain r { update @m { ip6 saddr . ip6 daddr . tcp dport timeout 60s : "
            "ip6 daddr . tcp dport } ; }\n}\n")
    proc = subprocess.run(["ip", "netns", "exec", netns.name, "nft", "-f", "-"], input=text, text=True,
                          capture_output=True, timeout=30)
    assert proc.returncode != 0, "this nft records IPv6 affinity entries: render.IPV6.affinity may be on"


def test_dual_stack_tables_coexist(mode6: str, topo_factory: Callable[..., Topology]) -> None:
    """One service with a cluster IP of each family, a proxier per family: reachable over both."""
    import dataclasses

    from cnipy.proxy.dualstack import MetaProxier
    topo = topo_factory(2)
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    s = dataclasses.replace(s, cluster_ips=(ip_address("10.96.0.10"), ip_address("fd00:96::10")))
    st = ClusterState({s.key: s}, {s.key: (endpoints(s, topo.endpoint_ips[0]),
                                           endpoints(s, topo.endpoint_ips6[1]))})
    v4 = NodeConfig("node1", cluster_cidrs=(IPv4Network("10.244.0.0/16"),))
    v6 = v6_config()
    proxier = MetaProxier({4: make_proxier(mode6, topo.node, v4), 6: make_proxier(mode6, topo.node, v6)})
    proxier.sync(build_family_plans(st, (v4, v6)), None)
    assert topo.probe("tcp", "10.96.0.10", "80", "5")["ok"] == {"ep0": 5}
    assert topo.probe("tcp", "fd00:96::10", "80", "5")["ok"] == {"ep1": 5}
    assert topo.probe("tcp", "192.168.100.1", "30080", "5")["ok"] == {"ep0": 5}
    assert topo.probe("tcp", "fd00:100::1", "30080", "5")["ok"] == {"ep1": 5}
    proxier.cleanup()
    if mode6 == "nftables":
        assert "cnipy" not in topo.node.run("nft", "list", "tables").stdout
    else:
        legacy = "-legacy" if mode6 == "iptables-legacy" else ""
        for tool in ("iptables", "ip6tables"):
            assert "KUBE-" not in topo.node.run(f"{tool}{legacy}-save").stdout, tool

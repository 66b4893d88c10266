"""kube-proxy nftables mode's cluster-ips-check in the real kernel, IPv4 and IPv6 (render.cluster_ips_chains):
after DNAT, a new connection still addressed to a ClusterIP (a port no service has) is refused at once; with
service CIDRs, one to an address in them that no service has is dropped instead of following the node's default
route (which, in the topology, leads to the client namespace)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import pytest

from cnipy.proxy.model import ClusterState
from cnipy.proxy.plan import NodeConfig, build_plans
from cnipy.proxy.sync import Proxier
from tests.conftest import need
from tests.netns.proxy.conftest import make_proxier
from tests.netns.proxy.topology import HERE, PY, Topology, wait_until
from tests.support.netns import Netns
from tests.unit.proxy.builders import endpoints, service, state

# family -> (pod CIDR, service CIDR, a service's ClusterIP, an unallocated address in the service CIDR)
ADDRS = {4: ("10.244.0.0/16", "10.96.0.0/16", "10.96.0.10", "10.96.0.99"),
         6: ("fd00:244::/48", "fd00:96::/112", "fd00:96::10", "fd00:96::99")}


def _sync(mode: str, topo: Topology, family: int, st: ClusterState, service_cidr: bool = False) -> Proxier:
    pods, cidr, _, _ = ADDRS[family]
    kw: dict[str, Any] = {"node_name": "node1", "cluster_cidrs": (ip_network(pods),), "ip_family": family}
    if service_cidr:
        kw["service_cidrs"] = (ip_network(cidr),)
    cfg: NodeConfig[IPv4Network] | NodeConfig[IPv6Network] = NodeConfig(**kw)
    p = make_proxier(mode, topo.node, cfg)
    p.sync(build_plans(st, cfg), None)
    return p


def _web(topo: Topology, family: int) -> ClusterState:
    ip = ADDRS[family][2]
    eps = topo.endpoint_ips if family == 4 else topo.endpoint_ips6
    web = service("web", ip)
    dns = service("dns", ip, 53, protocol="UDP", port_name="dns")  # the same ClusterIP, another port
    return state((web, endpoints(web, *eps)), (dns, endpoints(dns, *eps)))


def _udp_error(ns: Netns, host: str, port: int) -> str:
    """A datagram from a connected socket: the error a port unreachable comes back as, else "timeout"."""
    fam = "AF_INET6" if ":" in host else "AF_INET"
    code = (f"import socket\ns = socket.socket(socket.{fam}, socket.SOCK_DGRAM)\ns.settimeout(2)\n"
            f"s.connect(({host!r}, {port}))\ns.send(b'x')\ntry:\n    s.recv(64)\n    print('answered')\n"
            "except TimeoutError:\n    print('timeout')\nexcept OSError as exc:\n    print(type(exc).__name__)\n")
    return ns.run(PY, "-c", code, timeout=30).stdout.strip()


@pytest.fixture(params=[4, 6])
def family(request: pytest.FixtureRequest) -> int:
    need("nft")
    return int(request.param)


def test_a_cluster_ip_on_a_port_no_service_has_is_refused_at_once(family: int,
                                                                  topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    ip = ADDRS[family][2]
    _sync("nftables", topo, family, _web(topo, family))
    # From outside (forward), from the node itself (output after DNAT), from a pod (forward): TCP port 81.
    for who in (topo.client, topo.node, topo.endpoints[0]):
        start = time.monotonic()
        r = topo.probe("tcp", ip, "81", "3", "5", ns=who)
        elapsed = time.monotonic() - start
        assert r["errors"] == {"ConnectionRefusedError": 3}, (who, r)
        assert elapsed < 3, f"refused only after {elapsed:.1f} s"  # 3 connections and a Python start-up
    # UDP: an ICMP(v6) port unreachable. From a pod: the client's datagram would leave the node by the link it
    # came in on (the node's default route), so the kernel sends an ICMP redirect first, which restarts the
    # per-peer ICMP rate limit and suppresses the unreachable (ip_rt_send_redirect sets rate_last).
    assert _udp_error(topo.endpoints[0], ip, 54) == "ConnectionRefusedError"
    # The ports the ClusterIP has still work: from outside, from the node, and a pod to itself (hairpin).
    for who in (topo.client, topo.node, topo.endpoints[0]):
        r = topo.probe("tcp", ip, "80", "3", ns=who)
        assert r["fail"] == 0 and r["ok"] == {"ep0": 3}, (who, r)
    assert _udp_error(topo.endpoints[0], ip, 53) == "answered"


def test_iptables_mode_has_no_such_check(topo_factory: Callable[..., Topology]) -> None:
    """As kube-proxy's iptables mode: the packet to a port no service has is routed on (back to the client,
    which drops it): a timeout, not a refusal. (Keeps the two modes' difference visible.)"""
    need("iptables-restore")
    topo = topo_factory(1)
    _sync("iptables", topo, 4, _web(topo, 4))
    r = topo.probe("tcp", "10.96.0.10", "81", "1", "1")
    assert r["errors"] == {"TimeoutError": 1}, r


def _watch(topo: Topology, family: int) -> Callable[[], int]:
    """Give the client namespace the unallocated address, a listener on it, and a counter of the packets that
    arrive for it; returns a reader of that counter."""
    addr = ADDRS[family][3]
    ip = "ip" if family == 4 else "ip6"
    topo.client.run("ip", "addr", "add", f"{addr}/{32 if family == 4 else 128}", "dev", "lo")
    topo.client.run("nft", "-f", "-", input=(
        "table inet watch {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n"
        f"  {ip} daddr {addr} counter\n }}\n}}\n"))
    proc = topo.client.popen(PY, str(HERE / "echo_server.py"), "client", "8080", stdout=subprocess.PIPE)
    topo.servers.append(proc)  # killed with the topology
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def packets() -> int:
        out = topo.client.run("nft", "list", "chain", "inet", "watch", "pre").stdout
        m = re.search(r"counter packets (\d+)", out)
        assert m is not None, out
        return int(m.group(1))

    return packets


def test_an_unallocated_address_of_the_service_cidr_is_dropped(family: int,
                                                                 topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    addr = ADDRS[family][3]
    packets = _watch(topo, family)
    st = _web(topo, family)
    # Without --service-cidr the node routes it on, to the client namespace (its default route), which answers.
    _sync("nftables", topo, family, st)

    def answered(who: Netns) -> bool:
        r = topo.probe("tcp", addr, "8080", "1", "1", ns=who)
        return r["ok"] == {"client": 1}

    # A pod (forward), the node itself (output). The first IPv6 connection across the fresh bridge may be lost
    # to neighbour discovery (seen here in two runs of five), hence a bounded wait.
    for who in (topo.endpoints[0], topo.node):
        assert wait_until(partial(answered, who), timeout=15, step=0.2), who
    assert packets() > 0
    # With it: dropped on the node, nothing arrives.
    _sync("nftables", topo, family, st, service_cidr=True)
    before = packets()
    for who in (topo.endpoints[0], topo.node):
        r = topo.probe("tcp", addr, "8080", "1", "1", ns=who)
        assert r["fail"] == 1 and set(r["errors"]) <= {"TimeoutError", "PermissionError"}, (who, r)
    assert _udp_error(topo.endpoints[0], addr, 8080) == "timeout"
    assert packets() == before
    # The reject of a ClusterIP's missing port comes first, and the service works.
    ip = ADDRS[family][2]
    r = topo.probe("tcp", ip, "81", "1", "5")
    assert r["errors"] == {"ConnectionRefusedError": 1}, r
    r = topo.probe("tcp", ip, "80", "3")
    assert r["fail"] == 0 and r["ok"] == {"ep0": 3}, r

"""The filter side with real traffic: host firewalls with a DROP policy (set inside the test's node namespace
only), the INVALID drop on forward, masquerade-all, and the CVE-2020-8558 protection of localhost NodePorts."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

import pytest

from cnipy.proxy.plan import build_plans
from cnipy.proxy.sync import Proxier
from tests.conftest import need
from tests.netns.proxy.conftest import make_proxier
from tests.netns.proxy.topology import HERE, PY, Topology
from tests.support.netns import Netns
from tests.unit.proxy.builders import config, endpoints, service, state


def _sync(mode: str, topo: Topology, *services: Any, **cfg: Any) -> Proxier:
    c = config(**cfg)
    p = make_proxier(mode, topo.node, c)
    p.sync(build_plans(state(*services), c), None)
    return p


def _link(ns: Netns, address: str) -> tuple[str, str]:
    """(name, MAC) of the link that holds ``address`` in ``ns``."""
    for link in json.loads(ns.run("ip", "-j", "addr", "show").stdout):
        if any(a.get("local") == address for a in link.get("addr_info", ())):
            return link["ifname"], link["address"]
    raise AssertionError(f"no link with {address}")


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy"])
def test_forward_policy_drop_lets_service_traffic_through(variant: str,
                                                          topo_factory: Callable[..., Topology]) -> None:
    """A docker-like host (FORWARD policy DROP): KUBE-FORWARD accepts marked service traffic and its replies."""
    need("iptables-legacy" if variant == "iptables-legacy" else "iptables")
    ipt = "iptables-legacy" if variant == "iptables-legacy" else "iptables"
    topo = topo_factory(2)
    topo.node.run(ipt, "-P", "FORWARD", "DROP")
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    p = _sync(variant, topo, (s, endpoints(s, *topo.endpoint_ips)))
    r = topo.probe("tcp", "10.96.0.10", "80", "20")  # client outside the cluster CIDR: marked
    assert r["fail"] == 0 and len(r["ok"]) == 2, r  # type: ignore[arg-type]
    r = topo.probe("tcp", "192.168.100.1", "30080", "20")
    assert r["fail"] == 0, r
    # The control: without the jump into KUBE-FORWARD the policy drops the same connections.
    jump = ("-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD")
    topo.node.run(ipt, "-D", "FORWARD", *jump)
    r = topo.probe("tcp", "192.168.100.1", "30080", "2", "0.5")
    assert r["errors"] == {"TimeoutError": 2}, r
    p.sync(build_plans(state((s, endpoints(s, *topo.endpoint_ips))), config()), None)  # full: the jump is back
    assert topo.probe("tcp", "10.96.0.10", "80", "5")["fail"] == 0


def test_nftables_mode_cannot_override_a_forward_drop(topo_factory: Callable[..., Topology]) -> None:
    """As kube-proxy's nftables mode documents: an accept in our table does not get a packet past a drop in
    another table, so a FORWARD policy DROP (iptables-nft) stops service traffic until the host allows it."""
    need("nft")
    need("iptables")
    topo = topo_factory(1)
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    _sync("nftables", topo, (s, endpoints(s, *topo.endpoint_ips)))
    assert topo.probe("tcp", "192.168.100.1", "30080", "3")["fail"] == 0
    topo.node.run("iptables", "-P", "FORWARD", "DROP")
    assert topo.probe("tcp", "192.168.100.1", "30080", "2", "0.5")["errors"] == {"TimeoutError": 2}
    topo.node.run("iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "DNAT,RELATED,ESTABLISHED",
                  "-j", "ACCEPT")  # what the admin has to add
    assert topo.probe("tcp", "192.168.100.1", "30080", "3")["fail"] == 0


def test_health_check_node_port_with_input_policy_drop(topo_factory: Callable[..., Topology]) -> None:
    need("iptables")
    topo = topo_factory(1)
    servers = []
    for port in ("30999", "30998"):  # the service's healthCheckNodePort, and a port nobody opened
        proc = topo.node.popen(PY, str(HERE / "echo_server.py"), f"hc{port}", port, stdout=subprocess.PIPE)
        topo.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        servers.append(proc)
    topo.node.run("iptables", "-P", "INPUT", "DROP")
    s = service("lb", "10.96.0.12", type="LoadBalancer", node_port=30081, etp="Local", hc_port=30999)
    _sync("iptables", topo, (s, endpoints(s, *topo.endpoint_ips)))
    r = topo.probe("tcp", "192.168.100.1", "30999", "5")
    assert r["ok"] == {"hc30999": 5}, r
    r = topo.probe("tcp", "192.168.100.1", "30998", "2", "0.5")  # the policy is in force
    assert r["errors"] == {"TimeoutError": 2}, r
    r = topo.probe("tcp", "192.168.100.1", "30081", "5")  # the NodePort itself is forwarded, not input
    assert r["fail"] == 0, r


@pytest.mark.parametrize("masquerade_all", [False, True])
def test_masquerade_all(mode: str, masquerade_all: bool, topo_factory: Callable[..., Topology]) -> None:
    """A client inside the cluster CIDR keeps its address unless masquerade-all is on."""
    topo = topo_factory(1)
    s = service("web", "10.96.0.10")
    _sync(mode, topo, (s, endpoints(s, *topo.endpoint_ips)), masquerade_all=masquerade_all,
          cluster_cidrs=(IPv4Network("10.244.0.0/16"), IPv4Network("192.168.100.0/24")))
    r = topo.probe("tcp", "10.96.0.10", "80", "5")
    assert r["fail"] == 0 and r["peers"] == {"10.244.1.1" if masquerade_all else "192.168.100.2": 5}, r


def test_outside_the_cluster_cidr_is_masqueraded(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    s = service("web", "10.96.0.10")
    _sync(mode, topo, (s, endpoints(s, *topo.endpoint_ips)))  # cluster CIDR 10.244.0.0/16, client 192.168.100.2
    r = topo.probe("tcp", "10.96.0.10", "80", "5")
    assert r["fail"] == 0 and r["peers"] == {"10.244.1.1": 5}, r


def _martians_received(topo: Topology, count: int) -> int:
    """Send ``count`` UDP datagrams from the client, straight onto the wire, to 127.0.0.1:9 of the node; how many
    did a socket bound to the node's 127.0.0.1:9 get?"""
    iface, _ = _link(topo.client, "192.168.100.2")
    _, node_mac = _link(topo.node, "192.168.100.1")
    sink = topo.node.popen(PY, str(HERE / "rawpkt.py"), "sink", "127.0.0.1", "9", "1.5", stdout=subprocess.PIPE)
    topo.servers.append(sink)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    topo.client.run(PY, str(HERE / "rawpkt.py"), "udp", iface, node_mac, "192.168.100.2", "127.0.0.1", "9",
                    str(count))
    out, _ = sink.communicate(timeout=30)
    received: int = json.loads(out)["received"]
    return received


def test_localhost_node_ports_refuse_loopback_packets_from_elsewhere(
        mode: str, topo_factory: Callable[..., Topology]) -> None:
    """CVE-2020-8558: route_localnet lets 127/8 packets from another host in; our rule drops what we did not
    DNAT, so a service listening on the node's loopback stays unreachable from outside."""
    topo = topo_factory(1)
    topo.node.run("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")  # what the daemon does for the flag
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    _sync(mode, topo, (s, endpoints(s, *topo.endpoint_ips)), localhost_nodeports=True)
    assert _martians_received(topo, 5) == 0
    # The control: the same packets without the protection rule reach the loopback listener.
    if mode == "nftables":
        topo.node.run("nft", "flush", "chain", "ip", "cnipy", "filter-input")
    else:
        topo.node.run("iptables", "-F", "KUBE-FIREWALL")
    assert _martians_received(topo, 5) == 5
    assert topo.probe("tcp", "127.0.0.1", "30080", "3", ns=topo.node)["fail"] == 0  # local use still works


def _invalid_segments_through(topo: Topology, count: int) -> int:
    """Send ``count`` SYN+FIN segments (conntrack: INVALID) from the client, routed by the node, to an endpoint;
    how many arrive there (a counter in the endpoint's own test table)?"""
    ep = topo.endpoints[0]
    ep.run("nft", "-f", "-", input="table ip cnipytest\nflush table ip cnipytest\ntable ip cnipytest {\n"
           "chain count { type filter hook prerouting priority -300; policy accept; }\n}\n"
           "add rule ip cnipytest count tcp dport 7777 counter\n")
    iface, _ = _link(topo.client, "192.168.100.2")
    _, node_mac = _link(topo.node, "192.168.100.1")
    topo.client.run(PY, str(HERE / "rawpkt.py"), "tcp", iface, node_mac, "192.168.100.2", topo.endpoint_ips[0],
                    "7777", str(count), "3")
    for _ in range(20):  # bounded: the frames are on their way through two veths and a bridge
        listing = ep.run("nft", "list", "chain", "ip", "cnipytest", "count").stdout
        arrived = int(listing.split("packets ")[1].split()[0])
        if arrived >= count:
            break
        time.sleep(0.05)
    return arrived


def test_forward_drops_conntrack_invalid(mode: str, topo_factory: Callable[..., Topology]) -> None:
    need("nft")
    topo = topo_factory(1)
    s = service("web", "10.96.0.10")
    _sync(mode, topo, (s, endpoints(s, *topo.endpoint_ips)))
    assert _invalid_segments_through(topo, 5) == 0
    assert topo.probe("tcp", "10.96.0.10", "80", "3")["fail"] == 0  # valid traffic is forwarded
    # The control: without the drop the same segments reach the endpoint.
    if mode == "nftables":
        topo.node.run("nft", "flush", "chain", "ip", "cnipy", "filter-forward")
    else:
        topo.node.run("iptables", "-D", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    assert _invalid_segments_through(topo, 5) == 5

"""--detect-local-mode BridgeInterface and InterfaceNamePrefix with real traffic, both back ends, both families.

The endpoints hang off a bridge in the node namespace (topology.py). Told by that bridge (or a prefix of its
name), a pod's connection to a ClusterIP keeps its source address while the external client's is masqueraded,
and under externalTrafficPolicy Local a pod still reaches an endpoint the node does not host while the external
client is dropped. The control: with another interface name the same pod is masqueraded, so it is the interface
that decides, not the pod's address (which is inside the configured cluster CIDR all along).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

import pytest

from cnipy.proxy.plan import AnyNodeConfig, NodeConfig, build_plans
from tests.netns.proxy.conftest import make_proxier
from tests.netns.proxy.topology import Topology
from tests.support.netns import Netns
from tests.unit.proxy.builders import endpoints, service, state

ADDRS = {  # ClusterIP, external IP, the bridge's address (what masquerade makes of a source), the client's
    4: ("10.96.0.10", "10.96.0.11", "192.0.2.10", "10.244.1.1", "192.168.100.2"),
    6: ("fd00:96::10", "fd00:96::11", "2001:db8::10", "fd00:244:1::1", "fd00:100::2"),
}


def _bridge(node: Netns) -> str:
    for link in json.loads(node.run("ip", "-j", "link", "show", "type", "bridge").stdout):
        return str(link["ifname"])
    raise AssertionError("the topology has no bridge")


def _config(family: int, detect: str, interface: str) -> AnyNodeConfig:
    cluster = IPv4Network("10.244.0.0/16") if family == 4 else IPv6Network("fd00:244::/48")
    return NodeConfig("node1", cluster_cidrs=(cluster,), ip_family=family,  # type: ignore[arg-type]
                      detect_local=detect, pod_interface=interface)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("detect", ["BridgeInterface", "InterfaceNamePrefix"])
def test_pod_traffic_is_told_by_its_interface(mode: str, detect: str, family: int,
                                              topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2)
    bridge = _bridge(topo.node)  # "cpx" + 8 hex digits; every link of the topology starts with "cpx"
    interface = bridge if detect == "BridgeInterface" else bridge[:-2]  # a prefix only the bridge has
    cluster_ip, etp_ip, external_ip, masqueraded, client = ADDRS[family]
    pod, other = topo.endpoint_ips if family == 4 else topo.endpoint_ips6
    pod_ns = topo.endpoints[0]  # the client pod; endpoint 1 serves (a pod reaching itself would be hairpin)
    web = service("web", cluster_ip)
    etp = service("etp", etp_ip, external_ips=(external_ip,), etp="Local")
    st = state((web, endpoints(web, other)), (etp, endpoints(etp, other, node="node2")))  # none local for etp
    cfg = _config(family, detect, interface)
    make_proxier(mode, topo.node, cfg).sync(build_plans(st, cfg), None)

    # 5 s per connection: the first may need a SYN retransmission (1 s) while IPv6 neighbour discovery completes
    r = topo.probe("tcp", cluster_ip, "80", "3", "5", ns=pod_ns)
    assert r["fail"] == 0 and r["peers"] == {pod: 3}, r  # local: not masqueraded
    r = topo.probe("tcp", cluster_ip, "80", "3", "5")
    assert r["fail"] == 0 and r["peers"] == {masqueraded: 3}, (client, r)  # from outside the cluster: masqueraded
    # externalTrafficPolicy Local, no endpoint on this node: pods still reach every endpoint, others are dropped
    r = topo.probe("tcp", external_ip, "80", "3", "5", ns=pod_ns)
    assert r["fail"] == 0 and r["peers"] == {pod: 3}, r
    r = topo.probe("tcp", external_ip, "80", "2", "0.5")
    assert r["errors"] == {"TimeoutError": 2}, r

    # The control: told by an interface the pods do not use, the same pod is masqueraded and dropped.
    control = replace(cfg, pod_interface="cpxnomatch")
    make_proxier(mode, topo.node, control).sync(build_plans(st, control), None)  # a full sync: rules replaced
    r = topo.probe("tcp", cluster_ip, "80", "3", "5", ns=pod_ns)
    assert r["fail"] == 0 and r["peers"] == {masqueraded: 3}, r
    r = topo.probe("tcp", external_ip, "80", "2", "0.5", ns=pod_ns)
    assert r["errors"] == {"TimeoutError": 2}, r

"""cnipy-bridge VLAN options with real traffic, in the 6.1 VM (this host's kernel lacks bridge VLAN filtering).

vlan: pods on VLAN 100 reach each other, a pod on VLAN 200 does not; with isGateway the gateway lives on the
`<bridge>.<vlan>` interface. vlanTrunk / preserveDefaultVlan: the port VLANs are those the reference sets.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.netns.plugins.conftest import Lab, Server, cni, lab, lab_factory, ok, peer_seen, pod_ip, serve
from tests.vm.test_guest_kernel import modprobe

__all__ = ["lab", "lab_factory", "serve"]  # fixtures used here


def _port_vlans(lab: Lab, port: str) -> list[tuple[int, bool, bool]]:
    data = json.loads(lab.node.run("bridge", "-j", "vlan", "show", "dev", port).stdout)
    vlans = data[0]["vlans"] if data else []
    return sorted((v["vlan"], "PVID" in v.get("flags", []), "Egress Untagged" in v.get("flags", []))
                  for v in vlans)


def test_vlan_traffic_and_gateway(lab: Lab, serve: Callable[..., Server]) -> None:
    modprobe("bridge", "veth")
    conf100 = lab.conf(bridge="cnbbr0", vlan=100, isGateway=True)
    conf200 = lab.conf(bridge="cnbbr0", vlan=200, subnet="10.89.0.0/24")
    pod1, pod2, pod3 = lab.pod(), lab.pod(), lab.pod()
    r1 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf100, netns=f"/run/netns/{pod1.name}", cid="p1"))
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf100, netns=f"/run/netns/{pod2.name}", cid="p2"))
    ok(cni(lab.node, "cnipy-bridge", "ADD", conf200, netns=f"/run/netns/{pod3.name}", cid="p3"))
    pod3.run("ip", "addr", "add", "10.88.0.250/24", "dev", "eth0")  # same subnet, other VLAN
    assert _port_vlans(lab, r1["interfaces"][1]["name"]) == [(100, True, True)]
    assert any(i["name"] == "cnbbr0.100" for i in r1["interfaces"])
    server = serve(pod2, pod_ip(r2), 8080)
    assert peer_seen(pod1, server) == pod_ip(r1)
    assert peer_seen(pod3, server, timeout=1.5) is None
    assert peer_seen(pod1, serve(lab.node, "10.88.0.1", 8081)) == pod_ip(r1)  # gateway on cnbbr0.100


def test_vlan_trunk_and_default_vlan(lab: Lab) -> None:
    modprobe("bridge", "veth")
    trunk = [{"minID": 10, "maxID": 12}, {"id": 20}]
    pod1, pod2 = lab.pod(), lab.pod()
    r1 = ok(cni(lab.node, "cnipy-bridge", "ADD", lab.conf(bridge="cnbbr0", vlanTrunk=trunk),
               netns=f"/run/netns/{pod1.name}", cid="p1"))
    assert _port_vlans(lab, r1["interfaces"][1]["name"]) == [
        (1, True, True), (10, False, False), (11, False, False), (12, False, False), (20, False, False)]
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD",
                lab.conf(bridge="cnbbr0", vlan=30, preserveDefaultVlan=True),
                netns=f"/run/netns/{pod2.name}", cid="p2"))
    assert _port_vlans(lab, r2["interfaces"][1]["name"]) == [(1, False, True), (30, True, True)]

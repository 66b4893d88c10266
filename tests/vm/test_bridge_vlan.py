"""cnipy-bridge VLAN options with real traffic, in the 6.1 VM (this host's kernel lacks bridge VLAN filtering).

vlan: pods on VLAN 100 reach each other, a pod on VLAN 200 does not; with isGateway the gateway lives on the
`<bridge>.<vlan>` interface. vlanTrunk / preserveDefaultVlan: the port VLANs are those the reference sets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from tests.netns.plugins.conftest import CNI_PATH, ROOT, Lab, Server, lab, lab_factory, peer_seen, pod_ip, serve
from tests.vm.test_guest_kernel import modprobe

__all__ = ["lab", "lab_factory", "serve"]  # fixtures used here

# Under TCG every interpreter start plus pyroute2's import costs many seconds: run all ADDs of a test in one
# interpreter inside the node namespace, through the same protocol entry point the executables use.
BATCH = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from cnipy.cni.skel import execute
from cnipy.plugins.registry import load
out = []
for env, conf in json.load(sys.stdin):
    o = execute(load("cnipy-bridge"), env, json.dumps(conf).encode())
    out.append([o.exit_code, json.loads(o.stdout)])
print(json.dumps(out))
"""


def add_all(lab: Lab, calls: list[tuple[dict[str, Any], str, str]]) -> list[dict[str, Any]]:
    """ADD (conf, pod namespace name, container id) for each call; the results."""
    batch = [({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": f"/run/netns/{ns}",
               "CNI_PATH": CNI_PATH, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, conf) for conf, ns, cid in calls]
    proc = lab.node.run(sys.executable, "-c", BATCH, str(ROOT), input=json.dumps(batch), timeout=900)
    outcomes = json.loads(proc.stdout)
    assert all(code == 0 for code, _ in outcomes), outcomes
    return [result for _, result in outcomes]


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
    r1, r2, _ = add_all(lab, [(conf100, pod1.name, "p1"), (conf100, pod2.name, "p2"), (conf200, pod3.name, "p3")])
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
    r1, r2 = add_all(lab, [(lab.conf(bridge="cnbbr0", vlanTrunk=trunk), pod1.name, "p1"),
                           (lab.conf(bridge="cnbbr0", vlan=30, preserveDefaultVlan=True), pod2.name, "p2")])
    assert _port_vlans(lab, r1["interfaces"][1]["name"]) == [
        (1, True, True), (10, False, False), (11, False, False), (12, False, False), (20, False, False)]
    assert _port_vlans(lab, r2["interfaces"][1]["name"]) == [(1, False, True), (30, True, True)]

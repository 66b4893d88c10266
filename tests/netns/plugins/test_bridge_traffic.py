"""cnipy-bridge data path, proven with traffic: gateway + default route, masquerade (nftables and iptables),
MTU, hairpin, port isolation, and the MAC spoof check."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from tests.netns.plugins.conftest import Lab, Server, cni, link_pair, ok, peer_seen, pod_ip
from tests.support import netns as N

OUTSIDE_NODE, OUTSIDE_SERVER = "192.0.2.1/24", "192.0.2.2/24"


def _outside(lab: Lab) -> N.Netns:
    """A namespace beyond the node, reached through the node's default route."""
    outside = lab.pod()
    link_pair(lab.node, outside, OUTSIDE_NODE, OUTSIDE_SERVER)
    outside.run("ip", "route", "add", "10.0.0.0/8", "via", "192.0.2.1")  # so un-masqueraded replies could return
    return outside


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_gateway_masquerade_and_subnet_traffic(lab: Lab, serve: Callable[..., Server], backend: str) -> None:
    conf = lab.conf(bridge="cnbbr0", isDefaultGateway=True, ipMasq=True, ipMasqBackend=backend)
    pod1, pod2 = lab.pod(), lab.pod()
    r1 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod1.name}", cid="p1"))
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod2.name}", cid="p2"))
    outside = _outside(lab)
    # Leaving the node: masqueraded to the node's outside address.
    far = serve(outside, "192.0.2.2", 8080)
    assert peer_seen(pod1, far) == "192.0.2.1"
    # Inside the subnet: the real pod address.
    near = serve(pod2, pod_ip(r2), 8081)
    assert peer_seen(pod1, near) == pod_ip(r1)
    # The gateway on the bridge answers (default route via it).
    gw = serve(lab.node, "10.88.0.1", 8082)
    assert peer_seen(pod1, gw) == pod_ip(r1)
    # After DEL of pod1 the masquerade for it is gone; pod2's stays.
    ok(cni(lab.node, "cnipy-bridge", "DEL", conf, netns=f"/run/netns/{pod1.name}", cid="p1"))
    assert peer_seen(pod2, far) == "192.0.2.1"
    ok(cni(lab.node, "cnipy-bridge", "DEL", conf, netns=f"/run/netns/{pod2.name}", cid="p2"))
    left = lab.leftovers()
    assert left["chains"] == [] and left["nft_rules"] == [] and left["ipam_files"] == []


def test_without_masquerade_the_pod_address_leaves_the_node(lab: Lab, serve: Callable[..., Server]) -> None:
    conf = lab.conf(bridge="cnbbr0", isDefaultGateway=True)
    pod = lab.pod()
    r = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod.name}"))
    far = serve(_outside(lab), "192.0.2.2", 8080)
    assert peer_seen(pod, far) == pod_ip(r)


def _udp_send(ns: N.Netns, dst: str, size: int) -> bool:
    """Send one UDP datagram with DF set; False when it is larger than the path MTU allows."""
    code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.IPPROTO_IP,10,2)\n"  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
            "try:\n s.sendto(b'x'*int(sys.argv[2]),(sys.argv[1],9))\nexcept OSError:\n sys.exit(1)\n")
    return ns.run("python3", "-c", code, dst, str(size), check=False).returncode == 0


def test_mtu(lab: Lab, serve: Callable[..., Server]) -> None:
    conf = lab.conf(bridge="cnbbr0", isGateway=True, mtu=1400)
    pod1, pod2 = lab.pod(), lab.pod()
    ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod1.name}", cid="p1"))
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod2.name}", cid="p2"))
    assert "mtu 1400" in pod1.run("ip", "link", "show", "eth0").stdout
    assert "mtu 1400" in lab.node.run("ip", "link", "show", "cnbbr0").stdout
    assert _udp_send(pod1, pod_ip(r2), 1400 - 28)
    assert not _udp_send(pod1, pod_ip(r2), 1400 - 27)
    assert peer_seen(pod1, serve(pod2, pod_ip(r2), 8080)) is not None


def test_port_isolation(lab: Lab, serve: Callable[..., Server]) -> None:
    conf = lab.conf(bridge="cnbbr0", isGateway=True, portIsolation=True)
    pod1, pod2 = lab.pod(), lab.pod()
    r1 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod1.name}", cid="p1"))
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod2.name}", cid="p2"))
    assert peer_seen(pod1, serve(pod2, pod_ip(r2), 8080), timeout=1.5) is None  # isolated ports: no traffic
    assert peer_seen(pod1, serve(lab.node, "10.88.0.1", 8081)) == pod_ip(r1)  # the bridge itself: yes
    assert "isolated on" in lab.node.run("bridge", "-d", "link", "show").stdout


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpin(lab: Lab, serve: Callable[..., Server], hairpin: bool) -> None:
    """A VEPA macvlan on the pod's eth0 sends frames for the pod out of the bridge port they must come back in
    through: only a hairpin port reflects them."""
    conf = lab.conf(bridge="cnbbr0", hairpinMode=hairpin)
    pod, side = lab.pod(), lab.pod()
    r = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod.name}"))
    pod.run("ip", "link", "add", "mv0", "link", "eth0", "type", "macvlan", "mode", "vepa")
    pod.run("ip", "link", "set", "mv0", "netns", side.name)
    side.run("ip", "addr", "add", "10.88.0.200/24", "dev", "mv0")
    side.run("ip", "link", "set", "mv0", "up")
    server = serve(pod, pod_ip(r), 8080)
    seen = peer_seen(side, server, timeout=1.5)
    assert (seen == "10.88.0.200") if hairpin else (seen is None)


def test_macspoofchk(lab: Lab, serve: Callable[..., Server]) -> None:
    conf = lab.conf(bridge="cnbbr0", isGateway=True, macspoofchk=True)
    pod1, pod2 = lab.pod(), lab.pod()
    r1 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod1.name}", cid="p1"))
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod2.name}", cid="p2"))
    server = serve(pod2, pod_ip(r2), 8080)
    assert peer_seen(pod1, server) == pod_ip(r1)
    pod1.run("ip", "link", "set", "eth0", "address", "02:00:00:de:ad:01")
    pod1.run("ip", "neigh", "flush", "all")
    assert peer_seen(pod1, server, timeout=1.5) is None  # frames from a foreign MAC are dropped
    ok(cni(lab.node, "cnipy-bridge", "DEL", conf, netns=f"/run/netns/{pod1.name}", cid="p1"))
    ok(cni(lab.node, "cnipy-bridge", "DEL", conf, netns=f"/run/netns/{pod2.name}", cid="p2"))
    assert lab.leftovers()["nft_rules"] == []


def test_vlan_needs_kernel_vlan_filtering(lab: Lab, serve: Callable[..., Server]) -> None:
    """With kernel VLAN filtering: two pods on VLAN 100 talk, a pod on VLAN 200 cannot reach them. Without it
    (this kernel): a clear KernelError, and nothing left behind."""
    probe = subprocess.run(["ip", "netns", "exec", lab.node.name, "ip", "link", "add", "cnbvf", "type", "bridge",
                            "vlan_filtering", "1"], capture_output=True, check=False)
    pod1, pod2, pod3 = lab.pod(), lab.pod(), lab.pod()
    conf100 = lab.conf(bridge="cnbbr0", vlan=100)
    conf200 = lab.conf(bridge="cnbbr0", vlan=200)
    if probe.returncode != 0:
        call = cni(lab.node, "cnipy-bridge", "ADD", conf100, netns=f"/run/netns/{pod1.name}")
        assert call.code == 104 and "VLAN filtering is not supported" in str(call.out)
        assert lab.leftovers()["veths"] == [] and lab.leftovers()["ipam_files"] == []
        pytest.skip("kernel without bridge VLAN filtering: the error path was checked, not VLAN traffic")
    r1 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf100, netns=f"/run/netns/{pod1.name}", cid="p1"))
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf100, netns=f"/run/netns/{pod2.name}", cid="p2"))
    ok(cni(lab.node, "cnipy-bridge", "ADD", conf200, netns=f"/run/netns/{pod3.name}", cid="p3"))
    server = serve(pod2, pod_ip(r2), 8080)
    assert peer_seen(pod1, server) == pod_ip(r1)
    assert peer_seen(pod3, server, timeout=1.5) is None


def test_ipv6_masquerade(lab: Lab, serve: Callable[..., Server]) -> None:
    conf = lab.conf(bridge="cnbbr0", subnet="10.88.0.0/24,fd00:88::/64", isDefaultGateway=True, ipMasq=True)
    pod1, pod2 = lab.pod(), lab.pod()
    r1 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod1.name}", cid="p1"))
    r2 = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod2.name}", cid="p2"))
    outside = lab.pod()
    name = link_pair(lab.node, outside, OUTSIDE_NODE, OUTSIDE_SERVER)
    lab.node.run("ip", "addr", "add", "fd00:ff::1/64", "dev", name, "nodad")
    outside.run("ip", "addr", "add", "fd00:ff::2/64", "dev", "up0", "nodad")
    far = serve(outside, "fd00:ff::2", 8080)
    deadline = time.monotonic() + 10  # the gateway address on the bridge finishes DAD first
    seen = None
    while seen is None and time.monotonic() < deadline:
        seen = peer_seen(pod1, far, timeout=1)
    assert seen == "fd00:ff::1"
    near = serve(pod2, pod_ip(r2, 6), 8081)
    assert peer_seen(pod1, near) == pod_ip(r1, 6)
    for pod, cid in ((pod1, "p1"), (pod2, "p2")):
        ok(cni(lab.node, "cnipy-bridge", "DEL", conf, netns=f"/run/netns/{pod.name}", cid=cid))
    assert lab.leftovers()["chains"] == []

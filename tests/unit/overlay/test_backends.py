from __future__ import annotations

import ipaddress

from cnipy.netlink.vxlan import Underlay
from cnipy.overlay.backends import HostGwBackend, VxlanBackend, vtep_mac
from cnipy.overlay.config import BackendConfig
from cnipy.overlay.kernel import FakeKernel
from cnipy.overlay.leases import Lease
from cnipy.overlay.reconcile import reconcile

UNDERLAY = Underlay("eth0", ipaddress.IPv4Interface("172.30.1.11/24"), 1500)


def lease(i: int, ip: str = "") -> Lease:
    return Lease(ipaddress.IPv4Network(f"10.244.{i}.0/24"), f"n{i}", ipaddress.ip_address(ip or f"172.30.1.{10 + i}"),
                 "vxlan", vtep_mac(f"n{i}"))


def test_vtep_mac_is_stable_local_unicast() -> None:
    mac = vtep_mac("node-a")
    assert mac == vtep_mac("node-a") != vtep_mac("node-b")
    assert int(mac[:2], 16) & 0b11 == 0b10


def test_vxlan_mtu() -> None:
    assert VxlanBackend(BackendConfig(), UNDERLAY, "n1").mtu == 1450
    v6 = Underlay("eth0", ipaddress.IPv6Interface("2001:db8::1/64"), 1500)
    assert VxlanBackend(BackendConfig(), v6, "n1").mtu == 1430
    assert VxlanBackend(BackendConfig(mtu=1400), UNDERLAY, "n1").mtu == 1400


def test_vxlan_programs_neighbour_fdb_route_in_order_and_converges() -> None:
    backend = VxlanBackend(BackendConfig(), UNDERLAY, "n1")
    kernel = FakeKernel(devices={"cnipy.1", "eth0"})
    want = backend.desired(lease(1), [lease(1), lease(2)])
    applied = reconcile(kernel, "cnipy.1", want)
    assert applied.added == 3
    assert kernel.log == [f"neigh 10.244.2.0 {vtep_mac('n2')}", f"fdb {vtep_mac('n2')} 172.30.1.12",
                          "route 10.244.2.0/24 via 10.244.2.0 dev cnipy.1"]
    assert all(r.onlink for r in kernel.routes())
    assert not reconcile(kernel, "cnipy.1", want).changed  # idempotent


def test_a_peer_leaving_removes_route_fdb_neighbour() -> None:
    backend = VxlanBackend(BackendConfig(), UNDERLAY, "n1")
    kernel = FakeKernel(devices={"cnipy.1", "eth0"})
    reconcile(kernel, "cnipy.1", backend.desired(lease(1), [lease(2), lease(3)]))
    kernel.log.clear()
    applied = reconcile(kernel, "cnipy.1", backend.desired(lease(1), [lease(2)]))
    assert applied.removed == 3
    assert kernel.log == ["del route 10.244.3.0/24", f"del fdb {vtep_mac('n3')} 172.30.1.13",
                          "del neigh 10.244.3.0"]


def test_a_peer_moving_its_underlay_address_is_reprogrammed() -> None:
    backend = VxlanBackend(BackendConfig(), UNDERLAY, "n1")
    kernel = FakeKernel(devices={"cnipy.1", "eth0"})
    reconcile(kernel, "cnipy.1", backend.desired(lease(1), [lease(2)]))
    reconcile(kernel, "cnipy.1", backend.desired(lease(1), [lease(2, "172.30.1.99")]))
    assert [str(e.dst) for e in kernel.fdb("cnipy.1")] == ["172.30.1.99"]


def test_a_deleted_device_is_recreated_state_follows() -> None:
    backend = VxlanBackend(BackendConfig(), UNDERLAY, "n1")
    kernel = FakeKernel(devices={"cnipy.1", "eth0"})
    want = backend.desired(lease(1), [lease(2)])
    reconcile(kernel, "cnipy.1", want)
    kernel.remove_device("cnipy.1")
    kernel.devices.add("cnipy.1")  # what ensure_device does
    assert reconcile(kernel, "cnipy.1", want).added == 3


def test_direct_routing_same_subnet_direct_other_via_vxlan() -> None:
    backend = VxlanBackend(BackendConfig(direct_routing=True), UNDERLAY, "n1")
    want = backend.desired(lease(1), [lease(2), lease(3, "172.30.2.13")])
    by_dst = {str(r.dst): r for r in want.routes}
    assert by_dst["10.244.2.0/24"].dev == "eth0" and str(by_dst["10.244.2.0/24"].gateway) == "172.30.1.12"
    assert by_dst["10.244.3.0/24"].dev == "cnipy.1" and by_dst["10.244.3.0/24"].onlink
    assert [str(f.dst) for f in want.fdb] == ["172.30.2.13"]


def test_host_gw_routes_via_underlay_and_refuses_other_segments() -> None:
    backend = HostGwBackend(BackendConfig(type="host-gw"), UNDERLAY, "n1")
    want = backend.desired(lease(1), [lease(2), lease(3, "172.30.2.13")])
    assert [(str(r.dst), str(r.gateway), r.dev) for r in want.routes] == [("10.244.2.0/24", "172.30.1.12", "eth0")]
    assert len(want.rejected) == 1 and "not on this node's L2 subnet 172.30.1.0/24" in want.rejected[0]
    assert backend.mtu == 1500


def test_checksum_offload_policy() -> None:
    from cnipy.overlay.backends import checksum_offload_broken, kernel_version

    assert kernel_version("6.18.0-1-amd64") == (6, 18) and kernel_version("5.4.0") == (5, 4)
    assert checksum_offload_broken("auto", "5.4.0-150-generic")
    assert not checksum_offload_broken("auto", "5.7.0") and not checksum_offload_broken("auto", "6.1.0-28-amd64")
    assert checksum_offload_broken("off", "6.18.0") and not checksum_offload_broken("on", "4.19.0")


def test_ipv6_underlay_peers() -> None:
    v6 = Underlay("eth0", ipaddress.IPv6Interface("2001:db8::11/64"), 1500)
    peer = lease(2, "2001:db8::12")
    want = VxlanBackend(BackendConfig(direct_routing=True), v6, "n1").desired(lease(1, "2001:db8::11"), [peer])
    assert [r.dev for r in want.routes] == ["cnipy.1"] and [str(f.dst) for f in want.fdb] == ["2001:db8::12"]
    hg = HostGwBackend(BackendConfig(type="host-gw"), v6, "n1").desired(lease(1, "2001:db8::11"), [peer])
    assert not hg.routes and "IPv6 underlay" in hg.rejected[0]

"""The netlink verbs the bridge and veth plugins use, against real namespaces."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from cnipy import netlink
from tests.support import netns as N


@pytest.fixture
def pair() -> object:
    with N.namespaces(2, prefix="cnb") as (node, pod):
        yield node, pod


def test_veth_bridge_addresses_routes_sysctls(pair: tuple[N.Netns, N.Netns]) -> None:
    node, pod = pair
    br = netlink.ensure_bridge(node.name, "cnbbr0", mtu=1400)
    assert br.kind == "bridge"
    veth = netlink.create_veth(node.name, pod.name, "eth0", mtu=1400, peer_mac="02:00:00:00:00:2a")
    assert veth.host.startswith("veth") and len(veth.host) == 12
    assert veth.peer_mac == "02:00:00:00:00:2a"
    with pytest.raises(netlink.AlreadyExists):
        netlink.create_veth(node.name, pod.name, "eth0")
    netlink.set_master(node.name, veth.host, "cnbbr0")
    netlink.set_port_options(node.name, veth.host, hairpin=True, isolated=True)
    assert netlink.port_options(node.name, veth.host) == netlink.PortOptions(hairpin=True, isolated=True)
    host = netlink.get_link(node.name, veth.host)
    cont = netlink.get_link(pod.name, "eth0")
    assert host.master == br.index and host.peer_index == cont.index and cont.peer_index == host.index
    assert (host.mtu, cont.mtu, cont.kind) == (1400, 1400, "veth")

    addr = ipaddress.ip_interface("10.99.0.2/24")
    netlink.set_link_up(pod.name, "eth0")
    netlink.add_address(pod.name, "eth0", addr)
    netlink.add_address(pod.name, "eth0", addr, exist_ok=True)
    with pytest.raises(netlink.AlreadyExists):
        netlink.add_address(pod.name, "eth0", addr)
    assert addr in netlink.list_addresses(pod.name, "eth0", 4)
    gw = ipaddress.ip_address("10.99.0.1")
    spec = netlink.RouteSpec(ipaddress.ip_network("0.0.0.0/0"), gw=gw, dev="eth0", metric=5, mtu=1300,
                             advmss=1200)
    netlink.add_route(pod.name, spec)
    routes = netlink.list_routes(pod.name, 4)
    found = [r for r in routes if r.dst == spec.dst]
    assert found and found[0].gw == gw and found[0].metric == 5 and found[0].mtu == 1300 \
        and found[0].advmss == 1200
    onlink = netlink.RouteSpec(ipaddress.ip_network("192.0.2.0/24"), gw=ipaddress.ip_address("198.51.100.1"),
                               dev="eth0", onlink=True, table=100)
    netlink.add_route(pod.name, onlink)
    assert any(r.onlink and r.table == 100 for r in netlink.list_routes(pod.name, 4, table=100))
    netlink.del_route(pod.name, onlink)
    with pytest.raises(netlink.NotFound):
        netlink.del_route(pod.name, onlink)
    netlink.del_address(pod.name, "eth0", addr)
    assert addr not in netlink.list_addresses(pod.name, "eth0")

    netlink.write_sysctl(pod.name, "net/ipv4/conf/eth0/arp_notify", "1")
    assert netlink.read_sysctl(pod.name, "net/ipv4/conf/eth0/arp_notify") == "1"
    assert netlink.read_sysctl(node.name, "net/ipv4/conf/lo/arp_notify") == "0"
    for bad in ("kernel/panic", "net/../../etc", "net/ipv4/conf/a b/x", "net//x"):
        with pytest.raises(netlink.InvalidName):
            netlink.write_sysctl(pod.name, bad, "1")
    netlink.set_promisc(node.name, "cnbbr0", True)
    assert netlink.get_link(node.name, "cnbbr0").promisc
    netlink.delete_link(node.name, veth.host)
    assert not netlink.link_exists(pod.name, "eth0")
    with pytest.raises(netlink.InterfaceNotFound):
        netlink.delete_link(node.name, veth.host)
    with pytest.raises(netlink.NamespaceNotFound):
        netlink.get_link("cnbdoesnotexist", "lo")


def test_ensure_bridge_is_race_free(pair: tuple[N.Netns, N.Netns]) -> None:
    node, _ = pair
    errors: list[BaseException] = []

    def make() -> None:
        try:
            netlink.ensure_bridge(node.name, "cnbrace")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    node.run("ip", "link", "add", "cnbdummy", "type", "veth", "peer", "name", "cnbdummy2")
    with pytest.raises(netlink.WrongKind):
        netlink.ensure_bridge(node.name, "cnbdummy")


def test_session_reuses_one_socket_per_namespace(pair: tuple[N.Netns, N.Netns]) -> None:
    from cnipy.netlink.route import ipr

    node, pod = pair
    with netlink.session():
        with ipr(node.name) as a, ipr(node.name) as b, ipr(pod.name) as c:
            assert a is b and a is not c
        with netlink.session(), ipr(node.name) as inner:  # nested: the outer session's socket
            assert inner is a
    assert a.closed and c.closed
    with ipr(node.name) as d, ipr(node.name) as e:
        assert d is not e


def test_mac_and_running_by_ioctl_agree_with_the_link_message(pair: tuple[N.Netns, N.Netns]) -> None:
    node, pod = pair
    veth = netlink.create_veth(node.name, pod.name, "eth0", peer_mac="02:00:00:00:00:2b")
    assert veth.peer_mac == "02:00:00:00:00:2b" == netlink.get_link(pod.name, "eth0").mac
    assert netlink.link_mac(node.name, veth.host) == netlink.get_link(node.name, veth.host).mac == veth.host_mac
    assert not netlink.link_running(node.name, veth.host)
    netlink.set_link_up(node.name, veth.host)
    netlink.set_link_up(pod.name, "eth0")
    for _ in range(200):
        if netlink.link_running(node.name, veth.host):
            break
        time.sleep(0.01)
    assert netlink.get_link(node.name, veth.host).oper_state == "UP"
    with pytest.raises(netlink.InterfaceNotFound):
        netlink.link_mac(node.name, "cnbnothere")
    assert netlink.write_sysctls(pod.name, {"net/ipv4/conf/eth0/arp_notify": "1",
                                            "net/ipv4/conf/nothere/arp_notify": "1"}).keys() == {
        "net/ipv4/conf/nothere/arp_notify"}
    assert netlink.read_sysctl(pod.name, "net/ipv4/conf/eth0/arp_notify") == "1"

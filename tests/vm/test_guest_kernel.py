"""Runs inside the 6.1 VM (see conftest.py): the kernel features this host lacks work there, with real traffic.

Each test builds its own namespaces: a client, and the thing under test behind it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from cnipy.netlink.ns import call_in
from tests.support import netns as nsx
from tests.support.netns import Netns

PORT = 8080


def modprobe(*modules: str) -> None:
    for module in modules:
        nsx.run(["modprobe", module])


def serve_once(ns: Netns, ip: str, port: int, answer: bytes) -> threading.Thread:
    """A listener inside `ns` that answers one connection with `answer` (runs in a thread of this process)."""
    lsock = call_in(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((ip, port))
    lsock.listen(4)
    lsock.settimeout(20)

    def accept() -> None:
        with lsock:
            conn, _ = lsock.accept()
            with conn:
                conn.sendall(answer)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def fetch(ns: Netns, ip: str, port: int) -> bytes:
    sock = call_in(ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with sock:
        sock.settimeout(20)
        sock.connect((ip, port))
        return sock.recv(100)


def veth(a: Netns, a_ip: str, b: Netns, b_ip: str) -> None:
    nsx.run(["ip", "link", "add", "eth0", "netns", a.name, "type", "veth", "peer", "name", "eth0", "netns", b.name])
    a.run("ip", "addr", "add", a_ip, "dev", "eth0")
    b.run("ip", "addr", "add", b_ip, "dev", "eth0")
    a.run("ip", "link", "set", "eth0", "up")
    b.run("ip", "link", "set", "eth0", "up")


@pytest.fixture
def two() -> Iterator[list[Netns]]:
    with nsx.namespaces(2) as made:
        yield made


@pytest.fixture
def three() -> Iterator[list[Netns]]:
    with nsx.namespaces(3) as made:
        yield made


def test_we_are_in_the_guest_kernel() -> None:
    assert os.uname().release.startswith("6.1."), os.uname().release


def test_ipip_tunnel_carries_tcp(two: list[Netns]) -> None:
    modprobe("ipip")
    a, b = two
    veth(a, "192.168.7.1/24", b, "192.168.7.2/24")
    for ns, local, remote, inner, peer in ((a, "192.168.7.1", "192.168.7.2", "10.9.0.1/32", "10.9.0.2"),
                                           (b, "192.168.7.2", "192.168.7.1", "10.9.0.2/32", "10.9.0.1")):
        ns.run("ip", "link", "add", "tun0", "type", "ipip", "local", local, "remote", remote)
        ns.run("ip", "addr", "add", inner, "dev", "tun0")
        ns.run("ip", "link", "set", "tun0", "up")
        ns.run("ip", "route", "add", f"{peer}/32", "dev", "tun0")
    assert "ipip" in a.run("ip", "-d", "link", "show", "tun0").stdout
    server = serve_once(b, "10.9.0.2", PORT, b"through ipip")
    assert fetch(a, "10.9.0.2", PORT) == b"through ipip"
    server.join(timeout=20)
    stats = b.run("ip", "-s", "link", "show", "tun0").stdout
    assert "RX:" in stats


def test_ipvs_virtual_service_forwards_tcp(three: list[Netns]) -> None:
    """client -> VIP 10.96.0.10:80 on the director (IPVS, NAT) -> real server 10.2.0.2:8080."""
    modprobe("ip_vs", "ip_vs_rr")
    client, director, backend = three
    veth(client, "10.1.0.2/24", director, "10.1.0.1/24")
    director.run("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", backend.name)
    director.run("ip", "addr", "add", "10.2.0.1/24", "dev", "eth1")
    director.run("ip", "link", "set", "eth1", "up")
    backend.run("ip", "addr", "add", "10.2.0.2/24", "dev", "eth1")
    backend.run("ip", "link", "set", "eth1", "up")
    backend.run("ip", "route", "add", "default", "via", "10.2.0.1")
    client.run("ip", "route", "add", "10.96.0.0/16", "via", "10.1.0.1")
    director.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    director.run("ip", "addr", "add", "10.96.0.10/32", "dev", "lo")
    director.run("ipvsadm", "-A", "-t", "10.96.0.10:80", "-s", "rr")
    director.run("ipvsadm", "-a", "-t", "10.96.0.10:80", "-r", "10.2.0.2:8080", "-m")
    server = serve_once(backend, "10.2.0.2", 8080, b"through ipvs")
    assert fetch(client, "10.96.0.10", 80) == b"through ipvs"
    server.join(timeout=20)
    listing = director.run("ipvsadm", "-Ln", "--stats").stdout
    assert "10.96.0.10:80" in listing and "10.2.0.2:8080" in listing


def test_dummy_device_holds_an_address(two: list[Netns]) -> None:
    modprobe("dummy")
    a, _ = two
    a.run("ip", "link", "add", "dummy0", "type", "dummy")
    a.run("ip", "addr", "add", "10.77.0.1/32", "dev", "dummy0")
    a.run("ip", "link", "set", "dummy0", "up")
    assert "dummy" in a.run("ip", "-d", "link", "show", "dummy0").stdout
    server = serve_once(a, "10.77.0.1", PORT, b"on dummy")
    assert fetch(a, "10.77.0.1", PORT) == b"on dummy"
    server.join(timeout=20)

"""A one-node (optionally two-node) service topology in network namespaces.

    client ns (192.168.100.2) --veth-- node ns (192.168.100.1; bridge 10.244.1.1/24) --veth-- endpoint ns's
                                                                                                (10.244.1.10+i)
    client ns (192.168.101.2) --veth-- node2 ns (192.168.101.1)  [two-node only: no local endpoints]

Every link also has an IPv6 address (``nodad``: usable at once): fd00:100::2 / fd00:100::1, bridge
fd00:244:1::1/64, endpoints fd00:244:1::10+i (``endpoint_ips6``), fd00:101::2 / fd00:101::1 for node2; the
echo servers answer on both families.
The node namespaces route 10.96.0.0/16 (cluster IPs) nowhere but our rules; every link is named cpx + hex.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import Netns

HERE = Path(__file__).parent
PY = sys.executable


def _name() -> str:
    return f"cpx{secrets.token_hex(4)}"


def _veth(a: Netns, b: Netns) -> tuple[str, str]:
    """A veth pair with one end in each namespace; returns (name in a, name in b)."""
    x, y = _name(), _name()
    subprocess.run(["ip", "link", "add", x, "netns", a.name, "type", "veth", "peer", "name", y, "netns", b.name],
                   check=True, capture_output=True)
    a.run("ip", "link", "set", x, "up")
    b.run("ip", "link", "set", y, "up")
    return x, y


@dataclass
class Topology:
    client: Netns
    node: Netns
    endpoints: list[Netns]
    node2: Netns | None = None
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def endpoint_ips(self) -> list[str]:
        return [f"10.244.1.{10 + i}" for i in range(len(self.endpoints))]

    @property
    def endpoint_ips6(self) -> list[str]:
        return [f"fd00:244:1::{10 + i}" for i in range(len(self.endpoints))]

    def probe(self, *args: str, ns: Netns | None = None, timeout: float = 120) -> dict[str, object]:
        out = (ns or self.client).run(PY, str(HERE / "probe.py"), *args, timeout=timeout).stdout
        result: dict[str, object] = json.loads(out)
        return result

    def start_server(self, i: int, port: int = 8080) -> subprocess.Popen[str]:
        proc = self.endpoints[i].popen(PY, str(HERE / "echo_server.py"), f"ep{i}", str(port),
                                       stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        self.servers.append(proc)
        return proc

    def close(self) -> None:
        for p in self.servers:
            p.kill()
            p.wait(timeout=10)


def _addr6(ns: Netns, cidr: str, dev: str) -> None:
    ns.run("ip", "-6", "addr", "add", cidr, "dev", dev, "nodad")  # no duplicate address detection delay


def build(make: Callable[[], Netns], n_endpoints: int, *, two_nodes: bool = False, port: int = 8080,
          start: bool = True) -> Topology:
    client, node = make(), make()
    topo = Topology(client, node, [make() for _ in range(n_endpoints)], make() if two_nodes else None)
    node.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    node.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    c, n = _veth(client, node)
    client.run("ip", "addr", "add", "192.168.100.2/24", "dev", c)
    client.run("ip", "route", "add", "default", "via", "192.168.100.1")
    _addr6(client, "fd00:100::2/64", c)
    client.run("ip", "-6", "route", "add", "default", "via", "fd00:100::1")
    node.run("ip", "addr", "add", "192.168.100.1/24", "dev", n)
    _addr6(node, "fd00:100::1/64", n)
    # Real nodes have a default route; local processes need one to reach a cluster IP before DNAT.
    node.run("ip", "route", "add", "default", "via", "192.168.100.2")
    node.run("ip", "-6", "route", "add", "default", "via", "fd00:100::2")
    br = _name()
    node.run("ip", "link", "add", br, "type", "bridge")
    node.run("ip", "addr", "add", "10.244.1.1/24", "dev", br)
    _addr6(node, "fd00:244:1::1/64", br)
    node.run("ip", "link", "set", br, "up")
    for i, ep in enumerate(topo.endpoints):
        e, h = _veth(ep, node)
        node.run("ip", "link", "set", h, "master", br)
        # As the bridge CNI plugin's hairpinMode: with br_netfilter on, a pod's DNATed connection to its own
        # service is bridged back out of the port it came in on.
        node.run("ip", "link", "set", h, "type", "bridge_slave", "hairpin", "on")
        ep.run("ip", "addr", "add", f"10.244.1.{10 + i}/24", "dev", e)
        ep.run("ip", "route", "add", "default", "via", "10.244.1.1")
        _addr6(ep, f"fd00:244:1::{10 + i}/64", e)
        ep.run("ip", "-6", "route", "add", "default", "via", "fd00:244:1::1")
    if topo.node2 is not None:
        topo.node2.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        topo.node2.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        c2, n2 = _veth(client, topo.node2)
        client.run("ip", "addr", "add", "192.168.101.2/24", "dev", c2)
        _addr6(client, "fd00:101::2/64", c2)
        topo.node2.run("ip", "addr", "add", "192.168.101.1/24", "dev", n2)
        _addr6(topo.node2, "fd00:101::1/64", n2)
    if start:
        for i in range(n_endpoints):
            topo.start_server(i, port)
    return topo


def wait_until(cond: Callable[[], bool], timeout: float = 10, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False

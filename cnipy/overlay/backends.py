"""Back ends: from our lease and the peers' leases to the desired kernel state, and the device they need.

    vxlan     per peer, in this order: a permanent neighbour entry for the peer's VTEP address (its subnet's .0)
              with the peer's VTEP MAC; an FDB entry sending that MAC to the peer's underlay address; an onlink
              route to the peer's subnet via its VTEP address. With DirectRouting, a peer on our own L2 subnet
              gets a plain route via its underlay address instead. MTU = underlay MTU - 50 (- 70 over IPv6).
    host-gw   per peer a route to its subnet via its underlay address; a peer not on our L2 subnet cannot be
              reached that way and is refused (reported in `rejected`, never programmed).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Protocol

from cnipy.netlink.fdb import FdbEntry
from cnipy.netlink.neigh import Neighbour
from cnipy.netlink.owned_routes import OwnedRoute
from cnipy.netlink.vxlan import Underlay
from cnipy.overlay.config import BackendConfig
from cnipy.overlay.leases import Lease

VXLAN_OVERHEAD_V4 = 50
VXLAN_OVERHEAD_V6 = 70


@dataclass(frozen=True)
class Desired:
    routes: frozenset[OwnedRoute] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()
    rejected: tuple[str, ...] = field(default=())  # why some peers were not programmed


class Backend(Protocol):
    type: str
    device: str  # "" when the back end has no device of its own
    mtu: int
    vtep_mac: str

    def ensure_device(self, own: Lease) -> bool:
        """Create or repair the device for our lease; True when something changed."""

    def desired(self, own: Lease, peers: list[Lease]) -> Desired: ...

    def remove(self) -> None:
        """Delete the device (node removal)."""


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC per node: a recreated device keeps the MAC peers know."""
    digest = hashlib.sha256(node.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0E, *digest[:5]))


def kernel_version(release: str | None = None) -> tuple[int, int]:
    release = release if release is not None else os.uname().release
    parts = (release.split("-")[0].split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def checksum_offload_broken(policy: str, release: str | None = None) -> bool:
    """Whether to turn tx checksum offload off on the VXLAN device (flannel#1279, calico#3145): kernels before
    5.7 miscompute the checksum of VXLAN packets that netfilter NATs ("netfilter: nat: never update the UDP
    checksum when it's 0" fixed it), so "auto" turns it off there only. Turning it off costs most of the
    throughput (no TSO through the tunnel: 0.2 instead of 0.8 of the underlay here), so it is not forced."""
    if policy == "off":
        return True
    if policy == "on":
        return False
    return kernel_version(release) < (5, 7)


def on_link(underlay: Underlay, peer: Lease) -> bool:
    return peer.public_ip.version == underlay.address.version and peer.public_ip in underlay.address.network


class VxlanBackend:
    type = "vxlan"

    def __init__(self, conf: BackendConfig, underlay: Underlay, node: str, netns: str | None = None) -> None:
        self.conf, self.underlay, self.netns = conf, underlay, netns
        self.device = conf.device_name
        overhead = VXLAN_OVERHEAD_V4 if underlay.address.version == 4 else VXLAN_OVERHEAD_V6
        self.mtu = conf.mtu or underlay.mtu - overhead
        self.vtep_mac = vtep_mac(node)

    def ensure_device(self, own: Lease) -> bool:
        from cnipy.netlink import vxlan

        spec = vxlan.VxlanSpec(self.device, self.conf.vni, self.conf.port, self.underlay.address.ip,
                               self.underlay.name, self.vtep_mac, self.mtu)
        changed = vxlan.ensure_vxlan(self.netns, spec)
        changed |= vxlan.set_only_address(self.netns, self.device, ipaddress.IPv4Interface((own.gateway, 32)))
        if checksum_offload_broken(self.conf.checksum_offload):
            changed |= vxlan.disable_tx_checksum_offload(self.netns, self.device)
        return changed

    def desired(self, own: Lease, peers: list[Lease]) -> Desired:
        routes, neighs, fdbs, rejected = set(), set(), set(), []
        for peer in peers:
            if peer.subnet == own.subnet:
                continue
            if self.conf.direct_routing and peer.public_ip.version == 4 and on_link(self.underlay, peer):
                routes.add(OwnedRoute(peer.subnet, ipaddress.IPv4Address(peer.public_ip), self.underlay.name))
                continue
            if peer.backend_type != self.type or not peer.vtep_mac:
                rejected.append(f"peer {peer.node} ({peer.subnet}) uses back end {peer.backend_type!r}, not vxlan")
                continue
            if peer.public_ip.version != self.underlay.address.version:
                rejected.append(f"peer {peer.node} has an IPv{peer.public_ip.version} underlay address")
                continue
            neighs.add(Neighbour(peer.gateway, peer.vtep_mac))
            fdbs.add(FdbEntry(peer.vtep_mac, peer.public_ip))
            routes.add(OwnedRoute(peer.subnet, peer.gateway, self.device, onlink=True))
        return Desired(frozenset(routes), frozenset(neighs), frozenset(fdbs), tuple(rejected))

    def remove(self) -> None:
        from cnipy.netlink import vxlan

        vxlan.delete_link(self.netns, self.device)


class HostGwBackend:
    type = "host-gw"
    device = ""
    vtep_mac = ""

    def __init__(self, conf: BackendConfig, underlay: Underlay, node: str, netns: str | None = None) -> None:
        self.conf, self.underlay, self.netns = conf, underlay, netns
        self.mtu = conf.mtu or underlay.mtu

    def ensure_device(self, own: Lease) -> bool:
        return False

    def desired(self, own: Lease, peers: list[Lease]) -> Desired:
        routes, rejected = set(), []
        for peer in peers:
            if peer.subnet == own.subnet:
                continue
            if peer.public_ip.version != 4:
                rejected.append(f"host-gw: peer {peer.node} has an IPv6 underlay address; host-gw routes IPv4 pods "
                                "via IPv4 underlay addresses only")
                continue
            if not on_link(self.underlay, peer):
                rejected.append(f"host-gw: peer {peer.node} ({peer.public_ip}) is not on this node's L2 subnet "
                                f"{self.underlay.address.network}; host-gw needs every node on one L2 segment "
                                "(use vxlan, with DirectRouting for same-segment peers)")
                continue
            routes.add(OwnedRoute(peer.subnet, ipaddress.IPv4Address(peer.public_ip), self.underlay.name))
        return Desired(frozenset(routes), rejected=tuple(rejected))

    def remove(self) -> None:
        return None


def make(conf: BackendConfig, underlay: Underlay, node: str, netns: str | None = None) -> Backend:
    if conf.type == "vxlan":
        return VxlanBackend(conf, underlay, node, netns)
    return HostGwBackend(conf, underlay, node, netns)

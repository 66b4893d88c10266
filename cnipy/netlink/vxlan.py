"""VXLAN devices for the overlay: create or repair one, read it back, find the underlay, turn off tx checksum
offload, and keep exactly one address on it.

Checksum offload (flannel#1279): with tx checksum offload on a VXLAN device, packets that netfilter SNATs after
the checksum was left to the hardware (kube-proxy's NodePort masquerade) reach the peer with a bad inner UDP/TCP
checksum and are dropped until a retransmit (the 63-second DNS delays seen in Kubernetes). We switch it off with
the ethtool ioctl (ETHTOOL_STXCSUM, what `ethtool -K dev tx off` does), so no ethtool binary is needed. Whether
to do it is the caller's decision (cnipy.overlay.backends.checksum_offload_broken: kernels before 5.7).
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from cnipy.netlink.errors import InterfaceNotFound, NetlinkError
from cnipy.netlink.ns import entered
from cnipy.netlink.route import guarded, ipr, link_index

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17


@dataclass(frozen=True)
class VxlanSpec:
    name: str
    vni: int
    port: int
    local: IPAddress
    underlay: str  # the device VXLAN packets leave by
    mac: str
    mtu: int


@dataclass(frozen=True)
class Underlay:
    """The interface that carries a node's public address, with its prefix and MTU."""

    name: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    mtu: int


def _data(link: Any) -> Any:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    return info.get_attr("IFLA_INFO_DATA")


def read_vxlan(netns: str | None, name: str) -> VxlanSpec | None:
    """The device as the kernel has it (None when absent or not a VXLAN device)."""
    with ipr(netns) as sock, guarded(f"read {name}"):
        found = sock.link_lookup(ifname=name)
        if not found:
            return None
        link = sock.get_links(found[0])[0]
        data = _data(link)
        if data is None:
            return None
        local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6") or "0.0.0.0"
        lower = data.get_attr("IFLA_VXLAN_LINK")
        lower_name = ""
        if lower:
            lowers = sock.get_links(lower)
            lower_name = lowers[0].get_attr("IFLA_IFNAME") if lowers else ""
        return VxlanSpec(name, int(data.get_attr("IFLA_VXLAN_ID")), int(data.get_attr("IFLA_VXLAN_PORT") or 0),
                         ipaddress.ip_address(local), lower_name, str(link.get_attr("IFLA_ADDRESS")),
                         int(link.get_attr("IFLA_MTU")))


def is_up(netns: str | None, name: str) -> bool:
    with ipr(netns) as sock, guarded(f"read {name}"):
        return bool(sock.get_links(link_index(sock, name))[0]["flags"] & 1)


def ensure_vxlan(netns: str | None, spec: VxlanSpec) -> bool:
    """Make the device match `spec` (create it, or recreate it when VNI, port, local or underlay differ), set
    its MAC and MTU and bring it up. Returns True when anything had to change."""
    have = read_vxlan(netns, spec.name)
    changed = False
    with ipr(netns) as sock:
        if have is not None and (have.vni, have.port, have.local, have.underlay) != \
                (spec.vni, spec.port, spec.local, spec.underlay):
            with guarded(f"delete stale {spec.name}"):
                sock.link("del", index=link_index(sock, spec.name))
            have = None
        if have is None:
            local_key = "vxlan_local" if spec.local.version == 4 else "vxlan_local6"
            with guarded(f"create vxlan {spec.name}"):
                sock.link("add", ifname=spec.name, kind="vxlan", vxlan_id=spec.vni, vxlan_port=spec.port,
                          vxlan_link=link_index(sock, spec.underlay), vxlan_learning=0,
                          **{local_key: str(spec.local)}, address=spec.mac, mtu=spec.mtu)
            changed = True
        elif have.mac.lower() != spec.mac.lower() or have.mtu != spec.mtu:
            with guarded(f"set {spec.name} mac/mtu"):
                sock.link("set", index=link_index(sock, spec.name), address=spec.mac, mtu=spec.mtu)
            changed = True
        idx = link_index(sock, spec.name)
        if not sock.get_links(idx)[0]["flags"] & 1:
            with guarded(f"set {spec.name} up"):
                sock.link("set", index=idx, state="up")
            changed = True
    return changed


def delete_link(netns: str | None, name: str) -> None:
    """Remove a link; a missing one is fine."""
    with ipr(netns) as sock:
        found = sock.link_lookup(ifname=name)
        if found:
            with guarded(f"delete {name}"):
                sock.link("del", index=found[0])


def _ethtool(netns: str | None, name: str, cmd: int, data: int = 0) -> int:
    value = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifreq = struct.pack("16sP", name.encode()[:15], ctypes.addressof(value)) + b"\0" * 16
    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as exc:
        cls = InterfaceNotFound if exc.errno == 19 else NetlinkError
        raise cls(f"ethtool on {name}: {exc.strerror}", exc.errno or 0) from exc
    finally:
        sock.close()
    return int(struct.unpack("II", value.raw)[1])


def tx_checksum_offload(netns: str | None, name: str) -> bool:
    return bool(_ethtool(netns, name, ETHTOOL_GTXCSUM))


def disable_tx_checksum_offload(netns: str | None, name: str) -> bool:
    """Turn tx checksum offload off; True when it was on."""
    if not tx_checksum_offload(netns, name):
        return False
    _ethtool(netns, name, ETHTOOL_STXCSUM, 0)
    return True


def set_only_address(netns: str | None, name: str,
                     address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bool:
    """Keep exactly `address` on the device (of its family); True when anything changed."""
    changed = False
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with ipr(netns) as sock, guarded(f"address on {name}"):
        idx = link_index(sock, name)
        present = False
        for msg in sock.get_addr(index=idx, family=family):
            have = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if have == address:
                present = True
            elif not have.ip.is_link_local:
                sock.addr("del", index=idx, address=str(have.ip), prefixlen=have.network.prefixlen)
                changed = True
        if not present:
            sock.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen)
            changed = True
    return changed


def underlay_for(netns: str | None, address: IPAddress | None) -> Underlay:
    """The interface holding `address`, or (None) the one the default route leaves by."""
    with ipr(netns) as sock, guarded("find the underlay interface"):
        if address is None:
            routes = [r for r in sock.get_routes(family=socket.AF_INET, table=254)
                      if r["dst_len"] == 0 and r.get_attr("RTA_OIF")]
            if not routes:
                raise InterfaceNotFound("no default route to find the public interface by; give public-ip")
            idx = int(routes[0].get_attr("RTA_OIF"))
            candidates = sock.get_addr(index=idx, family=socket.AF_INET)
        else:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            candidates = [m for m in sock.get_addr(family=family) if m.get_attr("IFA_ADDRESS") == str(address)]
        if not candidates:
            raise InterfaceNotFound(f"no interface has the address {address}")
        msg = candidates[0]
        link = sock.get_links(msg["index"])[0]
        iface = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        return Underlay(str(link.get_attr("IFLA_IFNAME")), iface, int(link.get_attr("IFLA_MTU")))


def link_mac(netns: str | None, name: str) -> str:
    with ipr(netns) as sock, guarded(f"read {name}"):
        return str(sock.get_links(link_index(sock, name))[0].get_attr("IFLA_ADDRESS"))

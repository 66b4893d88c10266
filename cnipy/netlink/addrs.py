"""Address verbs: add, list and delete the IP addresses of a link."""

from __future__ import annotations

import ipaddress
import socket
import time

from cnipy.netlink.errors import AlreadyExists, NetlinkError
from cnipy.netlink.route import guarded, ipr, link_index

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200


def _family(addr: IPInterface) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def add_address(netns: str | None, name: str, addr: IPInterface, *, exist_ok: bool = False,
                noprefixroute: bool = False, nodad: bool = False) -> None:
    """Add `addr` (address/prefix) to link `name`; AlreadyExists unless `exist_ok`.

    `noprefixroute` skips the kernel's automatic subnet route (the point-to-point plugin routes by itself).
    """
    flags = (IFA_F_NOPREFIXROUTE if noprefixroute else 0) | (IFA_F_NODAD if nodad else 0)
    kw: dict[str, object] = {"address": str(addr.ip), "prefixlen": addr.network.prefixlen,
                             "family": _family(addr)}
    if flags:
        kw["IFA_FLAGS"] = flags
    if addr.version == 4:
        kw["local"] = str(addr.ip)
        if addr.network.prefixlen < 31:
            kw["broadcast"] = str(addr.network.broadcast_address)
    with ipr(netns) as sock:
        idx = link_index(sock, name)
        try:
            with guarded(f"add address {addr} to {name}"):
                sock.addr("add", index=idx, **kw)
        except AlreadyExists:
            if not exist_ok:
                raise


def del_address(netns: str | None, name: str, addr: IPInterface) -> None:
    """Remove `addr` from link `name` (AddressNotAvailable when it is not there)."""
    with ipr(netns) as sock, guarded(f"delete address {addr} from {name}"):
        sock.addr("del", index=link_index(sock, name), address=str(addr.ip),
                  prefixlen=addr.network.prefixlen, family=_family(addr))


IFA_F_TENTATIVE = 0x40


def tentative_addresses(netns: str | None, name: str) -> list[IPInterface]:
    """IPv6 addresses of `name` still in duplicate address detection (not usable as a source yet)."""
    with ipr(netns) as sock, guarded(f"list addresses of {name}"):
        msgs = sock.get_addr(index=link_index(sock, name), family=socket.AF_INET6)
    out: list[IPInterface] = []
    for msg in msgs:
        flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
        if flags & IFA_F_TENTATIVE:
            out.append(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return out


def settle_addresses(netns: str | None, name: str, timeout: float = 5.0) -> None:
    """Wait until no IPv6 address of `name` is tentative (the reference's SettleAddresses)."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [a for a in tentative_addresses(netns, name) if not a.is_link_local]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise NetlinkError(f"addresses {', '.join(map(str, pending))} on {name} still tentative "
                               f"after {timeout:.0f}s (duplicate address detection)")
        time.sleep(0.05)


def list_addresses(netns: str | None, name: str, family: int | None = None) -> list[IPInterface]:
    """The addresses of link `name` (both families unless `family` is 4 or 6), link-local IPv6 included."""
    with ipr(netns) as sock, guarded(f"list addresses of {name}"):
        idx = link_index(sock, name)
        kw: dict[str, int] = {"index": idx}
        if family is not None:
            kw["family"] = socket.AF_INET if family == 4 else socket.AF_INET6
        msgs = sock.get_addr(**kw)
    out: list[IPInterface] = []
    for msg in msgs:
        ip = msg.get_attr("IFA_LOCAL") if msg["family"] == socket.AF_INET else None
        ip = ip or msg.get_attr("IFA_ADDRESS")
        out.append(ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"))
    return out

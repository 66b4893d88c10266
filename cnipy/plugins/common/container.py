"""The container side of an attachment: addresses and routes (like the reference's ConfigureIface), and the
comparisons CHECK makes between the live state and prevResult."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnipy.cni import IPConfig, Route
from cnipy.cni.errors import CniError, KernelError

if TYPE_CHECKING:
    from cnipy.netlink import LinkInfo, RouteSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def first_gateways(ips: Sequence[IPConfig]) -> dict[int, IPAddress]:
    out: dict[int, IPAddress] = {}
    for ip in ips:
        if ip.gateway is not None:
            out.setdefault(ip.gateway.version, ip.gateway)
    return out


def route_spec(route: Route, dev: str, gateways: dict[int, IPAddress]) -> RouteSpec:
    from cnipy import netlink

    gw = route.gw if route.gw is not None else gateways.get(route.dst.version)
    return netlink.RouteSpec(route.dst, gw=gw, dev=dev, scope=route.scope, table=route.table,
                             metric=route.priority, mtu=route.mtu, advmss=route.advmss)


def enable_ipv6(netns: str, ifname: str) -> None:
    """IPv6 addresses need disable_ipv6=0 (lo too) and keep_addr_on_down=1, as the reference ensures."""
    from cnipy import netlink

    for dev in ("lo", ifname):
        with contextlib.suppress(netlink.NotFound):
            if netlink.read_sysctl(netns, f"net/ipv6/conf/{dev}/disable_ipv6") != "0":
                netlink.write_sysctl(netns, f"net/ipv6/conf/{dev}/disable_ipv6", "0")
    with contextlib.suppress(netlink.NotFound):
        netlink.write_sysctl(netns, f"net/ipv6/conf/{ifname}/keep_addr_on_down", "1")


def configure(netns: str, ifname: str, ips: Sequence[IPConfig], routes: Sequence[Route]) -> None:
    """Bring `ifname` up with `ips`, then add `routes` (a route without gw goes via its family's gateway)."""
    from cnipy import netlink

    if any(ip.address.version == 6 for ip in ips):
        enable_ipv6(netns, ifname)
    for ip in ips:
        netlink.add_address(netns, ifname, ip.address)
    netlink.set_link_up(netns, ifname)
    if any(ip.address.version == 6 for ip in ips):
        netlink.settle_addresses(netns, ifname)
    gws = first_gateways(ips)
    for route in routes:
        netlink.add_route(netns, route_spec(route, ifname, gws), append=True)


# -- CHECK --------------------------------------------------------------------------------------------------
class Mismatch(CniError):
    """The live state differs from prevResult (CHECK); the message names what differs."""

    code = KernelError.code


def check_veth(netns: str, ifname: str, mac: str, mtu: int, problems: list[str]) -> LinkInfo | None:
    """The pod's veth as CHECK sees it: its link, or None (with the reason in `problems`) when it is gone.
    Adds what differs from prevResult's MAC and the config's MTU."""
    from cnipy import netlink

    try:
        link = netlink.get_link(netns, ifname)
    except netlink.InterfaceNotFound:
        problems.append(f"container interface {ifname} does not exist in {netns}")
        return None
    if link.kind != "veth":
        problems.append(f"container interface {ifname} is a {link.kind or 'device'}, not a veth")
    if mac and mac != link.mac:
        problems.append(f"container interface {ifname} MAC is {link.mac}, prevResult says {mac}")
    if mtu and link.mtu != mtu:
        problems.append(f"container interface {ifname} MTU is {link.mtu}, config says {mtu}")
    return link


def check_addresses(netns: str, ifname: str, ips: Sequence[IPConfig]) -> list[str]:
    from cnipy import netlink

    live = netlink.list_addresses(netns, ifname)
    return [f"address {ip.address} from prevResult is not on {ifname} (it has: "
            f"{', '.join(str(a) for a in live if not a.is_link_local) or 'none'})"
            for ip in ips if ip.address not in live]


def check_routes(netns: str, ifname: str, ips: Sequence[IPConfig], routes: Sequence[Route]) -> list[str]:
    from cnipy import netlink

    gws = first_gateways(ips)
    problems: list[str] = []
    cache: dict[int | None, list[RouteSpec]] = {}
    for route in routes:
        if route.table not in cache:
            cache[route.table] = netlink.list_routes(netns, table=route.table or 254)
        gw = route.gw if route.gw is not None else gws.get(route.dst.version)
        same_dst = [r for r in cache[route.table] if r.dst == route.dst]
        if not same_dst:
            problems.append(f"route to {route.dst} from prevResult is missing")
        elif gw is not None and not any(r.gw == gw for r in same_dst):
            problems.append(f"route to {route.dst} goes via {same_dst[0].gw or same_dst[0].dev}, "
                            f"prevResult says via {gw}")
    return problems


def fail_if(problems: Sequence[str], what: str) -> None:
    if problems:
        raise Mismatch(f"{what}: live state differs from prevResult", "; ".join(problems)[:2000])

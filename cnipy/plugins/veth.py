"""cnipy-veth: a point-to-point veth between the host and the pod, like the reference `ptp` plugin.

The pod gets its address with no subnet route; instead "gateway/32 dev eth0 scope link" and "subnet via gateway",
so every packet goes to the host. The host side carries the gateway as a /32 and routes "podIP/32 dev vethX".
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace

from cnipy.cni import Interface, IPConfig, Request, Result, Route, invoke
from cnipy.cni.errors import InterfaceExists, InvalidConfig, PluginNotAvailable, UnknownContainer
from cnipy.plugins.common import config as C
from cnipy.plugins.common import container, ipam, masq
from cnipy.plugins.common.kernel import kernel, quietly
from cnipy.plugins.common.masq import Attachment

ABOUT = "CNI cnipy-veth plugin"


@dataclass(frozen=True)
class VethConf:
    network: str
    ip_masq: bool = False
    masq_backend: str | None = None
    mtu: int = 0
    ipam_type: str = ""

    @classmethod
    def parse(cls, req: Request) -> VethConf:
        """The veth plugin always needs IPAM: a missing ipam.type is InvalidConfig (7)."""
        raw = req.config.raw
        return cls(req.config.name, C.flag(raw, "ipMasq"), C.backend(raw), C.mtu(raw), req.config.ipam_type)


# -- ADD ----------------------------------------------------------------------------------------------------------
def cmd_add(req: Request) -> Result:
    from cnipy import netlink

    conf = VethConf.parse(req)
    att = Attachment(conf.network, req.ifname, req.container_id)
    with netlink.session(), ExitStack() as undo, kernel("veth ADD"):
        with kernel("looking up the container interface"):
            if netlink.link_exists(req.netns, req.ifname):
                raise InterfaceExists(f"container interface {req.ifname} already exists", req.netns)
        allocated = ipam.add(undo, req)
        ips = [replace(ip, interface=1) for ip in allocated.ips]
        _require_gateways(ips)
        _enable_forwarding({ip.address.version for ip in ips})
        try:
            veth = netlink.create_veth(None, req.netns, req.ifname, mtu=conf.mtu)
        except netlink.AlreadyExists as exc:
            raise InterfaceExists(f"container interface {req.ifname} already exists", req.netns) from exc
        undo.callback(quietly, netlink.delete_link, req.netns, req.ifname)
        _host_up(veth.host)  # before the container side: IPv6 DAD there needs the carrier
        _container_side(req, ips, allocated.routes)
        _host_side(veth.host, ips)
        if conf.ip_masq:
            undo.callback(quietly, masq.teardown, att)  # first: IPv4 may be in place when IPv6 fails
            masq.setup(masq.backend_of(conf.masq_backend), att, [ip.address for ip in ips])
        dns = allocated.dns if req.config.dns.is_empty() else req.config.dns
        host_mac = netlink.link_mac(None, veth.host)
        undo.pop_all()
    return Result(req.config.cni_version,
                  (Interface(veth.host, host_mac), Interface(req.ifname, veth.peer_mac, req.netns)),
                  tuple(ips), allocated.routes, dns)


def _require_gateways(ips: Sequence[IPConfig]) -> None:
    for ip in ips:
        if ip.gateway is None:
            raise InvalidConfig(f"the IPAM result gives no gateway for {ip.address}",
                                "the veth plugin routes through the gateway address")


def _enable_forwarding(families: set[int]) -> None:
    from cnipy import netlink

    for family in sorted(families):
        key = "net/ipv4/ip_forward" if family == 4 else "net/ipv6/conf/all/forwarding"
        if netlink.read_sysctl(None, key) != "1":
            netlink.write_sysctl(None, key, "1")


def _container_side(req: Request, ips: Sequence[IPConfig], routes: Sequence[Route]) -> None:
    """Addresses without the subnet route; gateway/32 on link; subnet via gateway; then IPAM's routes."""
    from cnipy import netlink

    if any(ip.address.version == 6 for ip in ips):
        container.enable_ipv6(req.netns, req.ifname)
    for ip in ips:
        netlink.add_address(req.netns, req.ifname, ip.address, noprefixroute=True)
    netlink.set_link_up(req.netns, req.ifname)
    if any(ip.address.version == 6 for ip in ips):
        netlink.settle_addresses(req.netns, req.ifname)
    for ip in ips:
        assert ip.gateway is not None
        host_len = ip.address.max_prefixlen
        netlink.add_route(req.netns, netlink.RouteSpec(
            ipaddress.ip_network(f"{ip.gateway}/{host_len}"), dev=req.ifname, src=ip.address.ip,
            scope=netlink.RT_SCOPE_LINK))
        netlink.add_route(req.netns, netlink.RouteSpec(
            ip.address.network, gw=ip.gateway, dev=req.ifname, src=ip.address.ip,
            scope=netlink.RT_SCOPE_UNIVERSE))
    gws = container.first_gateways(ips)
    for route in routes:
        netlink.add_route(req.netns, container.route_spec(route, req.ifname, gws), append=True)


def _host_up(host: str) -> None:
    from cnipy import netlink

    with contextlib.suppress(netlink.NetlinkError):  # we own this interface's routes
        netlink.write_sysctl(None, f"net/ipv6/conf/{host}/accept_ra", "0")
    netlink.set_link_up(None, host)


def _host_side(host: str, ips: Sequence[IPConfig]) -> None:
    """The gateway as a /32 (/128) on the host veth and a host route to the pod through it."""
    from cnipy import netlink

    for ip in ips:
        assert ip.gateway is not None
        host_len = ip.address.max_prefixlen
        netlink.add_address(None, host, ipaddress.ip_interface(f"{ip.gateway}/{host_len}"), exist_ok=True)
        netlink.add_route(None, netlink.RouteSpec(
            ipaddress.ip_network(f"{ip.address.ip}/{host_len}"), dev=host, scope=netlink.RT_SCOPE_HOST),
            exist_ok=True)



# -- DEL ----------------------------------------------------------------------------------------------------------
def cmd_del(req: Request) -> None:
    from cnipy import netlink

    conf = VethConf.parse(req)
    invoke.delete(req.config.ipam_type, req)
    if req.netns:
        with kernel("deleting the container interface"), \
                contextlib.suppress(netlink.NamespaceNotFound, netlink.InterfaceNotFound):
            netlink.delete_link(req.netns, req.ifname)
    if conf.ip_masq:
        masq.teardown(Attachment(conf.network, req.ifname, req.container_id))


# -- CHECK --------------------------------------------------------------------------------------------------------
def cmd_check(req: Request) -> None:
    from cnipy import netlink

    conf = VethConf.parse(req)
    prev = req.config.prev_result
    if prev is None:
        raise InvalidConfig("required prevResult missing")
    invoke.check(req.config.ipam_type, req)
    if not netlink.netns_exists(req.netns):
        raise UnknownContainer("network namespace not found", req.netns)
    problems: list[str] = []
    with kernel("veth CHECK"):
        conts = [i for i in prev.interfaces if i.name == req.ifname and i.sandbox]
        if not conts or conts[0].sandbox != req.netns:
            problems.append(f"prevResult has no interface {req.ifname} with sandbox {req.netns}")
        else:
            _check_link(req, conts[0], prev, conf.mtu, problems)
        if not problems:
            problems += container.check_addresses(req.netns, req.ifname, prev.ips)
            problems += container.check_routes(req.netns, req.ifname, prev.ips, prev.routes)
            problems += container.check_routes(req.netns, req.ifname, (), _point_to_point_routes(prev))
        if conf.ip_masq:
            att = Attachment(conf.network, req.ifname, req.container_id)
            problems += masq.missing(masq.backend_of(conf.masq_backend), att, [ip.address for ip in prev.ips])
    container.fail_if(problems, f"veth CHECK of {req.ifname} in {req.netns}")


def _point_to_point_routes(prev: Result) -> list[Route]:
    """The pair of routes this plugin adds for each address: gateway on link, subnet via gateway."""
    out: list[Route] = []
    for ip in prev.ips:
        if ip.gateway is not None:
            out.append(Route(ipaddress.ip_network(f"{ip.gateway}/{ip.address.max_prefixlen}")))
            out.append(Route(ip.address.network, ip.gateway))
    return out


def _check_link(req: Request, cont: Interface, prev: Result, mtu: int, problems: list[str]) -> None:
    from cnipy import netlink

    link = container.check_veth(req.netns, req.ifname, cont.mac, mtu, problems)
    if link is None:
        return
    if not link.up:
        problems.append(f"container interface {req.ifname} is down")
    hosts = [i for i in prev.interfaces if not i.sandbox]
    for host in hosts:
        with contextlib.suppress(netlink.InterfaceNotFound):
            h = netlink.get_link(None, host.name)
            if h.index == link.peer_index and h.peer_index == link.index:
                routes = netlink.list_routes(None, dev=h.name)
                addrs = netlink.list_addresses(None, h.name)
                for ip in prev.ips:
                    n = ip.address.max_prefixlen
                    host_route = ipaddress.ip_network(f"{ip.address.ip}/{n}")
                    if not any(r.dst == host_route for r in routes):
                        problems.append(f"host route {host_route} dev {h.name} is missing")
                    if ip.gateway is not None and ipaddress.ip_interface(f"{ip.gateway}/{n}") not in addrs:
                        problems.append(f"gateway address {ip.gateway}/{n} is not on {h.name}")
                return
    problems.append(f"no host veth from prevResult is the peer of {req.ifname}")


# -- GC and STATUS ------------------------------------------------------------------------------------------------
def cmd_gc(req: Request) -> None:
    conf = VethConf.parse(req)
    if req.config.valid_attachments is None:
        raise InvalidConfig("GC needs cni.dev/valid-attachments")
    masq.gc(conf.network, [(a.container_id, a.ifname) for a in req.config.valid_attachments])
    invoke.gc(req.config.ipam_type, req)


def cmd_status(req: Request) -> None:
    from cnipy.plugins.common.run import which

    conf = VethConf.parse(req)
    if conf.ip_masq:
        tool = "iptables-restore" if masq.backend_of(conf.masq_backend) == "iptables" else "nft"
        if which(tool) is None:
            raise PluginNotAvailable(f"ipMasq needs {tool}, which is not installed")
    invoke.status(req.config.ipam_type, req)

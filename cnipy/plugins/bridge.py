"""cnipy-bridge: attach a pod to a Linux bridge with a veth pair (the reference `bridge` plugin's options).

ADD reads top to bottom: parse the config, allocate addresses (IPAM), the bridge, the veth pair and its bridge
port, the container side (addresses, routes, sysctls), the host side (gateway address, forwarding), masquerade,
the result. Everything made is undone when a later step fails. Shared pieces live in `cnipy.plugins.common`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cnipy.cni import Interface, IPConfig, Request, Result, Route, invoke
from cnipy.cni.errors import (
    InterfaceExists,
    InvalidConfig,
    KernelError,
    PluginNotAvailable,
    UnknownContainer,
)
from cnipy.cni.validate import config_interface_name
from cnipy.plugins.common import config as C
from cnipy.plugins.common import container, ipam, masq, spoofchk
from cnipy.plugins.common.kernel import kernel, quietly
from cnipy.plugins.common.masq import Attachment

if TYPE_CHECKING:
    from cnipy.netlink import LinkInfo, VethPair

ABOUT = "CNI cnipy-bridge plugin"
DEFAULT_BRIDGE = "cni0"
# How long the host port may take to come up: what the reference's retries (0, 50, 500, 1000, 1000 ms) add up to.
# We look more often (the look is one ioctl), so a port that is up after 2 ms is not waited for 50 or 500.
PORT_UP_TIMEOUT = 2.55
PORT_UP_POLL = (0.001, 0.1)  # first and longest pause between looks
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class BridgeConf:
    network: str
    bridge: str = DEFAULT_BRIDGE
    is_gw: bool = False
    is_default_gw: bool = False
    force_address: bool = False
    ip_masq: bool = False
    masq_backend: str | None = None
    mtu: int = 0
    hairpin: bool = False
    promisc: bool = False
    vlan: int = 0
    vlans: tuple[int, ...] = ()
    vlan_filtering: bool = False
    preserve_default_vlan: bool = False
    macspoofchk: bool = False
    enable_dad: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    mac: str = ""
    layer3: bool = False

    @property
    def vlan_iface(self) -> str:
        return f"{self.bridge}.{self.vlan}"

    @classmethod
    def parse(cls, req: Request) -> BridgeConf:
        raw = req.config.raw
        name = raw.get("bridge")
        bridge = config_interface_name(DEFAULT_BRIDGE if name is None else name, "bridge")
        vlan = C.integer(raw, "vlan", 0, 4094)
        trunk = raw.get("vlanTrunk")
        conf = cls(
            network=req.config.name, bridge=bridge,
            is_gw=C.flag(raw, "isGateway") or C.flag(raw, "isDefaultGateway"),
            is_default_gw=C.flag(raw, "isDefaultGateway"), force_address=C.flag(raw, "forceAddress"),
            ip_masq=C.flag(raw, "ipMasq"), masq_backend=C.backend(raw), mtu=C.mtu(raw),
            hairpin=C.flag(raw, "hairpinMode"), promisc=C.flag(raw, "promiscMode"),
            vlan=vlan, vlans=vlan_trunk(trunk), vlan_filtering=vlan != 0 or trunk is not None,
            preserve_default_vlan=C.flag(raw, "preserveDefaultVlan"), macspoofchk=C.flag(raw, "macspoofchk"),
            enable_dad=C.flag(raw, "enabledad"),
            disable_container_interface=C.flag(raw, "disableContainerInterface"),
            port_isolation=C.flag(raw, "portIsolation"), mac=C.requested_mac(req),
            layer3=bool(req.config.ipam.get("type")),
        )
        if conf.layer3 and conf.disable_container_interface:
            raise InvalidConfig("cannot use IPAM when disableContainerInterface is set")
        if conf.hairpin and conf.promisc:
            raise InvalidConfig("cannot set hairpin mode and promiscuous mode at the same time")
        if conf.vlan and conf.is_gw:
            config_interface_name(conf.vlan_iface, "bridge (with vlan, for the gateway interface)")
        return conf


def vlan_trunk(raw: Any) -> tuple[int, ...]:
    """`vlanTrunk: [{"minID": 100, "maxID": 200}, {"id": 300}]` -> the sorted set of VLAN IDs."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidConfig("vlanTrunk must be a list")
    vids: set[int] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidConfig("vlanTrunk entries must be objects")
        lo, hi = item.get("minID"), item.get("maxID")
        if (lo is None) != (hi is None):
            raise InvalidConfig("minID and maxID should be configured simultaneously",
                                f"{'minID' if lo is None else 'maxID'} is missing")
        if lo is not None:
            lo = C.integer(item, "minID", 1, 4094)
            hi = C.integer(item, "maxID", 1, 4094)
            if hi < lo:
                raise InvalidConfig("minID is greater than maxID in trunk parameter")
            vids.update(range(lo, hi + 1))
        if item.get("id") is not None:
            vids.add(C.integer(item, "id", 1, 4094))
    return tuple(sorted(vids))


# -- ADD ----------------------------------------------------------------------------------------------------------
def cmd_add(req: Request) -> Result:
    from cnipy import netlink

    conf = BridgeConf.parse(req)
    att = Attachment(conf.network, req.ifname, req.container_id)
    with netlink.session(), ExitStack() as undo, kernel("bridge ADD"):
        _require_new_interface(req)
        allocated = ipam.add(undo, req) if conf.layer3 else None
        br = _setup_bridge(conf)
        veth = _setup_veth(undo, req, conf)
        if conf.macspoofchk:
            undo.callback(quietly, spoofchk.teardown, att)
            spoofchk.setup(att, veth.host, veth.peer_mac)
        interfaces = [Interface(br.name, br.mac), Interface(veth.host, veth.host_mac),
                      Interface(req.ifname, veth.peer_mac, req.netns)]
        result = Result(req.config.cni_version, tuple(interfaces), dns=req.config.dns)
        if allocated is not None:
            ips, routes, gateways = _gateways(conf, allocated)
            _container_side(req, conf, ips, routes)
            if gateways:
                interfaces += _host_side(conf, gateways)
            if conf.ip_masq:
                undo.callback(quietly, masq.teardown, att)  # first: IPv4 may be in place when IPv6 fails
                masq.setup(masq.backend_of(conf.masq_backend), att, [ip.address for ip in ips])
            dns = allocated.dns if req.config.dns.is_empty() else req.config.dns
            result = Result(req.config.cni_version, (), tuple(ips), tuple(routes), dns)
        elif not conf.disable_container_interface:
            netlink.set_link_up(req.netns, req.ifname)
        if not conf.disable_container_interface:
            _wait_port_up(veth.host)
        # MACs may change as ports join the bridge: report what is there now.
        interfaces[0] = Interface(br.name, netlink.link_mac(None, br.name))
        interfaces[1] = Interface(veth.host, netlink.link_mac(None, veth.host))
        result = replace(result, interfaces=tuple(interfaces))
        undo.pop_all()
    return result


def _require_new_interface(req: Request) -> None:
    from cnipy import netlink

    with kernel("looking up the container interface"):
        if netlink.link_exists(req.netns, req.ifname):
            raise InterfaceExists(f"container interface {req.ifname} already exists", req.netns)


def _setup_bridge(conf: BridgeConf) -> LinkInfo:
    from cnipy import netlink

    try:
        br = netlink.ensure_bridge(None, conf.bridge, mtu=conf.mtu, vlan_filtering=conf.vlan_filtering)
    except netlink.NotSupported as exc:
        raise KernelError(f"could not create bridge {conf.bridge}",
                          "bridge VLAN filtering is not supported by this kernel" if conf.vlan_filtering
                          else str(exc)) from exc
    except netlink.WrongKind as exc:
        raise InvalidConfig(str(exc)) from exc
    if conf.promisc and not br.promisc:
        netlink.set_promisc(None, conf.bridge, True)
    with contextlib.suppress(netlink.NetlinkError):  # we own this interface's routes
        netlink.write_sysctl(None, f"net/ipv6/conf/{conf.bridge}/accept_ra", "0")
    # Pin the MAC (an explicitly set address is kept); otherwise the bridge takes the lowest port MAC and
    # changes as pods come and go, and CHECK would see another MAC than the result reported.
    netlink.set_mac(None, conf.bridge, br.mac)
    if not br.up:
        netlink.set_link_up(None, conf.bridge)
    return br


def _setup_veth(undo: ExitStack, req: Request, conf: BridgeConf) -> VethPair:
    from cnipy import netlink

    try:
        veth = netlink.create_veth(None, req.netns, req.ifname, mtu=conf.mtu, peer_mac=conf.mac)
    except netlink.AlreadyExists as exc:
        raise InterfaceExists(f"container interface {req.ifname} already exists", req.netns) from exc
    undo.callback(quietly, netlink.delete_link, req.netns, req.ifname)
    _attach_port(conf, veth.host, conf.vlan, conf.vlans, conf.hairpin, conf.port_isolation)
    return veth


def _attach_port(conf: BridgeConf, port: str, vlan: int, trunk: Sequence[int], hairpin: bool,
                 isolated: bool) -> None:
    from cnipy import netlink

    with contextlib.suppress(netlink.NetlinkError):
        netlink.write_sysctl(None, f"net/ipv6/conf/{port}/accept_ra", "0")
    netlink.set_master(None, port, conf.bridge, up=True)
    if hairpin or isolated:
        netlink.set_port_options(None, port, hairpin=hairpin, isolated=isolated)
    if (vlan or trunk) and not conf.preserve_default_vlan:
        netlink.remove_port_vlans(None, port)
    if vlan:
        netlink.add_port_vlan(None, port, vlan, pvid=True, untagged=True)
    for vid in trunk:
        netlink.add_port_vlan(None, port, vid)
    if trunk and not vlan:
        netlink.add_port_vlan(None, port, 1, pvid=True, untagged=True)  # native VLAN 1, as the reference


def _gateways(conf: BridgeConf, allocated: Result) -> tuple[list[IPConfig], list[Route], list[IPInterface]]:
    """All addresses go on the container interface (index 2); isGateway picks .1 when IPAM gave no gateway;
    isDefaultGateway adds a default route per family unless IPAM already gave one."""
    ips: list[IPConfig] = []
    routes = list(allocated.routes)
    gateways: list[IPInterface] = []
    for ip in allocated.ips:
        gw = ip.gateway
        if gw is None and conf.is_gw:
            gw = ip.address.network.network_address + 1
        ips.append(replace(ip, gateway=gw, interface=2))
        default = ipaddress.ip_network("0.0.0.0/0" if ip.address.version == 4 else "::/0")
        if conf.is_default_gw and not any(r.dst == default and r.gw is not None for r in routes):
            routes.append(Route(default, gw))
        if conf.is_gw and gw is not None:
            gateways.append(ipaddress.ip_interface(f"{gw}/{ip.address.network.prefixlen}"))
    return ips, routes, gateways


def _container_side(req: Request, conf: BridgeConf, ips: Sequence[IPConfig], routes: Sequence[Route]) -> None:
    from cnipy import netlink

    sysctls = {f"net/ipv4/conf/{req.ifname}/arp_notify": "1",
               f"net/ipv6/conf/{req.ifname}/accept_dad": "1" if conf.enable_dad else "0"}
    if conf.enable_dad:
        sysctls[f"net/ipv6/conf/{req.ifname}/enhanced_dad"] = "1"
    with contextlib.suppress(netlink.NetlinkError):  # IPv6 may be off in the pod: as the reference
        netlink.write_sysctls(req.netns, sysctls)
    container.configure(req.netns, req.ifname, ips, routes)


def _host_side(conf: BridgeConf, gateways: Sequence[IPInterface]) -> list[Interface]:
    """The gateway addresses on the bridge (or on its VLAN interface) and forwarding on."""
    from cnipy import netlink

    extra: list[Interface] = []
    target = conf.bridge
    if conf.vlan:
        target = conf.vlan_iface
        extra.append(Interface(target, _ensure_vlan_iface(conf)))
    for gw in gateways:
        _ensure_gateway_address(target, gw, conf.force_address)
    for family in sorted({gw.version for gw in gateways}):
        key = "net/ipv4/ip_forward" if family == 4 else "net/ipv6/conf/all/forwarding"
        if netlink.read_sysctl(None, key) != "1":
            netlink.write_sysctl(None, key, "1")
    return extra


def _ensure_vlan_iface(conf: BridgeConf) -> str:
    """A veth pair `<bridge>.<vlan>` + port, the port an untagged member of the VLAN (the reference's way)."""
    from cnipy import netlink

    try:
        return str(netlink.get_link(None, conf.vlan_iface).mac)
    except netlink.InterfaceNotFound:
        pass
    try:
        pair = netlink.create_veth(None, None, conf.vlan_iface, mtu=conf.mtu)
    except netlink.AlreadyExists:  # a concurrent ADD made it
        return str(netlink.get_link(None, conf.vlan_iface).mac)
    _attach_port(conf, pair.host, conf.vlan, (), hairpin=False, isolated=False)  # the gateway's port
    netlink.set_link_up(None, conf.vlan_iface)
    return pair.peer_mac


def _ensure_gateway_address(dev: str, gw: IPInterface, force: bool) -> None:
    from cnipy import netlink

    for addr in netlink.list_addresses(None, dev, gw.version):
        if addr == gw:
            return
        if gw.version == 4 or addr.network.overlaps(gw.network):
            if not force:
                raise InvalidConfig(f"{dev!r} already has an IP address different from {gw}", str(addr))
            netlink.del_address(None, dev, addr)
    netlink.add_address(None, dev, gw, exist_ok=True)


def _wait_port_up(port: str) -> None:
    from cnipy import netlink

    deadline = time.monotonic() + PORT_UP_TIMEOUT
    delay = PORT_UP_POLL[0]
    while not netlink.link_running(None, port):
        if time.monotonic() >= deadline:
            state = netlink.get_link(None, port).oper_state  # the full link message only to name the state
            if state == "UP":
                return
            raise KernelError(f"bridge port {port} in error state: {state}")
        time.sleep(delay)
        delay = min(2 * delay, PORT_UP_POLL[1])



# -- DEL ----------------------------------------------------------------------------------------------------------
def cmd_del(req: Request) -> None:
    """Idempotent: a missing namespace or interface is fine; rules are found by name, not by address."""
    from cnipy import netlink

    conf = BridgeConf.parse(req)
    att = Attachment(conf.network, req.ifname, req.container_id)
    if req.netns:
        with kernel("deleting the container interface"), \
                contextlib.suppress(netlink.NamespaceNotFound, netlink.InterfaceNotFound):
            netlink.delete_link(req.netns, req.ifname)
    if conf.layer3:
        invoke.delete(req.config.ipam_type, req)
    if conf.macspoofchk:
        spoofchk.teardown(att)
    if conf.layer3 and conf.ip_masq:
        masq.teardown(att)


# -- CHECK --------------------------------------------------------------------------------------------------------
def cmd_check(req: Request) -> None:
    from cnipy import netlink

    conf = BridgeConf.parse(req)
    prev = req.config.prev_result
    if prev is None:
        raise InvalidConfig("required prevResult missing")
    if conf.layer3:
        invoke.check(req.config.ipam_type, req)
    if not netlink.netns_exists(req.netns):
        raise UnknownContainer("network namespace not found", req.netns)
    problems: list[str] = []
    with kernel("bridge CHECK"):
        _check_interfaces(req, conf, prev, problems)
        if not problems:
            mine = [ip for ip in prev.ips if ip.interface is None
                    or (ip.interface < len(prev.interfaces) and prev.interfaces[ip.interface].name == req.ifname)]
            problems += container.check_addresses(req.netns, req.ifname, mine)
            problems += container.check_routes(req.netns, req.ifname, prev.ips, prev.routes)
        if conf.is_gw:
            problems += _check_gateways(conf, prev)
        if conf.layer3 and conf.ip_masq:
            att = Attachment(conf.network, req.ifname, req.container_id)
            problems += masq.missing(masq.backend_of(conf.masq_backend), att, [ip.address for ip in prev.ips])
        if conf.macspoofchk and not spoofchk.present(Attachment(conf.network, req.ifname, req.container_id)):
            problems.append("MAC spoof check rules are missing")
    container.fail_if(problems, f"bridge CHECK of {req.ifname} in {req.netns}")


def _check_interfaces(req: Request, conf: BridgeConf, prev: Result, problems: list[str]) -> None:
    from cnipy import netlink

    brs = [i for i in prev.interfaces if i.name == conf.bridge and not i.sandbox]
    conts = [i for i in prev.interfaces if i.name == req.ifname and i.sandbox]
    if not conts or conts[0].sandbox != req.netns:
        problems.append(f"prevResult has no interface {req.ifname} with sandbox {req.netns}")
        return
    try:
        br = netlink.get_link(None, conf.bridge)
    except netlink.InterfaceNotFound:
        problems.append(f"bridge {conf.bridge} does not exist")
        return
    if br.kind != "bridge":
        problems.append(f"{conf.bridge} is a {br.kind or 'device'}, not a bridge")
    if brs and brs[0].mac and brs[0].mac != br.mac:
        problems.append(f"bridge {conf.bridge} MAC is {br.mac}, prevResult says {brs[0].mac}")
    if br.promisc != conf.promisc:
        problems.append(f"bridge {conf.bridge} promiscuous mode is {br.promisc}, config says {conf.promisc}")
    cont = container.check_veth(req.netns, req.ifname, conts[0].mac, conf.mtu, problems)
    if cont is None:
        return
    if not cont.up and not conf.disable_container_interface:
        problems.append(f"container interface {req.ifname} is down")
    hosts = [i for i in prev.interfaces if i.name not in (conf.bridge, req.ifname) and not i.sandbox]
    port = None
    for cand in hosts:
        with contextlib.suppress(netlink.InterfaceNotFound):
            link = netlink.get_link(None, cand.name)
            if link.kind == "veth" and link.index == cont.peer_index and link.peer_index == cont.index:
                port = link
                if cand.mac and cand.mac != link.mac:
                    problems.append(f"host veth {link.name} MAC is {link.mac}, prevResult says {cand.mac}")
                break
    if port is None:
        problems.append(f"no host veth from prevResult is the peer of {req.ifname}")
        return
    if port.master != br.index:
        problems.append(f"host veth {port.name} is not a port of bridge {conf.bridge}")
        return
    opts = netlink.port_options(None, port.name)
    if opts.hairpin != conf.hairpin:
        problems.append(f"hairpin mode on {port.name} is {opts.hairpin}, config says {conf.hairpin}")
    if opts.isolated != conf.port_isolation:
        problems.append(f"isolation on {port.name} is {opts.isolated}, config says {conf.port_isolation}")


def _check_gateways(conf: BridgeConf, prev: Result) -> list[str]:
    from cnipy import netlink

    dev = conf.vlan_iface if conf.vlan else conf.bridge
    try:
        live = netlink.list_addresses(None, dev)
    except netlink.InterfaceNotFound:
        return [f"gateway interface {dev} does not exist"]
    want = [ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}") for ip in prev.ips
            if ip.gateway is not None]
    return [f"gateway address {gw} is not on {dev}" for gw in want if gw not in live]


# -- GC and STATUS ------------------------------------------------------------------------------------------------
def cmd_gc(req: Request) -> None:
    """Remove masquerade and spoof-check rules, and IPAM allocations, of attachments not in the valid list."""
    conf = BridgeConf.parse(req)
    if req.config.valid_attachments is None:
        raise InvalidConfig("GC needs cni.dev/valid-attachments")
    valid = [(a.container_id, a.ifname) for a in req.config.valid_attachments]
    masq.gc(conf.network, valid)
    spoofchk.gc(conf.network, valid)
    if conf.layer3:
        invoke.gc(req.config.ipam_type, req)


def cmd_status(req: Request) -> None:
    from cnipy.plugins.common.run import which

    conf = BridgeConf.parse(req)
    if conf.layer3 and conf.ip_masq:
        backend = masq.backend_of(conf.masq_backend)
        tool = "iptables-restore" if backend == "iptables" else "nft"
        if which(tool) is None:
            raise PluginNotAvailable(f"ipMasq needs {tool}, which is not installed")
    if conf.macspoofchk and which("nft") is None:
        raise PluginNotAvailable("macspoofchk needs nft, which is not installed")
    if conf.layer3:
        invoke.status(req.config.ipam_type, req)

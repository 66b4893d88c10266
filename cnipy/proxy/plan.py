"""The plan: what every service port should do on this node, independent of the back end.

Endpoint choice follows kube-proxy: ready endpoints, else serving-and-terminating ones (the terminating-endpoint
fallback); Local traffic policies narrow to endpoints on this node. Both renderers consume only this.

One plan is for one IP family (``NodeConfig.ip_family``), as kube-proxy runs one proxier per family: it holds the
service's addresses of that family and the endpoints of its EndpointSlices of that addressType; a dual-stack
service gets a plan in each. A service without a cluster IP of the family has no plan there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from itertools import repeat
from operator import attrgetter, itemgetter
from socket import inet_ntoa
from typing import TYPE_CHECKING, Generic, NamedTuple

from cnipy.proxy.model import (
    ClusterState,
    Endpoint,
    EndpointSlice,
    IPAddress,
    IPNetwork,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    TrafficPolicy,
)

if TYPE_CHECKING:
    from typing_extensions import TypeVar
    _Net = TypeVar("_Net", IPv4Network, IPv6Network, default=IPv4Network)
else:
    from typing import TypeVar
    _Net = TypeVar("_Net", IPv4Network, IPv6Network)


@dataclass(frozen=True)
class NodeConfig(Generic[_Net]):
    """What a proxier of one IP family needs to know about this node; the CIDRs are of that family. A bare
    ``NodeConfig`` annotation means an IPv4 one; ``AnyNodeConfig`` is either."""

    node_name: str
    cluster_cidrs: tuple[_Net, ...] = ()
    masquerade_all: bool = False
    node_port_addresses: tuple[_Net, ...] = ()  # empty: every local address
    localhost_nodeports: bool = False  # IPv4 only (kube-proxy has no localhost NodePorts for IPv6)
    masquerade_mark: int = 0x4000
    # net.netfilter.nf_conntrack_tcp_be_liberal is set: like kube-proxy, no drop of ct state INVALID on forward
    conntrack_tcp_liberal: bool = False
    zone: str | None = None  # this node's topology zone: enables topology-aware hints
    ip_family: int = 4  # 4 or 6: the addresses, endpoint slices and CIDRs this proxier serves
    # The ranges ClusterIPs are allocated from: traffic to an address in them that no service has is dropped
    # (nftables mode, as kube-proxy's; empty: only traffic to a ClusterIP on a port it lacks is rejected).
    service_cidrs: tuple[_Net, ...] = ()
    # How pod ("local") traffic is told from the rest, kube-proxy's --detect-local-mode (DETECT_LOCAL_MODES): by
    # source address in cluster_cidrs (ClusterCIDR) or in node_cidrs, this node's pod CIDRs (NodeCIDR), or by the
    # interface it came in on, pod_interface: a bridge (BridgeInterface) or a name prefix (InterfaceNamePrefix).
    # Local traffic to a ClusterIP is not masqueraded; under externalTrafficPolicy Local it still reaches every
    # endpoint. The renderers read local_cidrs and local_interface.
    detect_local: str = "ClusterCIDR"
    node_cidrs: tuple[_Net, ...] = ()
    pod_interface: str = ""

    def __post_init__(self) -> None:
        if self.ip_family not in (4, 6):
            raise ValueError(f"ip_family must be 4 or 6, not {self.ip_family!r}")
        for what, nets in (("cluster_cidrs", self.cluster_cidrs), ("node_port_addresses", self.node_port_addresses),
                           ("service_cidrs", self.service_cidrs)):
            if any(n.version != self.ip_family for n in nets):
                raise ValueError(f"{what} of an IPv{self.ip_family} NodeConfig must be IPv{self.ip_family}: "
                                 f"{', '.join(map(str, nets))}")
        if self.localhost_nodeports and self.ip_family == 6:
            raise ValueError("localhost NodePorts are IPv4 only")
        self._check_detect_local()

    def _check_detect_local(self) -> None:
        mode = self.detect_local
        if mode not in DETECT_LOCAL_MODES:
            raise ValueError(f"detect_local must be one of {', '.join(DETECT_LOCAL_MODES)}, not {mode!r}")
        if any(n.version != self.ip_family for n in self.node_cidrs):
            raise ValueError(f"node_cidrs of an IPv{self.ip_family} NodeConfig must be IPv{self.ip_family}: "
                             f"{', '.join(map(str, self.node_cidrs))}")
        if (mode == "NodeCIDR") != bool(self.node_cidrs):
            raise ValueError("detect_local NodeCIDR needs node_cidrs, and only it takes them")
        if (mode in ("BridgeInterface", "InterfaceNamePrefix")) != bool(self.pod_interface):
            raise ValueError("detect_local BridgeInterface and InterfaceNamePrefix need pod_interface, and only "
                             "they take it")
        if self.pod_interface and (problem := interface_name_problem(self.pod_interface)):
            raise ValueError(f"pod_interface {self.pod_interface!r} {problem}")

    @property
    def local_cidrs(self) -> tuple[_Net, ...]:
        """The source CIDRs of local (pod) traffic; empty when it is told by interface, or not told at all
        (ClusterCIDR without cluster CIDRs: nothing is masqueraded for coming from off the cluster)."""
        if self.detect_local == "ClusterCIDR":
            return self.cluster_cidrs
        return self.node_cidrs  # empty unless NodeCIDR

    @property
    def local_interface(self) -> tuple[str, bool] | None:
        """(name, match names that start with it) of the interface local traffic comes in on; None when it is
        told by source address. A prefix of 15 characters matches the name itself only: no longer name exists
        (IFNAMSIZ), and nft and iptables refuse the 16-character wildcard ("...*", "...+")."""
        if not self.pod_interface:
            return None
        prefix = self.detect_local == "InterfaceNamePrefix" and len(self.pod_interface) < IFNAMSIZ - 1
        return self.pod_interface, prefix


DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
IFNAMSIZ = 16  # Linux: an interface name has at most IFNAMSIZ - 1 bytes
_NOT_IN_RULES = "*+\"'\\"  # what nft or iptables read as a wildcard or a quote


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an interface name (or name prefix) in our rules, as a phrase; None if it can.
    Linux (dev_valid_name) refuses empty names, '.' and '..', names of IFNAMSIZ bytes or more, '/', ':' and
    whitespace; we also refuse what nft or iptables would read as a wildcard or a quote, and non-printable or
    non-ASCII characters, which no rule text needs."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "is not an interface name (Linux refuses '.' and '..')"
    if len(name.encode()) >= IFNAMSIZ:
        return f"is longer than {IFNAMSIZ - 1} characters (Linux's limit)"
    if bad := sorted({c for c in name if c in "/:" or c.isspace()}):
        return f"contains {' '.join(map(repr, bad))}, which Linux refuses in an interface name"
    if bad := sorted({c for c in name if c in _NOT_IN_RULES or not c.isprintable() or not c.isascii()}):
        return (f"contains {' '.join(map(repr, bad))}: give printable ASCII without {_NOT_IN_RULES}, which nft "
                "and iptables read as wildcards or quotes")
    return None


AnyNodeConfig = NodeConfig[IPv4Network] | NodeConfig[IPv6Network]


def ipv4_text(ip: IPAddress) -> str:
    """str(ip) of an IPv4 address, several times faster: a full sync formats ~10 addresses per service.
    (Typed for any address because plans hold either family; an IPv4 proxier's plans hold only IPv4.)"""
    return inet_ntoa(int(ip).to_bytes(4, "big"))


class Backend(NamedTuple):
    """An endpoint address and port (a tuple: 100k of them are built per full sync of 10k services)."""

    ip: IPAddress
    port: int
    local: bool = False

    def __str__(self) -> str:
        return f"{ipv4_text(self.ip)}:{self.port}" if self.ip.version == 4 else f"[{self.ip}]:{self.port}"


class PortPlan(NamedTuple):
    """One service port. ``*_backends`` are sorted, so slot i of a numgen map is backend i.
    (A tuple, like Backend: a frozen dataclass of 14 fields costs 1-2 us to build, 10-20 ms per full sync
    of 10k services.)"""

    name: str  # kube-proxy's ServicePortName: "ns/name:port" (":port" omitted when the port has no name)
    protocol: Protocol
    port: int
    cluster_ips: tuple[IPAddress, ...]  # never empty; all of the plan's family
    node_port: int | None
    external_ips: tuple[IPAddress, ...]  # spec.externalIPs
    load_balancer_ips: tuple[IPAddress, ...]
    source_ranges: tuple[IPNetwork, ...]
    affinity_timeout: int | None
    internal_local: bool
    external_local: bool
    all_backends: tuple[Backend, ...]  # every usable endpoint (ready, else serving+terminating)
    local_backends: tuple[Backend, ...]  # usable endpoints on this node
    health_check_node_port: int | None = None

    @property
    def internal_backends(self) -> tuple[Backend, ...]:
        return self.local_backends if self.internal_local else self.all_backends

    @property
    def external_backends(self) -> tuple[Backend, ...]:
        return self.local_backends if self.external_local else self.all_backends

    @property
    def has_external(self) -> bool:
        return self.node_port is not None or bool(self.external_ips or self.load_balancer_ips)


@dataclass(frozen=True)
class Plan:
    config: AnyNodeConfig
    ports: tuple[PortPlan, ...]

    def by_name(self) -> dict[str, PortPlan]:
        return {p.name: p for p in self.ports}


def port_name(svc: Service, sp: ServicePort) -> str:
    return f"{svc.key}:{sp.name}" if sp.name else str(svc.key)


# A candidate endpoint: (address as int << 16 | port: the sort key), address, port, on this node, endpoint.
# Plain tuples sorted on one integer: IPv4Address comparison and hashing are slow Python code, and a full
# sync of 10k services handles 100k endpoints.
_Row = tuple[int, IPAddress, int, bool, Endpoint]
_SORT_KEY = itemgetter(0)
_BACKEND_FIELDS = itemgetter(1, 2, 3)
_LOCAL = itemgetter(3)
_ENDPOINT = itemgetter(4)
_READY = attrgetter("ready")
_new_backend = tuple.__new__  # Backend(...) without NamedTuple's Python-level __new__


def _usable(rows: list[_Row]) -> tuple[Backend, ...]:
    """Ready endpoints, else serving-and-terminating ones; sorted by address and port, duplicates dropped."""
    if all(map(_READY, map(_ENDPOINT, rows))):  # the usual case, checked without a Python-level loop
        ready = sorted(rows, key=_SORT_KEY)  # stable: of duplicates, the first listed wins
    else:
        ready = [r for r in rows if r[4].ready]
        if not ready:  # terminating-endpoint fallback: still serving, but going away
            ready = [r for r in rows if r[4].serving and r[4].terminating]
        ready.sort(key=_SORT_KEY)
    if len(set(map(_SORT_KEY, ready))) < len(ready):
        last = -1
        ready = [r for r in ready if r[0] != last and (last := r[0]) >= 0]
    return tuple(map(_new_backend, repeat(Backend), map(_BACKEND_FIELDS, ready)))


def _by_hints(rows: list[_Row], zone: str) -> list[_Row]:
    """Topology-aware routing, as kube-proxy does it: when every ready endpoint carries zone hints and some
    are meant for this node's zone, cluster-wide traffic goes only to those; otherwise hints are ignored."""
    ready = [r for r in rows if r[4].ready]
    if not ready or any(not r[4].hint_zones for r in ready):
        return rows
    mine = [r for r in ready if zone in r[4].hint_zones]
    return mine or rows


# Per family: the address class, the network class, the EndpointSlice addressType.
_FAMILIES: dict[int, tuple[type[IPAddress], type[IPNetwork], str]] = {
    4: (IPv4Address, IPv4Network, "IPv4"), 6: (IPv6Address, IPv6Network, "IPv6")}


def _endpoints_for(sp: ServicePort, slices: Iterable[EndpointSlice], node: str,
                   address_cls: type[IPAddress] = IPv4Address, address_type: str = "IPv4") -> list[_Row]:
    out: list[_Row] = []
    for sl in slices:
        if sl.address_type != address_type:
            continue
        for p in sl.ports:
            if p.name == sp.name and p.protocol is sp.protocol:
                port = p.port
                out += [(int(ip) << 16 | port, ip, port, ep.node_name == node, ep)
                        for ep in sl.endpoints if isinstance(ip := ep.addresses[0], address_cls)]
                break
    return out


def _of(cls: type[IPAddress], addrs: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple([a for a in addrs if isinstance(a, cls)]) if addrs else ()


def plan_service(svc: Service, slices: Iterable[EndpointSlice], config: AnyNodeConfig) -> tuple[PortPlan, ...]:
    address_cls, network_cls, address_type = _FAMILIES[config.ip_family]
    cluster_ips = _of(address_cls, svc.cluster_ips)
    if not cluster_ips:
        return ()
    # Most services have no external addresses or source ranges: skip the calls for those.
    external_ips = _of(address_cls, svc.external_ips) if svc.external_ips else ()
    lb_ips = _of(address_cls, svc.load_balancer_ips) if svc.load_balancer_ips else ()
    ranges = tuple([n for n in svc.load_balancer_source_ranges if isinstance(n, network_cls)]) \
        if svc.load_balancer_source_ranges else ()
    internal_local = svc.internal_traffic_policy is TrafficPolicy.LOCAL
    etp_local = svc.external_traffic_policy is TrafficPolicy.LOCAL
    external_local = etp_local and svc.is_external
    hc_port = svc.health_check_node_port if etp_local else None
    key = f"{svc.key.namespace}/{svc.key.name}"
    node, zone = config.node_name, config.zone
    out = []
    for sp in svc.ports:
        rows = _endpoints_for(sp, slices, node, address_cls, address_type)
        local = [r for r in rows if r[3]] if any(map(_LOCAL, rows)) else None
        out.append(PortPlan(  # positional: keyword arguments cost a dict per call
            f"{key}:{sp.name}" if sp.name else key, sp.protocol, sp.port, cluster_ips, sp.node_port,
            external_ips, lb_ips, ranges, svc.affinity_timeout, internal_local, external_local,
            _usable(rows if zone is None else _by_hints(rows, zone)) if rows else (),
            _usable(local) if local else (), hc_port))
    return tuple(out)


ServicePlans = Mapping[ServiceKey, tuple[PortPlan, ...]]


def build_plans(state: ClusterState, config: AnyNodeConfig,
                keys: AbstractSet[ServiceKey] | None = None) -> dict[ServiceKey, tuple[PortPlan, ...]]:
    """Plans for ``keys`` (all services when None, in the state's order: build_state sorts it); a key whose
    service is gone maps to ()."""
    services, slices = state.services, state.slices
    if keys is None:
        return {key: plan_service(svc, slices.get(key, ()), config) for key, svc in services.items()}
    out = {}
    for key in sorted(keys):
        svc = services.get(key)
        out[key] = () if svc is None else plan_service(svc, slices.get(key, ()), config)
    return out


def changed_services(old: ClusterState, new: ClusterState) -> set[ServiceKey]:
    """Services whose definition or endpoint slices differ between two states."""
    keys = set(old.services) | set(new.services)
    os_, ns, ol, nl = old.services, new.services, old.slices, new.slices
    # Identity first: sources hand the unchanged objects over again, and a dataclass compares in Python code.
    return {k for k in keys
            if ((a := os_.get(k)) is not (b := ns.get(k)) and a != b)
            or ((c := ol.get(k, ())) is not (d := nl.get(k, ())) and c != d)}


def build_plan(state: ClusterState, config: AnyNodeConfig) -> Plan:
    return Plan(config, tuple(p for ports in build_plans(state, config).values() for p in ports))


def build_family_plans(state: ClusterState, configs: Sequence[AnyNodeConfig],
                       keys: AbstractSet[ServiceKey] | None = None) -> dict[ServiceKey, tuple[PortPlan, ...]]:
    """``build_plans`` for one config per IP family (a dual-stack node): a service's port plans of every family,
    in the order of ``configs``; ``plan_family`` tells them apart."""
    if len(configs) == 1:
        return build_plans(state, configs[0], keys)
    per_family = [build_plans(state, c, keys) for c in configs]
    return {key: tuple(p for plans in per_family for p in plans[key]) for key in per_family[0]}


def plan_family(p: PortPlan) -> int:
    """4 or 6: the family of a port plan (its cluster IPs are all of it)."""
    return p.cluster_ips[0].version

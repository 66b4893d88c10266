"""The plan: what every service port should do on this node, independent of the back end.

Endpoint choice follows kube-proxy: ready endpoints, else serving-and-terminating ones (the terminating-endpoint
fallback); Local traffic policies narrow to endpoints on this node. Both renderers consume only this.
IPv4 only: IPv6 addresses in the model are ignored here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from itertools import repeat
from operator import attrgetter, itemgetter
from socket import inet_ntoa
from typing import NamedTuple

from cnipy.proxy.model import (
    ClusterState,
    Endpoint,
    EndpointSlice,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    TrafficPolicy,
)


@dataclass(frozen=True)
class NodeConfig:
    node_name: str
    cluster_cidrs: tuple[IPv4Network, ...] = ()
    masquerade_all: bool = False
    node_port_addresses: tuple[IPv4Network, ...] = ()  # empty: every local address
    localhost_nodeports: bool = False
    masquerade_mark: int = 0x4000
    # net.netfilter.nf_conntrack_tcp_be_liberal is set: like kube-proxy, no drop of ct state INVALID on forward
    conntrack_tcp_liberal: bool = False
    zone: str | None = None  # this node's topology zone: enables topology-aware hints


def ipv4_text(ip: IPv4Address) -> str:
    """str(ip), several times faster: a full sync formats ~10 addresses per service."""
    return inet_ntoa(int(ip).to_bytes(4, "big"))


class Backend(NamedTuple):
    """An endpoint address and port (a tuple: 100k of them are built per full sync of 10k services)."""

    ip: IPv4Address
    port: int
    local: bool = False

    def __str__(self) -> str:
        return f"{ipv4_text(self.ip)}:{self.port}"


class PortPlan(NamedTuple):
    """One service port. ``*_backends`` are sorted, so slot i of a numgen map is backend i.
    (A tuple, like Backend: a frozen dataclass of 14 fields costs 1-2 us to build, 10-20 ms per full sync
    of 10k services.)"""

    name: str  # kube-proxy's ServicePortName: "ns/name:port" (":port" omitted when the port has no name)
    protocol: Protocol
    port: int
    cluster_ips: tuple[IPv4Address, ...]
    node_port: int | None
    external_ips: tuple[IPv4Address, ...]  # spec.externalIPs
    load_balancer_ips: tuple[IPv4Address, ...]
    source_ranges: tuple[IPv4Network, ...]
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
    config: NodeConfig
    ports: tuple[PortPlan, ...]

    def by_name(self) -> dict[str, PortPlan]:
        return {p.name: p for p in self.ports}


def port_name(svc: Service, sp: ServicePort) -> str:
    return f"{svc.key}:{sp.name}" if sp.name else str(svc.key)


# A candidate endpoint: (address as int << 16 | port: the sort key), address, port, on this node, endpoint.
# Plain tuples sorted on one integer: IPv4Address comparison and hashing are slow Python code, and a full
# sync of 10k services handles 100k endpoints.
_Row = tuple[int, IPv4Address, int, bool, Endpoint]
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


def _endpoints_for(sp: ServicePort, slices: Iterable[EndpointSlice], node: str) -> list[_Row]:
    out: list[_Row] = []
    for sl in slices:
        if sl.address_type != "IPv4":
            continue
        for p in sl.ports:
            if p.name == sp.name and p.protocol is sp.protocol:
                port = p.port
                out += [(int(ip) << 16 | port, ip, port, ep.node_name == node, ep)
                        for ep in sl.endpoints if isinstance(ip := ep.addresses[0], IPv4Address)]
                break
    return out


def _v4(addrs: Iterable[object]) -> tuple[IPv4Address, ...]:
    return tuple([a for a in addrs if isinstance(a, IPv4Address)]) if addrs else ()


def plan_service(svc: Service, slices: Iterable[EndpointSlice], config: NodeConfig) -> tuple[PortPlan, ...]:
    cluster_ips = _v4(svc.cluster_ips)
    if not cluster_ips:
        return ()
    # Most services have no external addresses or source ranges: skip the calls for those.
    external_ips = _v4(svc.external_ips) if svc.external_ips else ()
    lb_ips = _v4(svc.load_balancer_ips) if svc.load_balancer_ips else ()
    ranges = tuple([n for n in svc.load_balancer_source_ranges if isinstance(n, IPv4Network)]) \
        if svc.load_balancer_source_ranges else ()
    internal_local = svc.internal_traffic_policy is TrafficPolicy.LOCAL
    etp_local = svc.external_traffic_policy is TrafficPolicy.LOCAL
    external_local = etp_local and svc.is_external
    hc_port = svc.health_check_node_port if etp_local else None
    key = f"{svc.key.namespace}/{svc.key.name}"
    node, zone = config.node_name, config.zone
    out = []
    for sp in svc.ports:
        rows = _endpoints_for(sp, slices, node)
        local = [r for r in rows if r[3]] if any(map(_LOCAL, rows)) else None
        out.append(PortPlan(  # positional: keyword arguments cost a dict per call
            f"{key}:{sp.name}" if sp.name else key, sp.protocol, sp.port, cluster_ips, sp.node_port,
            external_ips, lb_ips, ranges, svc.affinity_timeout, internal_local, external_local,
            _usable(rows if zone is None else _by_hints(rows, zone)) if rows else (),
            _usable(local) if local else (), hc_port))
    return tuple(out)


ServicePlans = Mapping[ServiceKey, tuple[PortPlan, ...]]


def build_plans(state: ClusterState, config: NodeConfig,
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
    return {k for k in keys
            if old.services.get(k) != new.services.get(k) or old.slices.get(k, ()) != new.slices.get(k, ())}


def build_plan(state: ClusterState, config: NodeConfig) -> Plan:
    return Plan(config, tuple(p for ports in build_plans(state, config).values() for p in ports))

"""The plan: what every service port should do on this node, independent of the back end.

Endpoint choice follows kube-proxy: ready endpoints, else serving-and-terminating ones (the terminating-endpoint
fallback); Local traffic policies narrow to endpoints on this node. Both renderers consume only this.
IPv4 only: IPv6 addresses in the model are ignored here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from socket import inet_ntoa
from operator import attrgetter, itemgetter
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


@dataclass(frozen=True)
class PortPlan:
    """One service port. ``*_backends`` are sorted, so slot i of a numgen map is backend i."""

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
_new_backend = tuple.__new__  # Backend(...) without NamedTuple's Python-level __new__


def _usable(rows: list[_Row]) -> tuple[Backend, ...]:
    """Ready endpoints, else serving-and-terminating ones; sorted by address and port, duplicates dropped."""
    ready = [r for r in rows if r[4].ready]
    if not ready:  # terminating-endpoint fallback: still serving, but going away
        ready = [r for r in rows if r[4].serving and r[4].terminating]
    ready.sort(key=_SORT_KEY)  # stable: of duplicates, the first listed wins
    if len({r[0] for r in ready}) < len(ready):
        last = -1
        ready = [r for r in ready if r[0] != last and (last := r[0]) >= 0]
    return tuple([_new_backend(Backend, (ip, port, local)) for _, ip, port, local, _ in ready])


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
    etp_local = svc.external_traffic_policy is TrafficPolicy.LOCAL
    common = {
        "cluster_ips": cluster_ips,
        "external_ips": _v4(svc.external_ips),
        "load_balancer_ips": _v4(svc.load_balancer_ips),
        "source_ranges": tuple([n for n in svc.load_balancer_source_ranges if isinstance(n, IPv4Network)]),
        "affinity_timeout": svc.affinity_timeout,
        "internal_local": svc.internal_traffic_policy is TrafficPolicy.LOCAL,
        "external_local": etp_local and svc.is_external,
        "health_check_node_port": svc.health_check_node_port if etp_local else None,
    }
    key = str(svc.key)
    node, zone = config.node_name, config.zone
    out = []
    for sp in svc.ports:
        rows = _endpoints_for(sp, slices, node)
        local = [r for r in rows if r[3]]
        out.append(PortPlan(
            name=f"{key}:{sp.name}" if sp.name else key,
            protocol=sp.protocol,
            port=sp.port,
            node_port=sp.node_port,
            all_backends=_usable(rows if zone is None else _by_hints(rows, zone)) if rows else (),
            local_backends=_usable(local) if local else (),
            **common,
        ))
    return tuple(out)


ServicePlans = Mapping[ServiceKey, tuple[PortPlan, ...]]
_KEY_ORDER = attrgetter("namespace", "name")


def build_plans(state: ClusterState, config: NodeConfig,
                keys: AbstractSet[ServiceKey] | None = None) -> dict[ServiceKey, tuple[PortPlan, ...]]:
    """Plans for ``keys`` (all services when None); a key whose service is gone maps to ()."""
    # Sorted on (namespace, name) tuples: ServiceKey's own ordering is Python code, slow for 10k keys.
    wanted = sorted(state.services if keys is None else keys, key=_KEY_ORDER)
    services, slices = state.services, state.slices
    out = {}
    for key in wanted:
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

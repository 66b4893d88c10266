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


def _usable(candidates: Sequence[tuple[Endpoint, Backend]]) -> tuple[Backend, ...]:
    """Ready endpoints, else serving-and-terminating ones; sorted by address and port, duplicates dropped
    (sorted on integer keys: IPv4Address hashing and comparison are slow Python code, 100k per full sync)."""
    ready = [b for e, b in candidates if e.ready]
    if not ready:  # terminating-endpoint fallback: still serving, but going away
        ready = [b for e, b in candidates if e.serving and e.terminating]
    keyed = sorted((int(b.ip), b.port, i) for i, b in enumerate(ready))
    out = []
    last = None
    for ip, port, i in keyed:
        if (ip, port) != last:
            out.append(ready[i])
            last = (ip, port)
    return tuple(out)


def _by_hints(candidates: list[tuple[Endpoint, Backend]], zone: str | None) -> list[tuple[Endpoint, Backend]]:
    """Topology-aware routing, as kube-proxy does it: when every ready endpoint carries zone hints and some
    are meant for this node's zone, cluster-wide traffic goes only to those; otherwise hints are ignored."""
    if zone is None:
        return candidates
    ready = [(e, b) for e, b in candidates if e.ready]
    if not ready or any(not e.hint_zones for e, _ in ready):
        return candidates
    mine = [(e, b) for e, b in ready if zone in e.hint_zones]
    return mine or candidates


def _endpoints_for(sp: ServicePort, slices: Iterable[EndpointSlice], node: str) -> list[tuple[Endpoint, Backend]]:
    out = []
    for sl in slices:
        if sl.address_type != "IPv4":
            continue
        port = next((p.port for p in sl.ports if p.name == sp.name and p.protocol is sp.protocol), None)
        if port is None:
            continue
        for ep in sl.endpoints:
            ip = ep.addresses[0]
            if isinstance(ip, IPv4Address):
                out.append((ep, Backend(ip, port, local=ep.node_name == node)))
    return out


def _v4(addrs: Iterable[object]) -> tuple[IPv4Address, ...]:
    return tuple(a for a in addrs if isinstance(a, IPv4Address))


def plan_service(svc: Service, slices: Iterable[EndpointSlice], config: NodeConfig) -> tuple[PortPlan, ...]:
    cluster_ips = _v4(svc.cluster_ips)
    if not cluster_ips:
        return ()
    slices = tuple(slices)
    out = []
    for sp in svc.ports:
        cands = _endpoints_for(sp, slices, config.node_name)
        local = [(e, b) for e, b in cands if b.local]
        out.append(PortPlan(
            name=port_name(svc, sp),
            protocol=sp.protocol,
            port=sp.port,
            cluster_ips=cluster_ips,
            node_port=sp.node_port,
            external_ips=_v4(svc.external_ips),
            load_balancer_ips=_v4(svc.load_balancer_ips),
            source_ranges=tuple(n for n in svc.load_balancer_source_ranges if isinstance(n, IPv4Network)),
            affinity_timeout=svc.affinity_timeout,
            internal_local=svc.internal_traffic_policy is TrafficPolicy.LOCAL,
            external_local=svc.external_traffic_policy is TrafficPolicy.LOCAL and svc.is_external,
            all_backends=_usable(_by_hints(cands, config.zone)),
            local_backends=_usable(local),
            health_check_node_port=svc.health_check_node_port
            if svc.external_traffic_policy is TrafficPolicy.LOCAL else None,
        ))
    return tuple(out)


ServicePlans = Mapping[ServiceKey, tuple[PortPlan, ...]]


def build_plans(state: ClusterState, config: NodeConfig,
                keys: AbstractSet[ServiceKey] | None = None) -> dict[ServiceKey, tuple[PortPlan, ...]]:
    """Plans for ``keys`` (all services when None); a key whose service is gone maps to ()."""
    wanted = sorted(state.services) if keys is None else sorted(keys)
    out = {}
    for key in wanted:
        svc = state.services.get(key)
        out[key] = () if svc is None else plan_service(svc, state.slices.get(key, ()), config)
    return out


def changed_services(old: ClusterState, new: ClusterState) -> set[ServiceKey]:
    """Services whose definition or endpoint slices differ between two states."""
    keys = set(old.services) | set(new.services)
    return {k for k in keys
            if old.services.get(k) != new.services.get(k) or old.slices.get(k, ()) != new.slices.get(k, ())}


def build_plan(state: ClusterState, config: NodeConfig) -> Plan:
    return Plan(config, tuple(p for ports in build_plans(state, config).values() for p in ports))

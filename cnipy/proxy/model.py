"""The service model: frozen values built on ``ipaddress`` types, independent of where they came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import NamedTuple

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, Kubernetes' default for ClientIP affinity


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class TrafficPolicy(StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


class ServiceKey(NamedTuple):
    """Ordered by namespace, then name. A tuple: every map of the proxy is keyed by it, and a frozen
    dataclass hashes and compares in Python code (a full sync of 10k services hashes keys 30k times)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    target_port: int | str  # a number, or the name of a container port
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    key: ServiceKey
    type: ServiceType
    cluster_ips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    affinity_timeout: int | None = None  # seconds when sessionAffinity is ClientIP, else None
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: int | None = None
    selector: tuple[tuple[str, str], ...] | None = None  # None: endpoints come from EndpointSlices

    @property
    def is_external(self) -> bool:
        return self.type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER) or bool(self.external_ips)


@dataclass(frozen=True)
class EndpointPort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    hint_zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]
    address_type: str = "IPv4"

    @property
    def service(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service_name)


@dataclass(frozen=True)
class ContainerPort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[IPAddress, ...]
    node_name: str | None = None
    ready: bool = True
    terminating: bool = False
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True)
class ClusterState:
    """Everything the proxy needs: services and the endpoint slices of each (by service)."""

    services: Mapping[ServiceKey, Service] = field(default_factory=dict)
    slices: Mapping[ServiceKey, tuple[EndpointSlice, ...]] = field(default_factory=dict)

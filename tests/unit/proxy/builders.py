"""Small builders for services and endpoint slices, shared by the unit and netns proxy tests."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

from cnipy.proxy.model import (
    ClusterState,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)
from cnipy.proxy.plan import NodeConfig


def service(name: str, cluster_ip: str, port: int = 80, *, protocol: str = "TCP", target: int = 8080,
            namespace: str = "default", type: str = "ClusterIP", node_port: int | None = None,
            external_ips: tuple[str, ...] = (), lb_ips: tuple[str, ...] = (),
            source_ranges: tuple[str, ...] = (), affinity: int | None = None, etp: str = "Cluster",
            itp: str = "Cluster", hc_port: int | None = None, port_name: str = "") -> Service:
    return Service(
        key=ServiceKey(namespace, name),
        type=ServiceType(type),
        cluster_ips=(ip_address(cluster_ip),),
        ports=(ServicePort(port_name, Protocol(protocol), port, target, node_port),),
        external_ips=tuple(ip_address(a) for a in external_ips),
        load_balancer_ips=tuple(ip_address(a) for a in lb_ips),
        load_balancer_source_ranges=tuple(ip_network(r) for r in source_ranges),
        affinity_timeout=affinity,
        external_traffic_policy=TrafficPolicy(etp),
        internal_traffic_policy=TrafficPolicy(itp),
        health_check_node_port=hc_port,
    )


def endpoints(svc: Service, *ips: str, port: int = 8080, node: str = "node1", protocol: str | None = None,
              terminating: tuple[str, ...] = (), not_ready: tuple[str, ...] = (),
              nodes: dict[str, str] | None = None) -> EndpointSlice:
    eps = []
    for ip in ips:
        term = ip in terminating
        ready = ip not in not_ready and not term
        eps.append(Endpoint((ip_address(ip),), ready=ready, serving=ip not in not_ready, terminating=term,
                            node_name=(nodes or {}).get(ip, node)))
    proto = Protocol(protocol) if protocol else svc.ports[0].protocol
    family = "IPv6" if eps and eps[0].addresses[0].version == 6 else "IPv4"
    name = f"{svc.key.name}-abc" + ("-v6" if family == "IPv6" else "")
    return EndpointSlice(svc.key.namespace, name, svc.key.name, tuple(eps),
                         (EndpointPort(svc.ports[0].name, proto, port),), family)


def state(*pairs: tuple[Service, EndpointSlice | None]) -> ClusterState:
    return ClusterState(services={s.key: s for s, _ in pairs},
                        slices={s.key: (sl,) for s, sl in pairs if sl is not None})


def config(**kw: object) -> NodeConfig:
    base: dict[str, object] = {"node_name": "node1", "cluster_cidrs": (IPv4Network("10.244.0.0/16"),)}
    base.update(kw)
    return NodeConfig(**base)  # type: ignore[arg-type]


def scale_state(n_services: int, n_endpoints: int) -> ClusterState:
    """n services on 10.96.x.y:80 with n endpoints each on 10.244.x.y:8080 (the benchmark's shape)."""
    services, slices = {}, {}
    base_svc, base_ep = int(IPv4Address("10.96.0.0")), int(IPv4Address("10.244.0.0"))
    for i in range(n_services):
        s = service(f"svc{i}", str(IPv4Address(base_svc + i + 1)))
        eps = tuple(str(IPv4Address(base_ep + i * n_endpoints + j + 1)) for j in range(n_endpoints))
        services[s.key] = s
        slices[s.key] = (endpoints(s, *eps),)
    return ClusterState(services=services, slices=slices)

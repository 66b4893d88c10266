"""Kubernetes API objects (decoded JSON/YAML) -> model values, and Pods + selectors -> EndpointSlices.

Each parser raises ``FieldError`` naming the offending field path; callers attach the file or API path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from cnipy.proxy.errors import SelectorError
from cnipy.proxy.labels import Selector, validate_labels
from cnipy.proxy.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    ClusterState,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    IPNetwork,
    Pod,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _map(obj: Any, path: str) -> Mapping[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise FieldError(path, "must be a map")
    return obj


def _list(obj: Any, path: str) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise FieldError(path, "must be a list")
    return obj


def _str(obj: Any, path: str, *, required: bool = True) -> str:
    if obj is None and not required:
        return ""
    if not isinstance(obj, str) or (required and not obj):
        raise FieldError(path, "must be a non-empty string")
    return obj


def _port(obj: Any, path: str) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or not 1 <= obj <= 65535:
        raise FieldError(path, f"must be a port number 1-65535, got {obj!r}")
    return obj


def _ip(obj: Any, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(_str(obj, path))
    except ValueError as exc:
        raise FieldError(path, f"not an IP address: {obj!r}") from exc


def _net(obj: Any, path: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(_str(obj, path).strip(), strict=False)
    except ValueError as exc:
        raise FieldError(path, f"not a CIDR: {obj!r}") from exc


def _enum(cls: Any, obj: Any, path: str, default: Any) -> Any:
    if obj is None:
        return default
    try:
        return cls(obj)
    except ValueError as exc:
        raise FieldError(path, f"must be one of {[m.value for m in cls]}, got {obj!r}") from exc


def _protocol(obj: Any, path: str) -> Protocol:
    result: Protocol = _enum(Protocol, obj, path, Protocol.TCP)
    return result


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _map(obj.get("metadata"), "metadata")
    return _str(meta.get("namespace") or "default", "metadata.namespace"), _str(meta.get("name"), "metadata.name")


def parse_service(obj: Mapping[str, Any]) -> Service | None:
    """A v1 Service. Returns None for services the proxy ignores (ExternalName, headless)."""
    namespace, name = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    if spec.get("type") == "ExternalName":
        return None
    svc_type: ServiceType = _enum(ServiceType, spec.get("type"), "spec.type", ServiceType.CLUSTER_IP)
    raw_ips = _list(spec.get("clusterIPs"), "spec.clusterIPs") or (
        [spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not raw_ips or raw_ips[0] == "None":
        return None  # headless: no virtual IP to proxy
    cluster_ips = tuple(_ip(ip, f"spec.clusterIPs[{i}]") for i, ip in enumerate(raw_ips))
    ports = []
    raw_ports = _list(spec.get("ports"), "spec.ports")
    for i, p in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        p = _map(p, path)
        pname = _str(p.get("name"), f"{path}.name", required=len(raw_ports) > 1)
        port = _port(p.get("port"), f"{path}.port")
        target = p.get("targetPort", port)
        if isinstance(target, str) and not target.isdigit():
            target_port: int | str = _str(target, f"{path}.targetPort")
        else:
            target_port = _port(int(target) if isinstance(target, str) else target, f"{path}.targetPort")
        node_port = p.get("nodePort")
        if svc_type is ServiceType.CLUSTER_IP:
            node_port = None
        elif node_port is not None:
            node_port = _port(node_port, f"{path}.nodePort")
        ports.append(ServicePort(pname, _protocol(p.get("protocol"), f"{path}.protocol"), port, target_port,
                                 node_port))
    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = _map(_map(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig").get("clientIP"),
                   "spec.sessionAffinityConfig.clientIP")
        timeout = cfg.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 86400:
            raise FieldError("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "must be 1-86400")
        affinity = timeout
    elif spec.get("sessionAffinity") not in (None, "None"):
        raise FieldError("spec.sessionAffinity", "must be None or ClientIP")
    lb_ips = tuple(_ip(ing.get("ip"), f"status.loadBalancer.ingress[{i}].ip")
                   for i, ing in enumerate(_list(_map(_map(obj.get("status"), "status").get("loadBalancer"),
                                                       "status.loadBalancer").get("ingress"),
                                                  "status.loadBalancer.ingress"))
                   if isinstance(ing, Mapping) and ing.get("ip"))
    if svc_type is not ServiceType.LOAD_BALANCER:
        lb_ips = ()
    hc = spec.get("healthCheckNodePort")
    selector = spec.get("selector")
    try:
        sel = None if selector is None else tuple(sorted(validate_labels(_map(selector, "spec.selector")).items()))
    except SelectorError as exc:
        raise FieldError("spec.selector", str(exc)) from exc
    return Service(
        key=ServiceKey(namespace, name),
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        external_ips=tuple(_ip(ip, f"spec.externalIPs[{i}]")
                           for i, ip in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs"))),
        load_balancer_ips=lb_ips,
        load_balancer_source_ranges=tuple(
            _net(r, f"spec.loadBalancerSourceRanges[{i}]")
            for i, r in enumerate(_list(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges"))),
        affinity_timeout=affinity,
        external_traffic_policy=_enum(TrafficPolicy, spec.get("externalTrafficPolicy"),
                                      "spec.externalTrafficPolicy", TrafficPolicy.CLUSTER),
        internal_traffic_policy=_enum(TrafficPolicy, spec.get("internalTrafficPolicy"),
                                      "spec.internalTrafficPolicy", TrafficPolicy.CLUSTER),
        health_check_node_port=None if hc is None else _port(hc, "spec.healthCheckNodePort"),
        selector=sel,
    )


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice; the owning service comes from the kubernetes.io/service-name label."""
    namespace, name = _meta(obj)
    labels = _map(_map(obj.get("metadata"), "metadata").get("labels"), "metadata.labels")
    service = _str(labels.get("kubernetes.io/service-name"), "metadata.labels[kubernetes.io/service-name]")
    address_type = _str(obj.get("addressType") or "IPv4", "addressType")
    endpoints = []
    for i, e in enumerate(_list(obj.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        e = _map(e, path)
        cond = _map(e.get("conditions"), f"{path}.conditions")
        ready = cond.get("ready") is not False  # nil means ready, as Kubernetes says
        addresses = tuple(_ip(a, f"{path}.addresses[{j}]")
                          for j, a in enumerate(_list(e.get("addresses"), f"{path}.addresses")))
        if not addresses:
            raise FieldError(f"{path}.addresses", "needs at least one address")
        hints = _map(e.get("hints"), f"{path}.hints")
        endpoints.append(Endpoint(
            addresses=addresses,
            ready=ready,
            serving=cond.get("serving", ready) is not False,
            terminating=cond.get("terminating") is True,
            node_name=e.get("nodeName"),
            zone=e.get("zone"),
            hint_zones=tuple(str(_map(z, f"{path}.hints.forZones").get("name"))
                             for z in _list(hints.get("forZones"), f"{path}.hints.forZones")),
        ))
    ports = []
    for i, p in enumerate(_list(obj.get("ports"), "ports")):
        p = _map(p, f"ports[{i}]")
        ports.append(EndpointPort(_str(p.get("name"), f"ports[{i}].name", required=False),
                                  _protocol(p.get("protocol"), f"ports[{i}].protocol"),
                                  _port(p.get("port"), f"ports[{i}].port")))
    return EndpointSlice(namespace, name, service, tuple(endpoints), tuple(ports), address_type)


def parse_pod(obj: Mapping[str, Any]) -> Pod:
    namespace, name = _meta(obj)
    meta = _map(obj.get("metadata"), "metadata")
    try:
        labels = validate_labels({str(k): str(v) for k, v in _map(meta.get("labels"), "metadata.labels").items()})
    except SelectorError as exc:
        raise FieldError("metadata.labels", str(exc)) from exc
    spec = _map(obj.get("spec"), "spec")
    status = _map(obj.get("status"), "status")
    ips = [ip.get("ip") for ip in _list(status.get("podIPs"), "status.podIPs") if isinstance(ip, Mapping)]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    ready = any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
                for c in _list(status.get("conditions"), "status.conditions")) \
        if "conditions" in status else True
    ports = []
    for i, c in enumerate(_list(spec.get("containers"), "spec.containers")):
        for j, p in enumerate(_list(_map(c, f"spec.containers[{i}]").get("ports"), f"spec.containers[{i}].ports")):
            path = f"spec.containers[{i}].ports[{j}]"
            p = _map(p, path)
            ports.append(ContainerPort(_str(p.get("name"), f"{path}.name", required=False),
                                       _protocol(p.get("protocol"), f"{path}.protocol"),
                                       _port(p.get("containerPort"), f"{path}.containerPort")))
    return Pod(namespace, name, labels, tuple(_ip(ip, "status.podIPs") for ip in ips),
               spec.get("nodeName"), ready, meta.get("deletionTimestamp") is not None, tuple(ports))


def slice_from_pods(service: Service, pods: Iterable[Pod]) -> EndpointSlice | None:
    """What the EndpointSlice controller would write for a selector service: one slice per service port set."""
    if service.selector is None:
        return None
    selector = Selector.from_map(dict(service.selector))
    matched = sorted((p for p in pods if p.namespace == service.key.namespace and p.ips
                      and selector.matches(p.labels)), key=lambda p: p.name)
    # Named target ports resolve per pod; the slice model has one port list, so group by the resolved numbers.
    ports: list[EndpointPort] = []
    for sp in service.ports:
        number = sp.target_port if isinstance(sp.target_port, int) else None
        if number is None:
            number = next((c.port for p in matched for c in p.ports
                           if c.name == sp.target_port and c.protocol is sp.protocol), None)
        if number is not None:
            ports.append(EndpointPort(sp.name, sp.protocol, number))
    endpoints = tuple(Endpoint(addresses=p.ips, ready=p.ready and not p.terminating,
                               serving=p.ready, terminating=p.terminating, node_name=p.node_name)
                      for p in matched)
    return EndpointSlice(service.key.namespace, f"{service.key.name}-pods", service.key.name, endpoints,
                         tuple(ports))


def build_state(services: Iterable[Service], slices: Iterable[EndpointSlice], pods: Iterable[Pod]) -> ClusterState:
    """Join services with their slices; selector services without slices get slices derived from pods."""
    by_key = {s.key: s for s in services}
    grouped: dict[ServiceKey, list[EndpointSlice]] = {}
    for sl in slices:
        grouped.setdefault(sl.service, []).append(sl)
    pod_list = list(pods)
    for key, svc in by_key.items():
        if key not in grouped and svc.selector is not None and pod_list:
            derived = slice_from_pods(svc, pod_list)
            if derived is not None:
                grouped[key] = [derived]
    return ClusterState(
        services=dict(sorted(by_key.items())),
        slices={k: tuple(sorted(v, key=lambda s: s.name)) for k, v in sorted(grouped.items()) if k in by_key},
    )

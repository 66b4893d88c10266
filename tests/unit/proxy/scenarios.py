"""A cluster state that exercises every feature, for golden tests of both back ends."""

from __future__ import annotations

from cnipy.proxy.model import ClusterState
from tests.unit.proxy.builders import endpoints, service, state


def feature_state() -> ClusterState:
    web = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    dns = service("dns", "10.96.0.53", 53, protocol="UDP", target=53, namespace="kube-system")
    sticky = service("sticky", "10.96.0.11", affinity=300, external_ips=("192.0.2.11",))
    lb = service("lb", "10.96.0.12", type="LoadBalancer", node_port=30081, lb_ips=("192.0.2.12",),
                 source_ranges=("198.51.100.0/24",), etp="Local", hc_port=30999)
    remote_only = service("remote", "10.96.0.13", type="NodePort", node_port=30082, etp="Local")
    empty = service("empty", "10.96.0.14", type="NodePort", node_port=30083)
    itp = service("itp", "10.96.0.15", itp="Local")
    return state(
        (web, endpoints(web, "10.244.1.2", "10.244.1.3", "10.244.2.2", nodes={"10.244.2.2": "node2"})),
        (dns, endpoints(dns, "10.244.1.5", "10.244.2.5", port=53, nodes={"10.244.2.5": "node2"})),
        (sticky, endpoints(sticky, "10.244.1.6", "10.244.2.6", nodes={"10.244.2.6": "node2"})),
        (lb, endpoints(lb, "10.244.1.7", "10.244.2.7", nodes={"10.244.2.7": "node2"})),
        (remote_only, endpoints(remote_only, "10.244.2.8", node="node2")),
        (empty, None),
        (itp, endpoints(itp, "10.244.2.9", node="node2")),
    )

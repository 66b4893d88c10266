"""Services that claim what another service already serves: the same address, protocol and port, or the same
NodePort (healthCheckNodePorts included, they listen on every node address too).

The Kubernetes API refuses most of these (not externalIPs), but manifests and etcd are not checked by anyone
else. Rendered as they are, one of the two would silently win. Here the service that was already in force keeps
the claim, a new one loses it (between two new ones, the first by namespace/name), and the loser is left out
whole and reported with its origin and field, so nothing half-works.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from cnipy.proxy.errors import ManifestError
from cnipy.proxy.model import ClusterState, Protocol, Service, ServiceKey

Claim = tuple[str, str, int]  # (address or "node", protocol, port)


def _claims(svc: Service) -> Iterator[tuple[Claim, str, str]]:
    """(claim, field, what) for everything the service serves; headless services serve nothing."""
    if not svc.cluster_ips:
        return
    for i, sp in enumerate(svc.ports):
        proto = sp.protocol.value
        for ip in svc.cluster_ips:
            yield (str(ip), proto, sp.port), f"spec.ports[{i}].port", f"{ip}:{sp.port}/{proto}"
        for j, ip in enumerate(svc.external_ips):
            yield (str(ip), proto, sp.port), f"spec.externalIPs[{j}]", f"{ip}:{sp.port}/{proto}"
        for j, ip in enumerate(svc.load_balancer_ips):
            yield ((str(ip), proto, sp.port), f"status.loadBalancer.ingress[{j}].ip", f"{ip}:{sp.port}/{proto}")
        if sp.node_port is not None:
            yield ("node", proto, sp.node_port), f"spec.ports[{i}].nodePort", f"nodePort {sp.node_port}/{proto}"
    hc = svc.health_check_node_port
    if hc is not None:
        yield ("node", Protocol.TCP.value, hc), "spec.healthCheckNodePort", f"nodePort {hc}/TCP"


def resolve(state: ClusterState, previous: ClusterState | None = None,
            origins: Mapping[ServiceKey, tuple[str, str]] | None = None,
            ) -> tuple[ClusterState, tuple[ManifestError, ...]]:
    """``state`` without the services whose claims collide with another's, and a problem for each of them.
    ``previous`` is what is in force: its unchanged services win. ``origins`` names where a service came from:
    (file or API path, the prefix of its fields there, e.g. "[1]." for a file's second document)."""
    prev = previous.services if previous is not None else {}
    keys = sorted(state.services)
    order = [k for k in keys if prev.get(k) == state.services[k]] + [
        k for k in keys if prev.get(k) != state.services[k]]
    owner: dict[Claim, ServiceKey] = {}
    losers: dict[ServiceKey, ManifestError] = {}
    for key in order:
        svc = state.services[key]
        mine: dict[Claim, None] = {}
        problem = None
        for claim, fld, what in _claims(svc):
            other = owner.get(claim)
            if other is not None and other != key:
                where, prefix = (origins or {}).get(key, (f"service {key.namespace}/{key.name}", ""))
                problem = ManifestError(where, prefix + fld, f"{what} is already served by service "
                                        f"{other.namespace}/{other.name}; this service is skipped")
                break
            mine[claim] = None
        if problem is not None:
            losers[key] = problem
            continue
        for claim in mine:
            owner[claim] = key
    if not losers:
        return state, ()
    kept = ClusterState(services={k: s for k, s in state.services.items() if k not in losers},
                        slices={k: v for k, v in state.slices.items() if k not in losers})
    return kept, tuple(losers[k] for k in sorted(losers))

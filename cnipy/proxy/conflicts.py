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

Claim = tuple[bytes | str, str, int]  # (packed address, or "node" for a NodePort; protocol; port)
# Where a claim comes from: ("port", port index, address), ("externalIPs" / "ingress", list index, address),
# ("nodePort", port index, None) or ("healthCheckNodePort", 0, None). Turned into field text only on a conflict.
Source = tuple[str, int, object]


def _claims(svc: Service) -> Iterator[tuple[Claim, Source]]:
    """Everything the service serves; headless services serve nothing. Addresses are keyed by their packed bytes:
    str() and hash() of ipaddress objects run in Python, and this runs for every service on every snapshot."""
    if not svc.cluster_ips:
        return
    for i, sp in enumerate(svc.ports):
        proto, port = sp.protocol.value, sp.port
        for ip in svc.cluster_ips:
            yield (ip.packed, proto, port), ("port", i, ip)
        for j, ip in enumerate(svc.external_ips):
            yield (ip.packed, proto, port), ("externalIPs", j, ip)
        for j, ip in enumerate(svc.load_balancer_ips):
            yield (ip.packed, proto, port), ("ingress", j, ip)
        if sp.node_port is not None:
            yield ("node", proto, sp.node_port), ("nodePort", i, None)
    hc = svc.health_check_node_port
    if hc is not None:
        yield ("node", Protocol.TCP.value, hc), ("healthCheckNodePort", 0, None)


def _describe(claim: Claim, source: Source) -> tuple[str, str]:
    """(field, what) of a claim, for the problem report."""
    _, proto, port = claim
    kind, i, ip = source
    field = {"port": f"spec.ports[{i}].port", "externalIPs": f"spec.externalIPs[{i}]",
             "ingress": f"status.loadBalancer.ingress[{i}].ip", "nodePort": f"spec.ports[{i}].nodePort",
             "healthCheckNodePort": "spec.healthCheckNodePort"}[kind]
    return field, (f"nodePort {port}/{proto}" if ip is None else f"{ip}:{port}/{proto}")


def resolve(state: ClusterState, previous: ClusterState | None = None,
            origins: Mapping[ServiceKey, tuple[str, str]] | None = None,
            ) -> tuple[ClusterState, tuple[ManifestError, ...]]:
    """``state`` without the services whose claims collide with another's, and a problem for each of them.
    ``previous`` is what is in force: its unchanged services win. ``origins`` names where a service came from:
    (file or API path, the prefix of its fields there, e.g. "[1]." for a file's second document)."""
    prev = previous.services if previous is not None else {}
    kept_on: list[ServiceKey] = []  # in force and unchanged: they keep their claims
    new: list[ServiceKey] = []
    for k in sorted(state.services):
        svc, before = state.services[k], prev.get(k)
        (kept_on if before is svc or before == svc else new).append(k)
    order = kept_on + new
    owner: dict[Claim, ServiceKey] = {}
    losers: dict[ServiceKey, ManifestError] = {}
    for key in order:
        svc = state.services[key]
        mine: dict[Claim, None] = {}
        problem = None
        for claim, source in _claims(svc):
            other = owner.get(claim)
            if other is not None and other != key:
                fld, what = _describe(claim, source)
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

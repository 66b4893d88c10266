"""The `static` back end: static routes between the nodes' pod CIDRs over the underlay.

A node on the same segment is reached directly (`via` its underlay address); a node on the other segment through
the router on our own segment, which has a route to every pod CIDR via the owning node.
"""

from __future__ import annotations

from typing import Any

from cnipy.lab import sh
from cnipy.lab.backend import bridge_conflist
from cnipy.lab.model import Lab, Node


class StaticBackend:
    def prepare(self, lab: Lab) -> None:
        for node in lab.nodes:
            sh.ip_batch(node.netns, [route_line(lab, node, peer) for peer in lab.nodes if peer != node])
        if lab.router is not None:
            sh.ip_batch(lab.router.netns, [
                f"route replace {peer.pod_cidr} via {peer.underlay_ip.ip}" for peer in lab.nodes])

    def node_network_config(self, lab: Lab, node: Node) -> dict[str, Any]:
        return bridge_conflist(lab, node)

    def teardown(self, lab: Lab) -> None:
        # Routes live in the lab's namespaces and go with them.
        return None


def route_line(lab: Lab, node: Node, peer: Node, dev: str = "eth0") -> str:
    """The route on `node` to `peer`'s pods (also used on Vagrant VMs, where the underlay device differs)."""
    via = peer.underlay_ip.ip if peer.segment == node.segment or node.gateway is None else node.gateway
    return f"route replace {peer.pod_cidr} via {via} dev {dev}"

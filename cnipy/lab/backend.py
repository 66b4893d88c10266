"""Cross-node back ends: how pods on different nodes reach each other.

A back end is any object with the three methods of `Backend`. The lab calls them in this order:

    lab up:    nodes, underlay, router, client, control exist and are addressed
               -> backend.prepare(lab)                       start daemons, add routes/tunnels (idempotent)
               -> backend.node_network_config(lab, node)     once per node: the CNI conflist written to
                                                             node.cni_conf_dir / "10-lab.conflist"
               -> pods are attached with that conflist (ADD each plugin in order, prevResult chained)
    lab down:  pods are detached (DEL in reverse) while the back end still runs
               -> backend.teardown(lab)                      stop what prepare started
               -> every process left in a lab namespace is killed, namespaces and lab.state_dir removed

`teardown` must work after a crash or an interrupted `up`: from the `Lab` (which is re-planned from the recorded
spec) and what the back end itself recorded under `lab.backend_dir` or `node.run_dir`, never from memory. It must
not fail when prepare never ran. Anything the back end leaves inside lab namespaces or lab.state_dir is removed by
the lab anyway; anything outside them (host-namespace links, processes started outside a lab namespace) is the
back end's to remove. Start daemons with `cnipy.lab.procs.spawn`, which runs them inside a namespace, logs to
lab.state_dir/logs and records the pid so that `down` kills them even after a crash.

What a back end may rely on (all frozen values from `cnipy.lab.model`):

    lab.name, lab.prefix              lab name; every namespace of the lab starts with lab.prefix
    lab.nodes                         Node(name "n1", index 1, netns "<lab>-n1", segment, underlay_ip
                                      IPv4Interface 172.31.<seg>.<10+i>/24 on `eth0`, gateway (router on the
                                      node's segment, or None with one segment), pod_cidr IPv4Network
                                      10.244.<i>.0/24, state_dir; .cni_conf_dir, .cni_cache_dir, .ipam_dir, .run_dir)
    lab.control                       Host on segment 1 (netns "<lab>-ctl", underlay_ip 172.31.1.2/24): for
                                      cluster daemons such as etcd; every node reaches it over the underlay
                                      (through the router with two segments). The lab runs nothing there.
    lab.router                        Host joining the two segments (None with one segment)
    lab.client                        Host outside the cluster (NodePort and external traffic)
    lab.cluster_cidr                  10.244.0.0/16
    lab.plugins                       PluginSet: CNI plugin directory and the bridge/host-local/loopback types
    lab.backend_dir, lab.state_dir    directories the back end may write (created 0700 before prepare)
    lab.spec                          LabSpec(name, nodes, pods_per_node, segments, backend, plugins, ...)

Pods are attached by `cnipy.lab.runtime` (CNI_* environment, plugins run inside the node's namespace). With
cnipy's plugins every node runs a CNI daemon (spec.cni_daemon) and every call names it (CNIPY_CNI_SOCKET =
node.cni_socket), so the host side of a call is always done in that node's namespace.

A back end whose agent leases pod subnets itself may ignore node.pod_cidr: the lab learns pod addresses only from
the CNI results. The `vxlan` and `host-gw` entries below are provided by `cnipy/overlay/lab.py`; a back end is
added by adding its entry to `BACKENDS` (name -> "module:attribute", the attribute called with no arguments).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from cnipy.lab.errors import BackendUnavailable
from cnipy.lab.model import Lab, Node

BACKENDS: dict[str, str] = {
    "static": "cnipy.lab.static:StaticBackend",
    "vxlan": "cnipy.overlay.lab:VxlanBackend",
    "host-gw": "cnipy.overlay.lab:HostGwBackend",
    "vxlan-dr": "cnipy.overlay.lab:VxlanDirectBackend",
}
# The demo shows the overlay: an agent per node, leases in etcd, VXLAN between nodes.
DEMO_BACKEND = "vxlan"
DEFAULT_BACKEND = "static"
CNI_VERSION = "1.0.0"
NETWORK_NAME = "cnipy-lab"
CONFLIST_NAME = "10-lab.conflist"


class Backend(Protocol):
    def prepare(self, lab: Lab) -> None:
        """Make cross-node traffic possible: routes, tunnels, daemons. Called on every `up` (idempotent)."""

    def node_network_config(self, lab: Lab, node: Node) -> dict[str, Any]:
        """The CNI network configuration list for pods on `node` (see `bridge_conflist`)."""

    def teardown(self, lab: Lab) -> None:
        """Undo `prepare` from recorded state; succeed when there is nothing to undo."""


def load(name: str) -> Backend:
    """The back end registered as `name`; BackendUnavailable says why when it can not be loaded."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"unknown back end {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(f"back end {name!r} is not available yet ({module_name}: {exc})") from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise BackendUnavailable(f"back end {name!r}: {module_name} has no {attr}") from None
    backend: Backend = factory()
    return backend


def bridge_conflist(lab: Lab, node: Node, *, subnet: str | None = None, mtu: int | None = None,
                    routes: list[dict[str, str]] | None = None,
                    extra_plugins: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The lab's default conflist for `node`: bridge (host-local IPAM, state in node.ipam_dir) + loopback.

    Back ends adjust it with the keywords (an overlay passes a smaller `mtu`, or the subnet its agent leased)
    or build their own dict in the same shape.
    """
    plugins = lab.plugins
    bridge: dict[str, Any] = {
        "type": plugins.bridge,
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": {
            "type": plugins.host_local,
            "ranges": [[{"subnet": subnet or str(node.pod_cidr)}]],
            "routes": routes if routes is not None else [{"dst": "0.0.0.0/0"}],
            "dataDir": str(node.ipam_dir),
        },
    }
    if mtu is not None:
        bridge["mtu"] = mtu
    chain = [bridge, *(extra_plugins or []), {"type": plugins.loopback}]
    return {"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": chain}

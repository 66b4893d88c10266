"""The lab's plan: frozen values computed from a `LabSpec`, the same every time for the same spec.

Addressing (every lab lives in its own namespaces, so two labs may use the same addresses):

    underlay segment s      172.31.<s>.0/24   router .1, control .2, client .3 (segment 1), node i .<10+i>
    pod CIDR of node i      10.244.<i>.0/24   inside the cluster CIDR 10.244.0.0/16

Namespaces are named `<lab>-<role>` (`<lab>-n1`, `<lab>-n1-p2`, `<lab>-s1`, `<lab>-rt`, `<lab>-cl`, `<lab>-ctl`);
lab names have no `-`, so the prefix `<lab>-` finds exactly one lab's namespaces, also after a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from cnipy.lab.errors import LabError

STATE_ROOT = Path("/run/cnipy-lab")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
CLUSTER_CIDR = IPv4Network("10.244.0.0/16")
MAX_NODES = 200
MAX_PODS_PER_NODE = 50
PROBE_PORT = 18080  # `lab check` listens here in every pod; the lab's Services target it
# How Services are provided: `cnipy proxy` in one of its modes on every node, or not at all.
SERVICE_MODES = ("none", "nftables", "iptables")
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class PluginSet:
    """Where the CNI executables are and what their types are called."""

    directory: Path
    bridge: str
    host_local: str
    loopback: str


PLUGIN_SETS = {
    "cnipy": PluginSet(REPO_ROOT / "plugins", "cnipy-bridge", "cnipy-host-local", "cnipy-loopback"),
    "reference": PluginSet(Path("/usr/lib/cni"), "bridge", "host-local", "loopback"),
}


@dataclass(frozen=True)
class LabSpec:
    """What the user asked for. Everything else is derived from it."""

    name: str = "cnipy"
    nodes: int = 3
    pods_per_node: int = 2
    segments: int = 1
    backend: str = "static"
    plugins: str = "cnipy"
    state_root: Path = STATE_ROOT
    cni_daemon: bool = True  # run cnipy's CNI node daemon in every node (cnipy plugins only), as a node would
    services: str = "none"  # "nftables" / "iptables": demo Services and a `cnipy proxy` in every node

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise LabError(f"lab name {self.name!r} must match {NAME_RE.pattern} (no '-': it separates roles)")
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabError(f"--nodes must be between 1 and {MAX_NODES}")
        if not 0 <= self.pods_per_node <= MAX_PODS_PER_NODE:
            raise LabError(f"--pods must be between 0 and {MAX_PODS_PER_NODE}")
        if self.segments not in (1, 2):
            raise LabError("--segments must be 1 (one L2 segment) or 2 (two segments joined by a router)")
        if self.plugins not in PLUGIN_SETS:
            raise LabError(f"--plugins must be one of {', '.join(PLUGIN_SETS)}")
        if self.services not in SERVICE_MODES:
            raise LabError(f"--services must be one of {', '.join(SERVICE_MODES)}")

    def describe(self) -> str:
        daemon = " (node daemons)" if self.uses_cni_daemon else ""
        services = f", Services by cnipy proxy ({self.services})" if self.services != "none" else ""
        return (f"{self.nodes} nodes x {self.pods_per_node} pods, {self.segments} segment(s), "
                f"back end {self.backend}, plugins {self.plugins}{daemon}{services}")

    @property
    def uses_cni_daemon(self) -> bool:
        return self.cni_daemon and self.plugins == "cnipy"


@dataclass(frozen=True)
class Segment:
    """One L2 underlay segment: a bridge `br0` inside the switch namespace `netns`."""

    index: int
    netns: str
    subnet: IPv4Network


@dataclass(frozen=True)
class Host:
    """A namespace on the underlay that is not a node: the router, the client, the control host."""

    name: str
    netns: str
    segment: int
    underlay_ip: IPv4Interface
    gateway: IPv4Address | None


@dataclass(frozen=True)
class Node:
    """A cluster node: its own namespace, routes, netfilter, sysctls, CNI config and state directories."""

    name: str
    index: int
    netns: str
    segment: int
    underlay_ip: IPv4Interface
    gateway: IPv4Address | None  # the router on this node's segment; None with one segment
    pod_cidr: IPv4Network
    state_dir: Path

    @property
    def cni_conf_dir(self) -> Path:
        return self.state_dir / "cni" / "net.d"

    @property
    def cni_cache_dir(self) -> Path:
        return self.state_dir / "cni" / "cache"

    @property
    def ipam_dir(self) -> Path:
        return self.state_dir / "ipam"

    @property
    def cni_socket(self) -> Path:
        """The node's CNI daemon socket; plugin calls always name it, so they never reach another daemon."""
        return self.state_dir / "run" / "cni" / "cni.sock"

    @property
    def run_dir(self) -> Path:
        """Free for back ends: agent sockets, lease files, pid files of per-node daemons."""
        return self.state_dir / "run"


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    netns: str
    container_id: str
    ifname: str = "eth0"


@dataclass(frozen=True)
class Lab:
    spec: LabSpec
    state_dir: Path
    segments: tuple[Segment, ...]
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    router: Host | None
    client: Host
    control: Host
    cluster_cidr: IPv4Network
    plugins: PluginSet

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def prefix(self) -> str:
        return f"{self.spec.name}-"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def backend_dir(self) -> Path:
        """Free for the back end: its own state (etcd data, leases) lives here and goes with `down`."""
        return self.state_dir / "backend"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"lab {self.name} has no node {name!r}")

    def pods_on(self, node: Node) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.node == node.name)

    def hosts(self) -> tuple[Host, ...]:
        return tuple(h for h in (self.router, self.control, self.client) if h is not None)

    def all_netns(self) -> tuple[str, ...]:
        """Every namespace of the plan, in creation order."""
        names = [s.netns for s in self.segments] + [h.netns for h in self.hosts()]
        names += [n.netns for n in self.nodes] + [p.netns for p in self.pods]
        return tuple(names)


def segment_subnet(index: int) -> IPv4Network:
    return IPv4Network(f"172.31.{index}.0/24")


def _on(subnet: IPv4Network, host: int) -> IPv4Interface:
    return IPv4Interface(f"{subnet.network_address + host}/{subnet.prefixlen}")


def plan(spec: LabSpec) -> Lab:
    """The whole lab for `spec`: names, addresses, CIDRs and directories (nothing is created here)."""
    name = spec.name
    state_dir = spec.state_root / name
    segments = tuple(Segment(s, f"{name}-s{s}", segment_subnet(s)) for s in range(1, spec.segments + 1))
    two = spec.segments == 2

    def gateway(seg: int) -> IPv4Address | None:
        return _on(segment_subnet(seg), 1).ip if two else None

    router = Host("router", f"{name}-rt", 1, _on(segment_subnet(1), 1), None) if two else None
    control = Host("control", f"{name}-ctl", 1, _on(segment_subnet(1), 2), gateway(1))
    client = Host("client", f"{name}-cl", 1, _on(segment_subnet(1), 3), gateway(1))
    nodes: list[Node] = []
    pods: list[Pod] = []
    for i in range(1, spec.nodes + 1):
        seg = (i - 1) % spec.segments + 1
        node = Node(
            name=f"n{i}", index=i, netns=f"{name}-n{i}", segment=seg,
            underlay_ip=_on(segment_subnet(seg), 10 + i), gateway=gateway(seg),
            pod_cidr=IPv4Network(f"10.244.{i}.0/24"), state_dir=state_dir / "nodes" / f"n{i}",
        )
        nodes.append(node)
        for k in range(1, spec.pods_per_node + 1):
            pod_name = f"n{i}-p{k}"
            pods.append(Pod(pod_name, node.name, f"{name}-{pod_name}", f"{name}-{pod_name}"))
    return Lab(spec, state_dir, segments, tuple(nodes), tuple(pods), router, client, control, CLUSTER_CIDR,
               PLUGIN_SETS[spec.plugins])

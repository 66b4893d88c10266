"""`lab check`: a connectivity matrix with real TCP traffic between the lab's namespaces.

Everything runs in this one process: each target gets a listening socket created inside its namespace (a socket
stays in the namespace it was made in), each probe connects from a socket created inside the source namespace.
The server answers with the name of its namespace, so a probe passes only when it reached the intended target,
not merely some listener. Every connect and read has a timeout; probes run in a bounded thread pool.

Kinds of probe: pod->pod on one node, pod->pod across nodes (noting when the path crosses the router), client->node
(the node's underlay address). pod->ClusterIP and client->NodePort are listed as "n/a (not yet)" until the proxy
provides Services; they never count as passed or failed.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from ipaddress import IPv4Address

from cnipy.lab import runtime
from cnipy.lab.model import Lab

PORT = 18080
TIMEOUT = 3.0
WORKERS = 32

SAME_NODE = "pod -> pod, same node"
CROSS_NODE = "pod -> pod, across nodes"
CLIENT_NODE = "client -> node"
POD_CLUSTERIP = "pod -> ClusterIP"
CLIENT_NODEPORT = "client -> NodePort"
KINDS = (SAME_NODE, CROSS_NODE, CLIENT_NODE, POD_CLUSTERIP, CLIENT_NODEPORT)
NOT_YET = "n/a (not yet)"


@dataclass(frozen=True)
class Endpoint:
    label: str  # "n1-p1", "n2", "client"
    node: str | None  # the node it lives on (None: outside the cluster)
    netns: str
    ip: IPv4Address | None


@dataclass(frozen=True)
class Probe:
    kind: str
    src: Endpoint
    dst: Endpoint
    via_router: bool = False


@dataclass(frozen=True)
class Outcome:
    probe: Probe
    ok: bool | None  # None: not applicable yet
    detail: str
    seconds: float


@dataclass(frozen=True)
class Matrix:
    outcomes: tuple[Outcome, ...]

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.ok is False)

    @property
    def ok(self) -> bool:
        return not self.failures

    def by_kind(self, kind: str) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.probe.kind == kind)


def endpoints(lab: Lab) -> tuple[list[Endpoint], list[Endpoint], Endpoint]:
    """(pods with their CNI addresses, nodes, client). Pods without a cached attachment have ip None."""
    pods = []
    for node in lab.nodes:
        for pod in lab.pods_on(node):
            att = runtime.cached(node, pod)
            pods.append(Endpoint(pod.name, node.name, pod.netns, att.ip.ip if att and att.ip else None))
    nodes = [Endpoint(n.name, n.name, n.netns, n.underlay_ip.ip) for n in lab.nodes]
    client = Endpoint("client", None, lab.client.netns, lab.client.underlay_ip.ip)
    return pods, nodes, client


def plan_probes(lab: Lab) -> list[Probe]:
    """A bounded matrix: each pod to the next pod on its node; for every ordered pair of nodes one pod to one
    pod (rotating which pods, so every pod is used); the client to every node; placeholders for Services."""
    pods, nodes, client = endpoints(lab)
    segment = {n.name: n.segment for n in lab.nodes}
    per_node = {n.name: [p for p in pods if p.node == n.name] for n in lab.nodes}
    probes: list[Probe] = []
    for members in per_node.values():
        if len(members) > 1:
            probes += [Probe(SAME_NODE, a, members[(i + 1) % len(members)]) for i, a in enumerate(members)]
    for i, a_node in enumerate(lab.nodes):
        for j, b_node in enumerate(lab.nodes):
            src_pods, dst_pods = per_node[a_node.name], per_node[b_node.name]
            if i == j or not src_pods or not dst_pods:
                continue
            src, dst = src_pods[j % len(src_pods)], dst_pods[i % len(dst_pods)]
            probes.append(Probe(CROSS_NODE, src, dst, segment[a_node.name] != segment[b_node.name]))
    probes += [Probe(CLIENT_NODE, client, n, lab.router is not None and segment[n.node or ""] != 1)
               for n in nodes]
    if pods:
        probes.append(Probe(POD_CLUSTERIP, pods[0], Endpoint("ClusterIP", None, "", None)))
    probes.append(Probe(CLIENT_NODEPORT, client, Endpoint("NodePort", None, "", None)))
    return probes


def run(lab: Lab, timeout: float = TIMEOUT) -> Matrix:
    probes = plan_probes(lab)
    real = [p for p in probes if p.dst.netns]
    targets: set[tuple[str, IPv4Address | None]] = {(p.dst.netns, p.dst.ip) for p in real if p.dst.ip}
    with _servers(targets) as broken, ThreadPoolExecutor(WORKERS, thread_name_prefix="cnipy-lab-check") as pool:
        outcomes = list(pool.map(lambda p: probe_one(p, timeout, broken), real))
    pending = [Outcome(p, None, NOT_YET, 0.0) for p in probes if not p.dst.netns]
    return Matrix(tuple(outcomes + pending))


def _socket_in(netns: str) -> socket.socket:
    from cnipy.netlink.ns import call_in

    return call_in(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def probe_one(probe: Probe, timeout: float, broken: dict[str, str] | None = None) -> Outcome:
    """Connect from probe.src's namespace to probe.dst; pass only if the answer names probe.dst's namespace."""
    started = time.monotonic()
    if broken and probe.dst.netns in broken:
        return Outcome(probe, False, f"no server in {probe.dst.netns}: {broken[probe.dst.netns]}", 0.0)
    if probe.src.ip is None or probe.dst.ip is None:
        missing = probe.src if probe.src.ip is None else probe.dst
        return Outcome(probe, False, f"{missing.label} has no address (CNI ADD did not record one)", 0.0)
    try:
        sock = _socket_in(probe.src.netns)
    except Exception as exc:  # noqa: BLE001 - a missing namespace is a failed probe, reported as such
        return Outcome(probe, False, f"cannot open a socket in {probe.src.netns}: {exc}", 0.0)
    try:
        sock.settimeout(timeout)
        sock.connect((str(probe.dst.ip), PORT))
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        return Outcome(probe, False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    finally:
        sock.close()
    took = time.monotonic() - started
    answer = reply.decode("ascii", "replace").strip()
    if answer != f"cnipy-lab {probe.dst.netns}":
        return Outcome(probe, False, f"wrong answer {answer!r} (expected {probe.dst.netns})", took)
    return Outcome(probe, True, f"{took * 1000:.1f} ms", took)


@contextmanager
def _servers(targets: set[tuple[str, IPv4Address | None]]) -> Iterator[dict[str, str]]:
    """Listen on PORT at every target, inside its namespace; answer each connection with the namespace name.
    Yields the targets where no server could be started (namespace -> why)."""
    listeners: dict[socket.socket, bytes] = {}
    broken: dict[str, str] = {}
    sel = selectors.DefaultSelector()
    stop = threading.Event()
    try:
        for netns, ip in sorted(targets, key=str):
            try:
                lsock = _socket_in(netns)
            except Exception as exc:  # noqa: BLE001 - reported per probe
                broken[netns] = str(exc)
                continue
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                lsock.bind((str(ip), PORT))
                lsock.listen(64)
            except OSError as exc:
                lsock.close()
                broken[netns] = f"cannot listen on {ip}:{PORT}: {exc}"
                continue
            lsock.setblocking(False)
            listeners[lsock] = f"cnipy-lab {netns}\n".encode()
            sel.register(lsock, selectors.EVENT_READ)

        def serve() -> None:
            while not stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    lsock = key.fileobj
                    assert isinstance(lsock, socket.socket)
                    try:
                        conn, _addr = lsock.accept()
                    except BlockingIOError:
                        continue
                    with conn:
                        conn.settimeout(1.0)
                        with suppress(OSError):
                            conn.sendall(listeners[lsock])

        thread = threading.Thread(target=serve, name="cnipy-lab-server", daemon=True)
        thread.start()
        try:
            yield broken
        finally:
            stop.set()
            thread.join(timeout=5)
    finally:
        sel.close()
        for lsock in listeners:
            lsock.close()

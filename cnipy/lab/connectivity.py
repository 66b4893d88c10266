"""`lab check`: a connectivity matrix with real TCP traffic between the lab's namespaces.

Everything runs in this one process: each target gets a listening socket created inside its namespace (a socket
stays in the namespace it was made in), each probe connects from a socket created inside the source namespace.
The server answers with the name of its namespace and the peer address it saw, so a probe passes only when it
reached the intended target (not merely some listener), and a Service probe knows which endpoint answered and
whether the client address was kept. Every connect and read has a timeout; probes run in a bounded thread pool.

Kinds of probe: pod->pod on one node, pod->pod across nodes (noting when the path crosses the router), client->node
(the node's underlay address). With Services (`LabSpec.services`, see `cnipy.lab.services`): pod->ClusterIP from
every pod (several connections each, any endpoint may answer), client->NodePort on every node's underlay address,
and client->NodePort of the externalTrafficPolicy Local service: nodes with a local endpoint answer from it with
the client's own address, the others must not answer. Without Services those kinds are placeholders that never
count as passed or failed.
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
from cnipy.lab.model import PROBE_PORT, Lab
from cnipy.lab.services import LabService, lab_services

PORT = PROBE_PORT
TIMEOUT = 3.0
REFUSE_TIMEOUT = 1.0  # how long a probe that must get no answer waits for one
WORKERS = 32
CLUSTERIP_TRIES = 6  # connections per source pod
NODEPORT_TRIES = 6  # connections per node

SAME_NODE = "pod -> pod, same node"
CROSS_NODE = "pod -> pod, across nodes"
CLIENT_NODE = "client -> node"
POD_CLUSTERIP = "pod -> ClusterIP"
CLIENT_NODEPORT = "client -> NodePort"
CLIENT_LOCAL = "client -> NodePort, Local"
KINDS = (SAME_NODE, CROSS_NODE, CLIENT_NODE, POD_CLUSTERIP, CLIENT_NODEPORT, CLIENT_LOCAL)
SERVICE_KINDS = (POD_CLUSTERIP, CLIENT_NODEPORT, CLIENT_LOCAL)
NO_SERVICES = "n/a (no --services)"


@dataclass(frozen=True)
class Endpoint:
    label: str  # "n1-p1", "n2", "client", "web 10.96.0.10:80"
    node: str | None  # the node it lives on (None: outside the cluster)
    netns: str  # "" for a Service address: no one namespace answers
    ip: IPv4Address | None


@dataclass(frozen=True)
class Probe:
    kind: str
    src: Endpoint
    dst: Endpoint
    via_router: bool = False
    port: int = PORT
    tries: int = 1  # connections made
    backends: tuple[Endpoint, ...] = ()  # a Service probe: the pods that may answer (else dst must)
    refused: bool = False  # must get no answer (externalTrafficPolicy Local on a node without local endpoints)
    keeps_source: bool = False  # the answering pod must have seen src.ip (externalTrafficPolicy Local)
    pending: str = ""  # why this probe is not run (a placeholder); it never passes or fails


@dataclass(frozen=True)
class Outcome:
    probe: Probe
    ok: bool | None  # None: not applicable
    detail: str
    seconds: float
    answers: tuple[str, ...] = ()  # labels of the pods that answered, one per answered connection


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


@dataclass(frozen=True)
class Reply:
    netns: str  # the answering server's namespace; "" when the answer was not a lab server's
    peer: str | None  # the address the server saw us come from (None: a server that does not say)
    text: str


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
    pod (rotating which pods, so every pod is used); the client to every node; then the Service probes."""
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
    if lab.spec.services == "none":
        if pods:
            probes.append(Probe(POD_CLUSTERIP, pods[0], Endpoint("ClusterIP", None, "", None),
                                pending=NO_SERVICES))
        probes.append(Probe(CLIENT_NODEPORT, client, Endpoint("NodePort", None, "", None), pending=NO_SERVICES))
        return probes
    return probes + service_probes(lab, pods, nodes, client)


def service_probes(lab: Lab, pods: list[Endpoint], nodes: list[Endpoint], client: Endpoint) -> list[Probe]:
    by_name = {s.name: s for s in lab_services(lab)}
    web, web_np, web_local = by_name["web"], by_name["web-np"], by_name["web-local"]
    segment = {n.name: n.segment for n in lab.nodes}

    def backends(svc: LabService) -> tuple[Endpoint, ...]:
        return tuple(Endpoint(b.pod, b.node, b.netns, b.ip) for b in svc.backends)

    probes: list[Probe] = []
    if web.backends:
        vip = Endpoint(f"{web.name} {web.cluster_ip}:{web.port}", None, "", web.cluster_ip)
        probes += [Probe(POD_CLUSTERIP, pod, vip, port=web.port, tries=CLUSTERIP_TRIES, backends=backends(web))
                   for pod in pods]
    for node in nodes:
        routed = lab.router is not None and segment[node.node or ""] != 1
        if web_np.backends and web_np.node_port:
            dst = Endpoint(f"{node.label} {node.ip}:{web_np.node_port}", node.node, "", node.ip)
            probes.append(Probe(CLIENT_NODEPORT, client, dst, routed, port=web_np.node_port,
                                tries=NODEPORT_TRIES, backends=backends(web_np)))
        if web_local.backends and web_local.node_port:
            dst = Endpoint(f"{node.label} {node.ip}:{web_local.node_port}", node.node, "", node.ip)
            local = tuple(b for b in backends(web_local) if b.node == node.node)
            probes.append(Probe(CLIENT_LOCAL, client, dst, routed, port=web_local.node_port,
                                tries=NODEPORT_TRIES // 2 if local else 1, backends=local or backends(web_local),
                                refused=not local, keeps_source=True))
    return probes


def run(lab: Lab, timeout: float = TIMEOUT) -> Matrix:
    probes = plan_probes(lab)
    real = [p for p in probes if not p.pending]
    targets: set[tuple[str, IPv4Address | None]] = {(p.dst.netns, p.dst.ip) for p in real
                                                    if p.dst.ip and not p.backends}
    targets |= {(b.netns, b.ip) for p in real for b in p.backends if b.ip}
    with serving(targets) as broken, ThreadPoolExecutor(WORKERS, thread_name_prefix="cnipy-lab-check") as pool:
        outcomes = list(pool.map(lambda p: probe_one(p, timeout, broken), real))
    pending = [Outcome(p, None, p.pending, 0.0) for p in probes if p.pending]
    return Matrix(tuple(outcomes + pending))


def _socket_in(netns: str) -> socket.socket:
    from cnipy.netlink.ns import call_in

    return call_in(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def parse_reply(raw: bytes) -> Reply:
    """`cnipy-lab <netns> [<peer>]`: what the check's servers and a Vagrant node's responders answer."""
    text = raw.decode("ascii", "replace").strip()
    words = text.split()
    if len(words) < 2 or words[0] != "cnipy-lab":
        return Reply("", None, text)
    return Reply(words[1], words[2] if len(words) > 2 else None, text)


def exchange(netns: str, ip: IPv4Address, port: int, timeout: float) -> Reply:
    """One connection from `netns` to ip:port and the server's one-line answer. OSError when it fails (also
    when no socket can be opened in `netns`)."""
    try:
        sock = _socket_in(netns)
    except OSError:
        raise
    except Exception as exc:  # a missing namespace: the caller reports it like any failed connection
        raise OSError(f"cannot open a socket in {netns}: {exc}") from exc
    try:
        sock.settimeout(timeout)
        sock.connect((str(ip), port))
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    return parse_reply(reply)


def probe_one(probe: Probe, timeout: float, broken: dict[str, str] | None = None) -> Outcome:
    """Connect from probe.src's namespace to probe.dst; pass only if the answer names probe.dst's namespace
    (a Service probe: see `probe_service`)."""
    if probe.backends:
        return probe_service(probe, timeout)
    started = time.monotonic()
    if broken and probe.dst.netns in broken:
        return Outcome(probe, False, f"no server in {probe.dst.netns}: {broken[probe.dst.netns]}", 0.0)
    if probe.src.ip is None or probe.dst.ip is None:
        missing = probe.src if probe.src.ip is None else probe.dst
        return Outcome(probe, False, f"{missing.label} has no address (CNI ADD did not record one)", 0.0)
    try:
        reply = exchange(probe.src.netns, probe.dst.ip, probe.port, timeout)
    except OSError as exc:
        return Outcome(probe, False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    took = time.monotonic() - started
    if reply.netns != probe.dst.netns:
        return Outcome(probe, False, f"wrong answer {reply.text!r} (expected {probe.dst.netns})", took)
    return Outcome(probe, True, f"{took * 1000:.1f} ms", took, (probe.dst.label,))


def probe_service(probe: Probe, timeout: float) -> Outcome:
    """probe.tries connections to a Service address: each must be answered by one of probe.backends (with the
    client's own address when probe.keeps_source); with probe.refused none may be answered."""
    started = time.monotonic()
    if probe.src.ip is None or probe.dst.ip is None:
        missing = probe.src if probe.src.ip is None else probe.dst
        return Outcome(probe, False, f"{missing.label} has no address (CNI ADD did not record one)", 0.0)
    allowed = {b.netns: b.label for b in probe.backends}
    answers: list[str] = []
    errors: list[str] = []
    replies: list[str] = []
    wait = min(timeout, REFUSE_TIMEOUT) if probe.refused else timeout
    for _ in range(probe.tries):
        try:
            reply = exchange(probe.src.netns, probe.dst.ip, probe.port, wait)
        except TimeoutError as exc:  # the others would wait as long: give up (they count as unanswered)
            errors.append(f"{type(exc).__name__}: {exc} (after {wait:.0f} s; not tried again)")
            break
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        replies.append(allowed.get(reply.netns, reply.text))
        if reply.netns not in allowed:
            errors.append(f"wrong answer {reply.text!r} (not an endpoint of the Service)")
        elif probe.keeps_source and reply.peer != str(probe.src.ip):
            errors.append(f"{allowed[reply.netns]} saw {reply.peer}, not the client's {probe.src.ip}")
        else:
            answers.append(allowed[reply.netns])
    took = time.monotonic() - started
    if probe.refused:
        if replies:
            return Outcome(probe, False, f"answered by {', '.join(replies)} although {probe.dst.node} has no "
                                         f"local endpoint", took, tuple(answers))
        return Outcome(probe, True, "no answer, as expected: no local endpoint", took)
    spread = len(set(answers))
    if errors:
        return Outcome(probe, False, f"{len(answers)}/{probe.tries} answered; {errors[0]}", took, tuple(answers))
    kept = ", client address kept" if probe.keeps_source else ""
    return Outcome(probe, True, f"{len(answers)}/{probe.tries} answered by {spread} endpoint(s){kept}", took,
                   tuple(answers))


@contextmanager
def serving(targets: set[tuple[str, IPv4Address | None]]) -> Iterator[dict[str, str]]:
    """Listen on PORT at every target, inside its namespace; answer each connection with the namespace name and
    the peer's address. Yields the targets where no server could be started (namespace -> why)."""
    listeners: dict[socket.socket, str] = {}
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
                lsock.listen(128)
            except OSError as exc:
                lsock.close()
                broken[netns] = f"cannot listen on {ip}:{PORT}: {exc}"
                continue
            lsock.setblocking(False)
            listeners[lsock] = netns
            sel.register(lsock, selectors.EVENT_READ)

        def serve() -> None:
            while not stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    lsock = key.fileobj
                    assert isinstance(lsock, socket.socket)
                    try:
                        conn, addr = lsock.accept()
                    except BlockingIOError:
                        continue
                    with conn:
                        conn.settimeout(1.0)
                        with suppress(OSError):
                            conn.sendall(f"cnipy-lab {listeners[lsock]} {addr[0]}\n".encode())

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

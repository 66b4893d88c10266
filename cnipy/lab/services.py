"""Services in the lab: a few demo Services over the lab's pods, and one `cnipy proxy` in every node.

    lab.state_dir/services/services.json   the Services and their EndpointSlices (a `kind: List`), written
                                           from the pods' CNI results once the pods are attached
    proxy-<node> (procs.spawn)             `cnipy proxy --manifests <that directory> --node-name <node>`
                                           inside the node, so `down` stops it like every lab daemon

The proxies start once the manifests are written, so that the first sync a proxy reports healthy includes them
(a proxy started earlier reports its sync of the empty directory healthy too, and its /healthz can not tell the
two apart); `wait_ready` returns once every proxy is healthy. Their rules live in the node namespaces and go with
them. The Services (namespace `default`, every one targets the check's server port on the pods):

    web        ClusterIP  10.96.0.10:80                   every pod
    web-np     NodePort   10.96.0.11:80, node port 30080  every pod (externalTrafficPolicy Cluster)
    web-local  NodePort   10.96.0.12:80, node port 30081  the first node's pods (externalTrafficPolicy Local:
                                                          the client address is kept, other nodes drop;
                                                          healthCheckNodePort 30090)
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from cnipy.lab import procs, runtime
from cnipy.lab.errors import LabError, ServicesNotReady
from cnipy.lab.files import private_dir, write_json
from cnipy.lab.model import PROBE_PORT, Lab, Node

SERVICE_CIDR = IPv4Network("10.96.0.0/16")
NODE_PORT_RANGE = (30000, 32767)
NAMESPACE = "default"
HEALTHZ_PORT = 10256
READY_TIMEOUT = 30.0
MANIFEST = "services.json"


@dataclass(frozen=True)
class Backend:
    """A pod behind a Service."""

    pod: str
    node: str
    netns: str
    ip: IPv4Address


@dataclass(frozen=True)
class LabService:
    name: str
    cluster_ip: IPv4Address
    port: int
    node_port: int | None  # None: a ClusterIP Service
    local: bool  # externalTrafficPolicy Local
    backends: tuple[Backend, ...]
    health_check_node_port: int | None = None  # Local only: 200 on nodes with local endpoints, else 503

    @property
    def type(self) -> str:
        return "ClusterIP" if self.node_port is None else "NodePort"


def check_tools(mode: str) -> None:
    """LabError before anything is built when the proxy's mode needs a tool this machine lacks."""
    tool = {"nftables": "nft", "iptables": "iptables-restore"}.get(mode)
    if tool is not None and shutil.which(tool) is None:
        raise LabError(f"--services {mode} needs {tool}, which is not installed (bin/setup installs it); "
                       f"or use --services none")


def manifest_dir(lab: Lab) -> Path:
    return lab.state_dir / "services"


def proxy_name(node: Node) -> str:
    return f"proxy-{node.name}"


def lab_services(lab: Lab) -> tuple[LabService, ...]:
    """The demo Services over the pods that have an address (from their cached CNI results)."""
    pods = []
    for node in lab.nodes:
        for pod in lab.pods_on(node):
            att = runtime.cached(node, pod)
            if att is not None and att.ip is not None:
                pods.append(Backend(pod.name, node.name, pod.netns, att.ip.ip))
    first = lab.nodes[0].name
    vip = SERVICE_CIDR.network_address
    return (
        LabService("web", vip + 10, 80, None, False, tuple(pods)),
        LabService("web-np", vip + 11, 80, 30080, False, tuple(pods)),
        LabService("web-local", vip + 12, 80, 30081, True, tuple(b for b in pods if b.node == first), 30090),
    )


def manifests(services: tuple[LabService, ...]) -> dict[str, Any]:
    """Kubernetes manifests for `services`: each Service and the EndpointSlice an API server would hold."""
    items: list[dict[str, Any]] = []
    for svc in services:
        port: dict[str, Any] = {"name": "http", "protocol": "TCP", "port": svc.port, "targetPort": PROBE_PORT}
        ip = str(svc.cluster_ip)
        spec: dict[str, Any] = {"type": svc.type, "clusterIP": ip, "clusterIPs": [ip], "ports": [port]}
        if svc.node_port is not None:
            port["nodePort"] = svc.node_port
            spec["externalTrafficPolicy"] = "Local" if svc.local else "Cluster"
        if svc.health_check_node_port is not None:
            spec["healthCheckNodePort"] = svc.health_check_node_port
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": svc.name, "namespace": NAMESPACE}, "spec": spec})
        items.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{svc.name}-lab", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": svc.name}},
            "ports": [{"name": "http", "protocol": "TCP", "port": PROBE_PORT}],
            "endpoints": [{"addresses": [str(b.ip)], "nodeName": b.node, "targetRef": {"kind": "Pod", "name": b.pod},
                           "conditions": {"ready": True, "serving": True, "terminating": False}}
                          for b in svc.backends],
        })
    return {"apiVersion": "v1", "kind": "List", "items": items}


def proxy_argv(lab: Lab, node: Node) -> list[str]:
    return [sys.executable, "-m", "cnipy.proxy", "--mode", lab.spec.services,
            "--manifests", str(manifest_dir(lab)), "--node-name", node.name,
            "--cluster-cidr", str(lab.cluster_cidr),
            # NodePorts on every local address, kube-proxy's default. (--nodeport-address would say the underlay,
            # but its iptables rule gets two -d matches, which iptables-restore rejects.)
            "--healthz-address", f"0.0.0.0:{HEALTHZ_PORT}", "--metrics-address", f"0.0.0.0:{HEALTHZ_PORT}",
            "--min-sync-period", "0.1", "--poll-period", "0.1"]


def start_proxies(lab: Lab) -> None:
    """A proxy in every node that has none running, watching the manifest directory (`publish` first)."""
    private_dir(manifest_dir(lab))
    running = procs.recorded(lab)
    for node in lab.nodes:
        if proxy_name(node) not in running:
            procs.spawn(lab, node.netns, proxy_name(node), proxy_argv(lab, node))


def publish(lab: Lab) -> tuple[LabService, ...]:
    """Write the manifests for the pods as they are now; the proxies pick them up."""
    services = lab_services(lab)
    write_json(manifest_dir(lab) / MANIFEST, manifests(services))
    return services


def wait_ready(lab: Lab, since: float, timeout: float = READY_TIMEOUT) -> None:
    """Until every node's proxy reports a successful sync after `since` (wall clock: when the manifests were
    written). ServicesNotReady names the nodes whose proxy failed, stopped or timed out, with its log's end."""
    deadline = time.monotonic() + timeout
    waiting = list(lab.nodes)
    why = f"did not sync the lab's Services within {timeout:.0f} s"
    while waiting:
        health = {n.name: healthz(n) for n in waiting}
        waiting = [n for n in waiting if not _synced(health[n.name], since)]
        if not waiting:
            return
        alive = procs.recorded(lab)
        failing = [n for n in waiting if proxy_name(n) not in alive or _failing(health[n.name])]
        if failing:
            waiting, why = failing, "failed to apply its rules or stopped"
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    log = lab.state_dir / "logs" / f"{proxy_name(waiting[0])}.log"
    raise ServicesNotReady(f"the cnipy proxy ({lab.spec.services}) on {', '.join(n.name for n in waiting)} {why}; "
                           f"{log} ends:\n{_tail(log)}")


def healthz(node: Node, timeout: float = 1.0) -> dict[str, Any] | None:
    """The node's proxy /healthz answer (200 healthy, 503 not), or None when it does not answer."""
    from cnipy.netlink.ns import call_in

    sock = call_in(node.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", HEALTHZ_PORT))
        sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    except OSError:
        return None
    finally:
        sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    try:
        info: dict[str, Any] = json.loads(body)
    except ValueError:
        return None
    info["healthy"] = head.split(b" ", 2)[1:2] == [b"200"]
    return info


def _synced(info: dict[str, Any] | None, since: float) -> bool:
    last = info.get("lastUpdated") if info else None
    return bool(info and info["healthy"]) and isinstance(last, int | float) and last >= since


def _failing(info: dict[str, Any] | None) -> bool:
    return bool(info and info.get("failing"))


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "  (no log)"
    return "\n".join(f"  {line}" for line in text.splitlines()[-lines:])

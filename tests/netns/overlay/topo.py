"""A small cluster in network namespaces for the overlay tests and bench: L2 segments (a bridge in a switch
namespace each), a router joining two segments, a control namespace running etcd, nodes running `cnipy agent`,
and pods attached with the cnipy-overlay plugin. Every name starts with `cno` + hex; `close()` removes all,
processes first, also after a failure half-way."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnipy.netlink.ns import entered

ROOT = Path(__file__).resolve().parents[3]
PY = str(ROOT / ".venv" / "bin" / "python3")
ETCD_PORT = 2379


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def in_ns(ns: str, *cmd: str, check: bool = True, timeout: float = 30) -> str:
    return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)


@dataclass
class Node:
    name: str
    ns: str
    ip: ipaddress.IPv4Interface
    segment: int
    dir: Path
    agent: subprocess.Popen[bytes] | None = None
    pods: list[Pod] = field(default_factory=list)

    @property
    def subnet_file(self) -> Path:
        return self.dir / "subnet.env"


@dataclass
class Pod:
    name: str
    ns: str
    node: Node
    ip: ipaddress.IPv4Address


def ns_http(ns: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path> inside namespace `ns`."""
    with entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        sock.close()


def tcp_exchange(src: Pod, dst: Pod, port: int = 7001, timeout: float = 2.0) -> bool:
    """Open a TCP connection from pod `src` to pod `dst` and exchange bytes; also checks that `dst` sees
    `src`'s own pod address (no masquerade between pods)."""
    with entered(dst.ns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with entered(src.ns):
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    seen: list[str] = []
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((str(dst.ip), port))
        srv.listen(1)
        srv.settimeout(timeout)

        def serve() -> None:
            with contextlib.suppress(OSError):
                conn, peer = srv.accept()
                with conn:
                    conn.settimeout(timeout)
                    seen.append(peer[0])
                    conn.sendall(conn.recv(64)[::-1])

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        cli.settimeout(timeout)
        cli.connect((str(dst.ip), port))
        cli.sendall(b"ping-overlay")
        ok = cli.recv(64) == b"yalrevo-gnip"
        t.join(timeout)
        return ok and seen == [str(src.ip)]
    except OSError:
        return False
    finally:
        cli.close()
        srv.close()


class Cluster:
    def __init__(self, backend: str = "vxlan", segments: int = 1, direct_routing: bool = False,
                 lease_ttl: int = 60, resync: float = 2.0, bridge_types: tuple[str, str] | None = None,
                 backend_options: dict[str, object] | None = None, static: bool = False) -> None:
        self.backend_options = backend_options or {}
        self.static = static  # no etcd: every agent shares one FileEtcd lease file (one machine)
        self.tag = f"cno{secrets.token_hex(3)}"
        self.backend, self.segments, self.direct_routing = backend, segments, direct_routing
        self.lease_ttl, self.resync = lease_ttl, resync
        self.bridge_types = bridge_types or ("cnipy-bridge", "cnipy-host-local")
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.namespaces: list[str] = []
        self.nodes: list[Node] = []
        self.etcd: subprocess.Popen[bytes] | None = None
        self.ctl = f"{self.tag}ctl"
        self.etcd_url = f"http://172.30.1.2:{ETCD_PORT}"

    # -- building ---------------------------------------------------------------------------------------

    def _ns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    def _wire(self, ns: str, ifname: str, segment: int, ip: str) -> None:
        sw = f"{self.tag}s{segment}"
        port = f"p{secrets.token_hex(4)}"
        sh("ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", sw)
        sh("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", ip, "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "up")

    def build(self, nodes: int) -> Cluster:
        for s in range(1, self.segments + 1):
            sw = self._ns(f"{self.tag}s{s}")
            sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br0", "up")
        if self.segments > 1:
            rt = self._ns(f"{self.tag}rt")
            for s in range(1, self.segments + 1):
                self._wire(rt, f"eth{s}", s, f"172.30.{s}.1/24")
            in_ns(rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._ns(self.ctl)
        self._wire(self.ctl, "eth0", 1, "172.30.1.2/24")
        if self.segments > 1:
            sh("ip", "-n", self.ctl, "route", "add", "default", "via", "172.30.1.1")
        if not self.static:
            self.start_etcd()
        for _ in range(nodes):
            self.add_node()
        return self

    def add_node(self, segment: int | None = None) -> Node:
        i = len(self.nodes) + 1
        seg = segment or (1 if self.segments == 1 else (1 if i % 2 else 2))
        ns = self._ns(f"{self.tag}n{i}")
        ip = ipaddress.IPv4Interface(f"172.30.{seg}.{10 + i}/24")
        self._wire(ns, "eth0", seg, str(ip))
        sh("ip", "-n", ns, "route", "add", "default", "via", f"172.30.{seg}.1")
        in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        node = Node(f"n{i}", ns, ip, seg, self.dir / f"n{i}")
        node.dir.mkdir(mode=0o700)
        self.nodes.append(node)
        return node

    def network_config(self) -> dict[str, object]:
        backend: dict[str, object] = {"Type": self.backend, "VNI": 1, "Port": 4789}
        if self.direct_routing:
            backend["DirectRouting"] = True
        backend.update(self.backend_options)
        return {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": backend}

    # -- etcd -------------------------------------------------------------------------------------------

    def start_etcd(self) -> None:
        data = self.dir / "etcd"
        log = open(self.dir / "etcd.log", "ab")  # noqa: SIM115 - handed to the process
        self.etcd = subprocess.Popen(
            ["ip", "netns", "exec", self.ctl, "etcd", "--name", "ctl", "--data-dir", str(data),
             "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
             "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls",
             "http://127.0.0.1:2380", "--initial-cluster", "ctl=http://127.0.0.1:2380"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with entered(self.ctl):
                s = socket.socket()
            try:
                s.settimeout(0.5)
                s.connect(("172.30.1.2", ETCD_PORT))
                return
            except OSError:
                time.sleep(0.1)
            finally:
                s.close()
        raise RuntimeError("etcd did not start: " + (self.dir / "etcd.log").read_text()[-2000:])

    def stop_etcd(self) -> None:
        if self.etcd is not None:
            _stop(self.etcd)
            self.etcd = None

    # -- agents -----------------------------------------------------------------------------------------

    def start_agent(self, node: Node, *extra: str) -> None:
        conf = self.dir / "net-conf.json"
        conf.write_text(json.dumps(self.network_config()))
        log = open(node.dir / "agent.log", "ab")  # noqa: SIM115
        node.agent = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, PY, "-c",
             "import sys; from cnipy.cli.agent import agent_command; agent_command(sys.argv[1:])",
             "--node", node.name, "--network-config", str(conf),
             *(["--static-store", str(self.dir / "leases.json")] if self.static else ["--etcd", self.etcd_url]),
             "--public-ip", str(node.ip.ip), "--subnet-file", str(node.subnet_file),
             "--lease-ttl", str(self.lease_ttl), "--resync", str(self.resync), "--listen", "127.0.0.1:9867",
             *extra],
            stdout=log, stderr=log, cwd=ROOT, start_new_session=True)
        log.close()

    def stop_agent(self, node: Node, release: bool = False) -> None:
        if node.agent is None:
            return
        if release:
            # Node removal: the agent gives its subnet back on SIGTERM when started with --release-on-exit.
            pass
        _stop(node.agent)
        node.agent = None

    def wait_ready(self, nodes: list[Node] | None = None, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            while True:
                try:
                    if ns_http(node.ns, 9867, "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"agent on {node.name} not ready:\n{self.logs(node)}")
                time.sleep(0.1)

    def logs(self, node: Node) -> str:
        try:
            return (node.dir / "agent.log").read_text()[-3000:]
        except OSError:
            return ""

    # -- pods -------------------------------------------------------------------------------------------

    def cni(self, node: Node, command: str, pod_ns: str, cid: str, **extra: object) -> dict[str, object]:
        bridge, ipam = self.bridge_types
        conf = {"cniVersion": "1.1.0", "name": "overlay", "type": "cnipy-overlay", **extra,
                "subnetFile": str(node.subnet_file), "dataDir": str(node.dir / "cni"),
                "bridgeType": bridge, "ipamType": ipam, "delegate": {"ipam": {"dataDir": str(node.dir / "ipam")}}}
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": f"{ROOT / 'plugins'}:/usr/lib/cni"}
        out = subprocess.run(["ip", "netns", "exec", node.ns, str(ROOT / "plugins" / "cnipy-overlay")],
                             input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"cnipy-overlay {command} on {node.name}: {out.stdout!r} {out.stderr!r}")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def add_pod(self, node: Node) -> Pod:
        name = f"{node.name}p{len(node.pods) + 1}"
        ns = self._ns(f"{self.tag}{name}")
        result = self.cni(node, "ADD", ns, f"{self.tag}{name}")
        ips = result["ips"]
        assert isinstance(ips, list)
        pod = Pod(name, ns, node, ipaddress.IPv4Interface(ips[0]["address"]).ip)
        node.pods.append(pod)
        return pod

    def pods(self) -> list[Pod]:
        return [p for n in self.nodes for p in n.pods]

    def unreachable(self, pods: list[Pod] | None = None) -> list[tuple[str, str]]:
        pods = pods or self.pods()
        return [(a.name, b.name) for a in pods for b in pods
                if a.node is not b.node and not tcp_exchange(a, b)]

    def wait_reachable(self, timeout: float = 10, pods: list[Pod] | None = None) -> float:
        started = time.monotonic()
        while True:
            bad = self.unreachable(pods)
            if not bad:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"unreachable pairs: {bad}\n" +
                                     "\n".join(f"--- {n.name}\n{self.logs(n)}" for n in self.nodes))
            time.sleep(0.2)

    # -- teardown ---------------------------------------------------------------------------------------

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.stop_agent(node)
        with contextlib.suppress(Exception):
            self.stop_etcd()
        for ns in reversed(self.namespaces):
            pids = sh("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "delete", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(8)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


if __name__ == "__main__":  # manual: python -m tests.netns.overlay.topo
    with Cluster().build(2) as c:
        for n in c.nodes:
            c.start_agent(n)
        c.wait_ready()
        print(sys.argv, [c.add_pod(n).ip for n in c.nodes], c.wait_reachable())

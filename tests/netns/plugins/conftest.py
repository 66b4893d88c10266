"""Running CNI plugins the way a runtime does, inside a "node" namespace the test made.

Every bridge, veth and rule lives in namespaces named `cnb<hex>`; the fixtures delete them even when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import netns as N

ROOT = Path(__file__).resolve().parents[3]
OURS = ROOT / "plugins"
GO = Path("/usr/lib/cni")
CNI_PATH = f"{OURS}:{GO}"
# Under the VM tier's emulated CPU an interpreter start plus pyroute2's import takes many seconds.
CALL_TIMEOUT = 240.0 if os.environ.get("CNIPY_VM_GUEST") == "1" else 30.0


@dataclass
class Call:
    rc: int
    out: Any
    stderr: str

    @property
    def code(self) -> int | None:
        return self.out.get("code") if isinstance(self.out, dict) else None


def cni(node: N.Netns, plugin: str, command: str, conf: dict[str, Any], *, netns: str = "", ifname: str = "eth0",
        cid: str = "c1", extra_env: dict[str, str] | None = None, timeout: float = 0) -> Call:
    """Run one CNI verb of `plugin` (a path or a name in plugins/) inside `node`, with a runtime's clean env."""
    exe = plugin if "/" in plugin else str(OURS / plugin)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": CNI_PATH}
    if command not in ("GC", "STATUS", "VERSION"):
        env.update(CNI_CONTAINERID=cid, CNI_IFNAME=ifname)
    if netns:
        env["CNI_NETNS"] = netns
    env.update(extra_env or {})
    argv = ["ip", "netns", "exec", node.name, "env", "-i", *[f"{k}={v}" for k, v in env.items()], exe]
    proc = subprocess.run(argv, input=json.dumps(conf), text=True, capture_output=True,
                          timeout=timeout or CALL_TIMEOUT, check=False)
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        out = proc.stdout
    return Call(proc.returncode, out, proc.stderr)


def ok(call: Call) -> Any:
    assert call.rc == 0, f"plugin failed: {call.out} {call.stderr}"
    return call.out


@dataclass
class Lab:
    """A node namespace with pods; `conf()` builds network configs with a private IPAM data dir."""

    node: N.Netns
    data_dir: Path
    made: list[N.Netns] = field(default_factory=list)

    def pod(self) -> N.Netns:
        ns = N.add(N.unique("cnb"))
        self.made.append(ns)
        return ns

    def conf(self, plugin: str = "cnipy-bridge", *, subnet: str = "10.88.0.0/24", ipam: str = "cnipy-host-local",
             version: str = "1.1.0", name: str = "cnbnet", **keys: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {"cniVersion": version, "name": name, "type": plugin}
        if ipam:
            ranges = [[{"subnet": s}] for s in subnet.split(",")]
            conf["ipam"] = {"type": ipam, "ranges": ranges, "dataDir": str(self.data_dir)}
        conf.update(keys)
        return conf

    def leftovers(self) -> dict[str, list[str]]:
        """Veths, masquerade chains, nft tables and IPAM files that remain on the node."""
        links = self.node.run("ip", "-o", "link", "show", "type", "veth").stdout.split("\n")
        nat = self.node.run("iptables-save", "-t", "nat").stdout + self.node.run(
            "ip6tables-save", "-t", "nat").stdout
        nft = self.node.run("nft", "-j", "list", "ruleset").stdout
        rules = [r["rule"].get("comment", "") for r in json.loads(nft).get("nftables", []) if "rule" in r]
        files = [str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*")
                 if p.is_file() and p.name not in ("lock",) and not p.name.startswith("last_reserved_ip")]
        return {"veths": [ln for ln in links if ln.strip()],
                "chains": [ln for ln in nat.splitlines() if "CNIPY" in ln or "CNI-" in ln],
                "nft_rules": rules, "ipam_files": files}


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[[], Lab]]:
    labs: list[Lab] = []

    def make() -> Lab:
        node = N.add(N.unique("cnb"))
        lab = Lab(node, tmp_path / f"ipam{len(labs)}")
        labs.append(lab)
        lab.data_dir.mkdir()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            for ns in reversed(lab.made):
                N.delete(ns)
            N.delete(lab.node)


@pytest.fixture
def lab(lab_factory: Callable[[], Lab]) -> Lab:
    return lab_factory()


def link_pair(a: N.Netns, b: N.Netns, a_addr: str, b_addr: str) -> str:
    """A veth between two namespaces with addresses (an "outside" network next to the node); its name in `a`
    (it is `up0` in `b`)."""
    name = N.unique("cnb")
    N.run(["ip", "link", "add", name, "netns", a.name, "type", "veth", "peer", "name", "up0", "netns", b.name])
    a.run("ip", "addr", "add", a_addr, "dev", name)
    a.run("ip", "link", "set", name, "up")
    b.run("ip", "addr", "add", b_addr, "dev", "up0")
    b.run("ip", "link", "set", "up0", "up")
    return name


SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""

CLIENT = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(s.recv(100).decode())
"""


@dataclass
class Server:
    proc: subprocess.Popen[str]
    addr: str
    port: int


@pytest.fixture
def serve() -> Iterator[Callable[[N.Netns, str, int], Server]]:
    """Start a TCP server in a namespace that answers each connection with the peer's address."""
    procs: list[subprocess.Popen[str]] = []

    def start(ns: N.Netns, addr: str, port: int = 8080) -> Server:
        proc = ns.popen("python3", "-c", SERVER, addr, str(port), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        return Server(proc, addr, port)

    yield start
    for p in procs:
        p.kill()
        p.wait()


def peer_seen(ns: N.Netns, server: Server, timeout: float = 3) -> str | None:
    """Connect from `ns`; the source address the server saw, or None when the connection fails."""
    proc = ns.run("python3", "-c", CLIENT, server.addr, str(server.port), str(timeout), check=False,
                  timeout=timeout + 10)
    return proc.stdout.strip() if proc.returncode == 0 else None


def pod_ip(result: dict[str, Any], family: int = 4) -> str:
    for ip in result["ips"]:
        addr = ip["address"].split("/")[0]
        if (":" in addr) == (family == 6):
            return str(addr)
    raise AssertionError(f"no IPv{family} address in {result}")


def as_prev(conf: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**conf, "prevResult": result}


def with_attachments(conf: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {**conf, "cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in pairs]}



"""A real runtime: Debian's podman 4.3 with its CNI back end runs two containers on a cnipy-bridge network.

They get addresses from cnipy-host-local and exchange TCP traffic; removing them leaves no veth on the bridge,
no address file and no masquerade rule. podman is isolated from the machine's own set-up: its containers.conf
(CONTAINERS_CONF), CNI config dir, storage (--root/--runroot/--tmpdir) and the busybox root file system all live
in a temporary directory. The plugin directory is the compiled fronts (the default invocation path) followed by
/usr/lib/cni; the calls go through a private cnipy daemon ("daemon") or, with no daemon, fall back to Python
("fallback"). The bridge lives in the root namespace, so it gets a unique name (cnp + hex) and an unused subnet;
teardown removes the containers, the bridge and our masquerade rules whatever happened.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnipy.cni import build_front
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python3"
BUSYBOX = Path("/bin/busybox")
RUN_FLAGS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def sh(*cmd: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check, env=env)


def free_subnet() -> ipaddress.IPv4Network:
    routes = sh("ip", "-4", "route", "show", "table", "all").stdout
    addrs = sh("ip", "-4", "-o", "addr").stdout
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24")
        prefix = str(net.network_address).rsplit(".", 1)[0] + "."
        if prefix not in routes and prefix not in addrs:
            return net
    raise RuntimeError("no free 10.200-249.x.0/24 subnet")


def short_hash(text: str, n: int) -> str:
    return hashlib.sha512(text.encode()).hexdigest()[:n]


@dataclass
class Setup:
    work: Path
    network: str
    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: Path
    env: dict[str, str]
    daemon_log: Path | None

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        base = ["podman", "--root", str(self.work / "root"), "--runroot", str(self.work / "runroot"),
                "--tmpdir", str(self.work / "tmp"), "--storage-driver", "vfs", "--runtime", "runc",
                "--cgroup-manager=cgroupfs"]
        return sh(*base, *args, check=check, timeout=timeout, env=self.env)

    def run_args(self, name: str, *flags: str) -> list[str]:
        # --rootfs makes the next argument the root file system, so every flag goes before it.
        return ["run", "--name", name, *flags, *RUN_FLAGS, "--network", self.network,
                "--rootfs", str(self.work / "rootfs")]


def our_rules(network: str, subnet: ipaddress.IPv4Network) -> list[str]:
    """Every iptables or nftables line that belongs to this network (by our chain hash, tag or subnet)."""
    needles = (f"CNIPY-{short_hash(network, 8)}", short_hash(network, 16), str(subnet.network_address)[:-1])
    lines = []
    for cmd in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        if shutil.which(cmd[0]):
            lines += sh(*cmd, check=False).stdout.splitlines()
    return [line for line in lines if any(n in line for n in needles)]


def remove_rules(network: str) -> None:
    chain = f"CNIPY-{short_hash(network, 8)}"
    for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if not shutil.which(save):
            continue
        dump = sh(save, "-t", "nat", check=False).stdout.splitlines()
        for line in dump:
            if line.startswith("-A POSTROUTING") and chain in line:
                sh(tool, "-t", "nat", "-D", *shlex.split(line)[1:], check=False)
        for line in dump:
            if line.startswith(f":{chain}"):
                name = line[1:].split()[0]
                sh(tool, "-t", "nat", "-F", name, check=False)
                sh(tool, "-t", "nat", "-X", name, check=False)
    if shutil.which("nft"):
        tag = short_hash(network, 16)
        listing = sh("nft", "-a", "list", "chain", "inet", "cnipy_masq", "postrouting", check=False).stdout
        for line in listing.splitlines():
            if tag in line and "# handle " in line:
                handle = line.rsplit("# handle ", 1)[1].strip()
                sh("nft", "delete", "rule", "inet", "cnipy_masq", "postrouting", "handle", handle, check=False)


def make_rootfs(path: Path) -> None:
    (path / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in sh(str(BUSYBOX), "--list").stdout.split():
        if applet != "busybox":
            (path / "bin" / applet).symlink_to("busybox")


def start_daemon(sock: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(PYTHON), "-m", "cnipy.cni.daemon", "--socket", str(sock), "--verbose"],
                                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the cnipy daemon did not start: {log.read_text()}")


def nft_tables() -> set[tuple[str, str]]:
    out = sh("nft", "list", "tables", check=False).stdout.split("\n")
    return {(w[1], w[2]) for w in (line.split() for line in out) if len(w) == 3 and w[0] == "table"}


def drop_new_empty_tables(before: set[tuple[str, str]]) -> None:
    """iptables-nft creates `ip nat` on first use and never deletes it: leave the host's tables as they were."""
    for family, name in nft_tables() - before:
        dump = json.loads(sh("nft", "-j", "list", "table", family, name, check=False).stdout or "{}")
        if not any("rule" in obj for obj in dump.get("nftables", [])):
            sh("nft", "delete", "table", family, name, check=False)


@pytest.fixture(params=["daemon", "fallback"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need("podman", "runc", "iptables-save")
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (bin/setup installs it)")
    fronts = build_front.DEFAULT_OUT
    try:
        build_front.build(fronts)
    except build_front.BuildError as exc:
        pytest.skip(f"cannot build the CNI front: {exc}")
    tables_before = nft_tables()
    work = tmp_path_factory.mktemp("cnfpodman")
    os.chmod(work, 0o700)
    suffix = secrets.token_hex(4)
    network, bridge, subnet = f"cnf{suffix}", f"cnp{suffix}", free_subnet()
    data_dir = work / "ipam"
    for d in ("root", "runroot", "tmp", "cni"):
        (work / d).mkdir()
    make_rootfs(work / "rootfs")
    sock = work / "run" / "cni.sock" if request.param == "daemon" else work / "no-daemon.sock"
    # engine.env reaches the `podman container cleanup` that conmon starts (it DELs); our environment does not.
    (work / "containers.conf").write_text(
        "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n"
        f"env = [\"CNIPY_CNI_SOCKET={sock}\"]\n"
        f"[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{fronts}\", \"/usr/lib/cni\"]\n"
        f"network_config_dir = \"{work / 'cni'}\"\n")
    conflist = {"cniVersion": "1.0.0", "name": network, "plugins": [{
        "type": "cnipy-bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
        "ipam": {"type": "cnipy-host-local", "ranges": [[{"subnet": str(subnet)}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)}}]}
    (work / "cni" / f"{network}.conflist").write_text(json.dumps(conflist, indent=2))
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(work),
           "CONTAINERS_CONF": str(work / "containers.conf")}
    daemon: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    env["CNIPY_CNI_SOCKET"] = str(sock)
    if request.param == "daemon":
        log = work / "daemon.log"
        daemon = start_daemon(sock, log)
    s = Setup(work, network, bridge, subnet, data_dir, env, log)
    try:
        yield s
    finally:
        s.podman("rm", "--all", "--force", "--time", "0", check=False)
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        sh("ip", "link", "delete", bridge, check=False)
        remove_rules(network)
        drop_new_empty_tables(tables_before)
        shutil.rmtree(work, ignore_errors=True)


def test_two_containers_talk_over_a_cnipy_bridge(setup: Setup) -> None:
    s = setup
    server = f"cnfa{secrets.token_hex(3)}"
    # The server's stdin stays open for 2 s: with a bare "echo from-a | nc -l", nc could close on its stdin's end
    # before the client's line arrived, and its log stayed empty.
    s.podman(*s.run_args(server, "-d"), "/bin/sh", "-c", "(echo from-a; sleep 2) | nc -l -p 8080")
    ip_a = s.podman("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    server).stdout.strip()
    assert ipaddress.IPv4Address(ip_a) in s.subnet
    assert sh("ip", "-o", "link", "show", "master", s.bridge).stdout.strip() != ""  # the server's veth

    client = s.podman(*s.run_args(f"cnfb{secrets.token_hex(3)}", "--rm"), "/bin/sh", "-c",
                      "ip -4 -o addr show eth0; "
                      f"for i in 1 2 3 4 5 6 7 8 9 10; do echo from-b | nc -w 3 {ip_a} 8080 && exit 0; "
                      "sleep 0.5; done; exit 1", check=False)
    assert client.returncode == 0, client.stderr
    assert "from-a" in client.stdout
    ip_b = ipaddress.IPv4Interface(client.stdout.split("inet ", 1)[1].split()[0])
    assert ip_b.ip in s.subnet and str(ip_b.ip) != ip_a
    assert s.podman("wait", server).stdout.strip() == "0"
    assert "from-b" in s.podman("logs", server).stdout

    # conmon starts `podman container cleanup` (the CNI DEL) when the container exits, concurrently with this
    # rm; the end state is what counts, so look for it for a while.
    removed = s.podman("rm", "--force", server, check=False)
    deadline = time.monotonic() + 20
    while True:
        veths = sh("ip", "-o", "link", "show", "master", s.bridge).stdout.strip()
        leftovers = sorted(p.name for p in (s.data_dir / s.network).iterdir() if p.name != "lock"
                           and not p.name.startswith("last_reserved_ip"))
        rules = our_rules(s.network, s.subnet)
        if not (veths or leftovers or rules) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert veths == "", f"a veth was left behind: {veths} (rm: {removed.stderr})"
    assert leftovers == [], f"address files left: {leftovers} (rm: {removed.stderr})"
    assert rules == [], f"masquerade rules left behind: {rules}"
    assert s.podman("ps", "--all", "--quiet").stdout.strip() == ""
    if s.daemon_log is not None:  # the calls really went through the daemon
        log = s.daemon_log.read_text()
        assert "cnipy-bridge ADD -> 0" in log and "cnipy-bridge DEL -> 0" in log, log

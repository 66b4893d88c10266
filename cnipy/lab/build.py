"""`lab up`: namespaces, underlay, node settings, the back end, pods attached through CNI, then Services.

`up` is idempotent: a lab that is up with the same spec is left as it is (a service proxy that stopped is started
again); the remains of an interrupted `up` are removed (`down`) and the lab is built anew. lab.json is written
before anything is created, so `down` always knows the spec, and says `"phase": "up"` only once everything is in
place (with Services that did not become ready too: the rest works, and ServicesNotReady says what does not).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cnipy.lab import backend as backends
from cnipy.lab import procs, runtime, services, sh
from cnipy.lab.errors import LabError, ServicesNotReady
from cnipy.lab.files import locked, private_dir, write_json
from cnipy.lab.model import Lab, LabSpec, Node, plan
from cnipy.lab.progress import NullProgress, Progress
from cnipy.lab.state import read_state, write_state

SYSCTLS_FILE = Path(__file__).with_name("node-sysctls.conf")
MAX_SOCKET_PATH = 107
DAEMON_START_TIMEOUT = 60.0
ATTACH_WORKERS = 8


def up(spec: LabSpec, progress: Progress | None = None) -> Lab:
    progress = progress or NullProgress()
    lab = plan(spec)
    backend = backends.load(spec.backend)  # fail before anything is made
    _check_plugins(lab)
    services.check_tools(spec.services)
    with locked(lab.state_dir):
        return _up(lab, backend, progress)


def _up(lab: Lab, backend: backends.Backend, progress: Progress) -> Lab:
    from cnipy.lab.teardown import remove

    spec = lab.spec
    state = read_state(lab.state_dir)
    if state is not None:
        if state.spec != spec:
            raise LabError(f"lab {spec.name} exists with another shape ({state.spec.describe()}); "
                           f"run `cnipy lab down --name {spec.name}` first")
        if state.phase == "up" and all(ns in set(sh.netns_list()) for ns in lab.all_netns()):
            progress.step(f"lab {spec.name} is already up")
            if spec.services != "none":  # a proxy that stopped starts again, as a node's service manager does
                services.start_proxies(lab)
                services.wait_ready(lab, since=0.0)
            progress.finish()
            return lab
    if state is not None or any(ns.startswith(lab.prefix) for ns in sh.netns_list()):
        progress.step("removing the remains of an earlier lab")
        report = remove(spec.name, spec.state_root, NullProgress(), detach=True)
        if report.leftovers:
            raise LabError(f"could not remove the remains of lab {spec.name}: {', '.join(report.leftovers)}")
    private_dir(lab.state_dir)
    write_state(lab, "building")
    started = time.monotonic()

    progress.step(f"creating {len(lab.all_netns())} network namespaces")
    sh.ip_batch(None, [f"netns add {ns}" for ns in lab.all_netns()])
    daemons = spec.uses_cni_daemon and bool(lab.pods)
    if daemons:  # they warm up (imports) while the rest is built; attaching waits for them
        spawn_cni_daemons(lab)
    progress.step(f"wiring the underlay ({len(lab.segments)} segment{'s' if len(lab.segments) > 1 else ''})")
    sh.ip_batch(None, _veth_lines(lab))
    for seg in lab.segments:
        sh.ip_batch(seg.netns, _switch_lines(lab, seg.index))
    for host in lab.hosts():
        sh.ip_batch(host.netns, _host_lines(lab, host.name, host.underlay_ip, host.gateway))
    progress.step(f"configuring {len(lab.nodes)} nodes (addresses, sysctls, CNI config)")
    settings = read_sysctls(SYSCTLS_FILE)
    for node in lab.nodes:
        sh.ip_batch(node.netns, _host_lines(lab, "node", node.underlay_ip, node.gateway))
        apply_sysctls(node.netns, settings)
        for d in (node.cni_conf_dir, node.cni_cache_dir, node.ipam_dir, node.run_dir):
            private_dir(d)
    if lab.router is not None:
        apply_sysctls(lab.router.netns, [("net.ipv4.ip_forward", "1")])
    private_dir(lab.backend_dir)

    progress.step(f"starting the {spec.backend} back end")
    backend.prepare(lab)
    conflists = {}
    for node in lab.nodes:
        conflists[node.name] = backend.node_network_config(lab, node)
        write_json(node.cni_conf_dir / backends.CONFLIST_NAME, conflists[node.name])

    if daemons:
        progress.step(f"waiting for {len(lab.nodes)} CNI node daemons")
        wait_for_cni_daemons(lab)
    progress.step(f"attaching {len(lab.pods)} pods with CNI ({lab.plugins.bridge})")
    _attach_all(lab, conflists, progress)
    not_ready: ServicesNotReady | None = None
    if spec.services != "none":
        progress.step(f"Services: a cnipy proxy ({spec.services}) on each of {len(lab.nodes)} nodes")
        since = time.time()
        services.publish(lab)
        services.start_proxies(lab)
        try:
            services.wait_ready(lab, since)
        except ServicesNotReady as exc:  # the rest of the lab works: it is up, and says what is wrong
            not_ready = exc
    write_state(lab, "up", seconds=time.monotonic() - started)
    progress.finish()
    if not_ready is not None:
        raise not_ready
    return lab


def _attach_all(lab: Lab, conflists: dict[str, dict[str, Any]], progress: Progress) -> None:
    total = len(lab.pods)
    done = 0
    lock = threading.Lock()
    progress.count(0, total)

    def attach_node(node: Node) -> None:
        nonlocal done
        for pod in lab.pods_on(node):
            runtime.add(lab, node, pod, conflists[node.name])
            with lock:
                done += 1
                progress.count(done, total)

    workers = max(1, min(ATTACH_WORKERS, len(lab.nodes)))
    with ThreadPoolExecutor(workers, thread_name_prefix="cnipy-lab-attach") as pool:
        for future in [pool.submit(attach_node, node) for node in lab.nodes]:
            future.result()


def spawn_cni_daemons(lab: Lab) -> None:
    """One cnipy CNI daemon per node, inside the node (it does the host side of a call in its own namespace)."""
    for node in lab.nodes:
        private_dir(node.cni_socket.parent)
        procs.spawn(lab, node.netns, f"cni-daemon-{node.name}", [
            sys.executable, "-m", "cnipy.cni.daemon", "--socket", str(node.cni_socket), "--processes", "1"])


def wait_for_cni_daemons(lab: Lab) -> None:
    """Until every daemon's socket is up; one that is not only makes calls slower (the front runs Python)."""
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while time.monotonic() < deadline and not all(n.cni_socket.exists() for n in lab.nodes):
        time.sleep(0.05)


def _check_plugins(lab: Lab) -> None:
    if lab.spec.pods_per_node == 0:
        return
    if lab.spec.uses_cni_daemon and any(len(str(n.cni_socket)) > MAX_SOCKET_PATH for n in lab.nodes):
        raise LabError(f"{lab.nodes[-1].cni_socket} is too long for a unix socket: use a shorter --state-root")
    p = lab.plugins
    missing = [t for t in (p.bridge, p.host_local, p.loopback) if not (p.directory / t).is_file()]
    if missing:
        raise LabError(f"CNI plugins missing in {p.directory}: {', '.join(missing)}")


def _veth_lines(lab: Lab) -> list[str]:
    seg_ns = {s.index: s.netns for s in lab.segments}
    lines = [f"link add eth0 netns {node.netns} type veth peer name {node.name} netns {seg_ns[node.segment]}"
             for node in lab.nodes]
    for host in (lab.control, lab.client):
        lines.append(f"link add eth0 netns {host.netns} type veth peer name {host.name} netns {seg_ns[1]}")
    if lab.router is not None:
        lines += [f"link add s{s.index} netns {lab.router.netns} type veth peer name router netns {s.netns}"
                  for s in lab.segments]
    return lines


def _switch_lines(lab: Lab, segment: int) -> list[str]:
    ports = [n.name for n in lab.nodes if n.segment == segment]
    if segment == 1:
        ports += [lab.control.name, lab.client.name]
    if lab.router is not None:
        ports.append("router")
    lines = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
    for port in ports:
        lines += [f"link set {port} master br0", f"link set {port} up"]
    return lines


def _host_lines(lab: Lab, role: str, ip: Any, gateway: Any) -> list[str]:
    if role == "router":
        lines = ["link set lo up"]
        for seg in lab.segments:
            lines += [f"addr add {seg.subnet.network_address + 1}/{seg.subnet.prefixlen} dev s{seg.index}",
                      f"link set s{seg.index} up"]
        return lines
    lines = ["link set lo up", f"addr add {ip} dev eth0", "link set eth0 up"]
    if gateway is not None:
        lines.append(f"route add default via {gateway} dev eth0")
    return lines


def read_sysctls(path: Path) -> list[tuple[str, str]]:
    settings = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def apply_sysctls(netns: str, settings: Iterable[tuple[str, str]]) -> list[str]:
    """Write `settings` inside `netns`; returns the keys this kernel does not have (they are skipped)."""
    from cnipy.netlink.ns import call_in

    def write() -> list[str]:
        absent = []
        for key, value in settings:
            try:
                with open("/proc/sys/" + key.replace(".", "/"), "w") as fh:
                    fh.write(value)
            except FileNotFoundError:
                absent.append(key)
        return absent

    return call_in(netns, write)



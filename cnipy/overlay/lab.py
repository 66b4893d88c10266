"""The lab's `vxlan` and `host-gw` back ends (cnipy/lab/backend.py): etcd on the control host, `cnipy agent` on
every node, pods attached with cnipy-overlay (delegating to the lab's bridge and host-local plugins).

    lab.backend_dir/etcd/            etcd's data         lab.backend_dir/net-conf.json   network config
    node.run_dir/subnet.env          the agent's file     node.run_dir/overlay/           cnipy-overlay state

Every process is started with `cnipy.lab.procs.spawn`, so `lab down` stops it even after a crash; everything
else lives in the lab's namespaces and state directory, so `teardown` only has to stop the agents (which keep
their leases: a later `up` of the same lab gets the same subnets back from the same etcd data).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cnipy.lab import procs
from cnipy.lab.backend import CNI_VERSION, NETWORK_NAME
from cnipy.lab.errors import LabError
from cnipy.lab.files import private_dir, write_private
from cnipy.lab.model import Lab, Node
from cnipy.netlink.ns import entered

ETCD_PORT = 2379
STATUS_PORT = 9867
START_TIMEOUT = 60.0
AGENT = "import sys; from cnipy.cli.agent import agent_command; agent_command(sys.argv[1:])"


def _connects(netns: str, host: str, port: int) -> bool:
    with entered(netns):
        sock = socket.socket()
    try:
        sock.settimeout(0.5)
        sock.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _wait(what: str, ok: Any, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise LabError(f"{what} did not come up within {timeout:.0f} s (see the lab's logs/)")
        time.sleep(0.1)


class OverlayBackend:
    kind = "vxlan"
    direct_routing = False

    def etcd_url(self, lab: Lab) -> str:
        return f"http://{lab.control.underlay_ip.ip}:{ETCD_PORT}"

    def subnet_file(self, node: Node) -> Path:
        return node.run_dir / "subnet.env"

    def prepare(self, lab: Lab) -> None:
        running = procs.recorded(lab)
        ctl = lab.control
        if "etcd" not in running:
            data = private_dir(lab.backend_dir / "etcd")
            url = self.etcd_url(lab)
            procs.spawn(lab, ctl.netns, "etcd", [
                "etcd", "--name", "ctl", "--data-dir", str(data), "--listen-client-urls", url,
                "--advertise-client-urls", url, "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "ctl=http://127.0.0.1:2380"])
        _wait("etcd", lambda: _connects(ctl.netns, str(ctl.underlay_ip.ip), ETCD_PORT))
        conf_path = lab.backend_dir / "net-conf.json"
        backend: dict[str, Any] = {"Type": self.kind, "VNI": 1, "Port": 4789}
        if self.direct_routing:
            backend["DirectRouting"] = True
        write_private(conf_path, json.dumps({"Network": str(lab.cluster_cidr), "SubnetLen": 24,
                                             "Backend": backend}) + "\n")
        for node in lab.nodes:
            if f"agent-{node.name}" in running:
                continue
            private_dir(node.run_dir)
            procs.spawn(lab, node.netns, f"agent-{node.name}", [
                sys.executable, "-c", AGENT, "--node", node.name, "--etcd", self.etcd_url(lab),
                "--network-config", str(conf_path), "--public-ip", str(node.underlay_ip.ip),
                "--subnet-file", str(self.subnet_file(node)), "--listen", f"127.0.0.1:{STATUS_PORT}",
                "--lease-ttl", "60", "--resync", "5"])
        for node in lab.nodes:
            _wait(f"the agent on {node.name}", self.subnet_file(node).exists)

    def node_network_config(self, lab: Lab, node: Node) -> dict[str, Any]:
        plugins = lab.plugins
        overlay = {
            "type": "cnipy-overlay", "subnetFile": str(self.subnet_file(node)),
            "dataDir": str(node.run_dir / "overlay"), "bridgeType": plugins.bridge, "ipamType": plugins.host_local,
            # as kube-flannel.yml: pods also get a default route (to reach the client and the outside)
            "delegate": {"isDefaultGateway": True, "ipam": {"dataDir": str(node.ipam_dir)}},
        }
        return {"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": [overlay, {"type": plugins.loopback}]}

    def teardown(self, lab: Lab) -> None:
        running = procs.recorded(lab)
        agents = [pid for name, pid in running.items() if name.startswith("agent-")]
        procs.kill_all(agents)
        if "etcd" in running:
            procs.kill_all([running["etcd"]])


class VxlanBackend(OverlayBackend):
    kind = "vxlan"


class VxlanDirectBackend(OverlayBackend):
    """vxlan with DirectRouting: nodes on the same segment are routed directly, others through VXLAN."""

    kind = "vxlan"
    direct_routing = True


class HostGwBackend(OverlayBackend):
    kind = "host-gw"

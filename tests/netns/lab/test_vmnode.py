"""The Vagrant node scripts' Python side (cnipy.lab.vmnode), with two namespaces standing in for two VMs on the
Vagrant private network: node set-up, pods attached with cnipy's plugins, the cross-"VM" probe, clean-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cnipy.lab import sh
from tests.netns.lab.conftest import HostSnapshot, leftovers

ROOT = Path(__file__).resolve().parents[3]


def vmnode(vm: str, index: int, name: str, state_root: Path, command: str,
           *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CNIPY_VM_STATE_ROOT=str(state_root / f"vm{index}"),
               CNIPY_VM_CNI_CONF_DIR=str(state_root / f"vm{index}" / "etc-cni"))
    # nsenter, not `ip netns exec`: a VM has one mount namespace, so pods it adds with `ip netns add` must be
    # visible to its later commands (ip netns exec gives each command a private mount namespace).
    argv = ["nsenter", f"--net=/run/netns/{vm}", sys.executable, "-m", "cnipy.lab.vmnode", command,
            "--index", str(index), "--nodes", "2", "--underlay", "192.168.56.0/24", "--count", "2", "--name", name,
            *extra]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_vm_nodes_attach_pods_and_reach_each_other(lab_name: str, state_root: Path) -> None:
    before = HostSnapshot.take()
    vms = [f"{lab_name}-vm1", f"{lab_name}-vm2"]
    sh.ip_batch(None, [f"netns add {vm}" for vm in vms])
    sh.ip_batch(None, [f"link add eth1 netns {vms[0]} type veth peer name eth1 netns {vms[1]}"])
    for i, vm in enumerate(vms, start=1):
        sh.ip_batch(vm, ["link set lo up", f"addr add 192.168.56.{10 + i}/24 dev eth1", "link set eth1 up"])
        # what vagrant/provision/node.sh does before it runs vmnode setup
        sh.run(sh.in_netns(vm, ["sysctl", "-q", "-p", str(ROOT / "cnipy" / "lab" / "node-sysctls.conf")]))
        done = vmnode(vm, i, lab_name, state_root, "setup")
        assert done.returncode == 0, done.stderr
    conf = state_root / "vm1" / "etc-cni" / "10-lab.conflist"
    assert json.loads(conf.read_text())["plugins"][0]["type"] == "cnipy-bridge"
    assert "10.244.2.0/24 via 192.168.56.12 dev eth1" in sh.run(["ip", "-n", vms[0], "route"]).stdout

    pods = []
    for i, vm in enumerate(vms, start=1):
        out = vmnode(vm, i, lab_name, state_root, "pods")
        assert out.returncode == 0, out.stderr
        pods += json.loads(out.stdout.strip().splitlines()[-1])
    assert [p["label"] for p in pods] == ["n1-p1", "n1-p2", "n2-p1", "n2-p2"] and all(p["ip"] for p in pods)
    targets = state_root / "targets.json"
    targets.write_text(json.dumps(pods))
    for i, vm in enumerate(vms, start=1):
        probe = vmnode(vm, i, lab_name, state_root, "probe", "--targets", str(targets))
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert probe.stdout.count("ok  ") == 3 and "across nodes" in probe.stdout

    for i, vm in enumerate(vms, start=1):
        assert vmnode(vm, i, lab_name, state_root, "clean").returncode == 0
    assert not [ns for ns in sh.netns_list() if ns.startswith(f"{lab_name}-n")]
    sh.ip_batch(None, [f"netns delete {vm}" for vm in vms])
    assert leftovers(lab_name, state_root, before) == []

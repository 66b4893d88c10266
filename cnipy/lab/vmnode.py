"""A Vagrant VM as a lab node: the lab's own plan, conflist, routes, CNI runtime and probes, on a whole machine.

vagrant/provision/node.sh runs `setup`; vagrant/run-e2e.sh runs `pods`, `probe` and `clean` on every VM:

    python -m cnipy.lab.vmnode setup --index 2 --nodes 3 --underlay 192.168.56.0/24
    python -m cnipy.lab.vmnode pods  --index 2 --nodes 3 --underlay 192.168.56.0/24 --count 2 > pods-2.json
    python -m cnipy.lab.vmnode probe --index 2 --nodes 3 --underlay 192.168.56.0/24 --count 2 --targets all.json
    python -m cnipy.lab.vmnode clean --index 2 --nodes 3 --underlay 192.168.56.0/24 --count 2

Node i has underlay address <underlay>.(10+i) and pod CIDR 10.244.i.0/24, as in the namespace lab; the node is
the machine itself (netns ""), so plugins run in the VM's own namespace, like under a real runtime.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from cnipy.lab import connectivity as check
from cnipy.lab import procs, runtime, sh
from cnipy.lab.backend import CONFLIST_NAME, bridge_conflist
from cnipy.lab.files import private_dir, write_json
from cnipy.lab.model import Lab, LabSpec, Node, plan
from cnipy.lab.static import route_line

STATE_ROOT = Path(os.environ.get("CNIPY_VM_STATE_ROOT", "/var/lib/cnipy-vm"))
CNI_CONF_DIR = Path(os.environ.get("CNIPY_VM_CNI_CONF_DIR", "/etc/cni/net.d"))


def vm_lab(nodes: int, count: int, underlay: IPv4Network, name: str = "vm") -> Lab:
    lab = plan(LabSpec(name=name, nodes=nodes, pods_per_node=count, state_root=STATE_ROOT, cni_daemon=False))
    moved = tuple(dataclasses.replace(n, netns="", gateway=None, underlay_ip=IPv4Interface(
        f"{underlay.network_address + 10 + n.index}/{underlay.prefixlen}")) for n in lab.nodes)
    return dataclasses.replace(lab, nodes=moved)


def underlay_device(node: Node) -> str:
    out = sh.run(["ip", "-o", "-4", "addr", "show", "to", str(node.underlay_ip.ip)]).stdout.split()
    if len(out) < 2:
        raise SystemExit(f"no interface has {node.underlay_ip.ip}: is this VM node {node.index}?")
    return out[1]


def setup(lab: Lab, node: Node) -> None:
    dev = underlay_device(node)
    sh.ip_batch(None, [route_line(lab, node, peer, dev) for peer in lab.nodes if peer != node])
    conflist = bridge_conflist(lab, node)
    for d in (node.cni_conf_dir, node.cni_cache_dir, node.ipam_dir, node.run_dir):
        private_dir(d)
    write_json(node.cni_conf_dir / CONFLIST_NAME, conflist)
    CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
    write_json(CNI_CONF_DIR / CONFLIST_NAME, conflist)


def pods(lab: Lab, node: Node) -> list[dict[str, str | None]]:
    conflist = json.loads((node.cni_conf_dir / CONFLIST_NAME).read_text())
    present = set(sh.netns_list())
    out = []
    for pod in lab.pods_on(node):
        if pod.netns not in present:
            sh.run(["ip", "netns", "add", pod.netns])
        att = runtime.cached(node, pod) or runtime.add(lab, node, pod, conflist)
        procs.spawn(lab, pod.netns, f"responder-{pod.name}",
                    [sys.executable, "-m", "cnipy.lab.responder", pod.netns])
        out.append({"label": pod.name, "node": node.name, "netns": pod.netns,
                    "ip": str(att.ip.ip) if att.ip else None})
    return out


def probe(lab: Lab, node: Node, targets: list[dict[str, str | None]]) -> int:
    mine = lab.pods_on(node)
    if not mine:
        return 0
    src_att = runtime.cached(node, mine[0])
    src = check.Endpoint(mine[0].name, node.name, mine[0].netns, src_att.ip.ip if src_att and src_att.ip else None)
    failures = 0
    for t in targets:
        if t["label"] == src.label:
            continue
        dst = check.Endpoint(str(t["label"]), t["node"], str(t["netns"]), IPv4Address(t["ip"]) if t["ip"] else None)
        kind = check.SAME_NODE if dst.node == node.name else check.CROSS_NODE
        outcome = check.probe_one(check.Probe(kind, src, dst), check.TIMEOUT)
        failures += outcome.ok is False
        print(f"{'ok  ' if outcome.ok else 'FAIL'} {kind}: {src.label} -> {dst.label} ({dst.ip}): {outcome.detail}")
    return 1 if failures else 0


def clean(lab: Lab, node: Node) -> None:
    procs.kill_all(procs.recorded(lab).values())
    for pod in reversed(lab.pods_on(node)):
        for error in runtime.delete(lab, node, pod):
            print(f"warning: {error}", file=sys.stderr)
    sh.ip_batch_tolerant(None, [f"netns delete {p.netns}" for p in lab.pods_on(node)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnipy.lab.vmnode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["setup", "pods", "probe", "clean"])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--underlay", type=IPv4Network, default=IPv4Network("192.168.56.0/24"))
    parser.add_argument("--count", type=int, default=2, help="pods on each node")
    parser.add_argument("--targets", type=Path, help="JSON list of every node's pods (probe)")
    parser.add_argument("--name", default="vm", help="prefix of the pods' namespace names")
    args = parser.parse_args(argv)
    lab = vm_lab(args.nodes, args.count, args.underlay, args.name)
    node = lab.nodes[args.index - 1]
    if args.command == "setup":
        setup(lab, node)
    elif args.command == "pods":
        print(json.dumps(pods(lab, node)))
    elif args.command == "probe":
        return probe(lab, node, json.loads(args.targets.read_text()) if args.targets else [])
    else:
        clean(lab, node)
    return 0


if __name__ == "__main__":
    sys.exit(main())

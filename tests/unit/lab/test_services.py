"""The lab's Services without root: definitions from CNI results, manifests the proxy accepts, planned probes,
the spread report."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from cnipy.lab import runtime, services
from cnipy.lab.connectivity import (
    CLIENT_LOCAL,
    CLIENT_NODEPORT,
    POD_CLUSTERIP,
    Matrix,
    Outcome,
    parse_reply,
    plan_probes,
)
from cnipy.lab.errors import LabError
from cnipy.lab.files import write_json
from cnipy.lab.model import PROBE_PORT, Lab, LabSpec, plan
from cnipy.lab.report import matrix_table, service_spread
from cnipy.lab.state import spec_from_dict, spec_to_dict


def _lab(tmp_path: Path, mode: str = "nftables", nodes: int = 3, pods: int = 2) -> Lab:
    lab = plan(LabSpec(name="ts", nodes=nodes, pods_per_node=pods, services=mode, state_root=tmp_path))
    for node in lab.nodes:  # what CNI ADD would have cached
        for k, pod in enumerate(lab.pods_on(node), start=2):
            write_json(runtime.cache_path(node, pod), {
                "conflist": {}, "result": {"ips": [{"address": f"10.244.{node.index}.{k}/24"}]}})
    return lab


def test_services_cover_the_pods_and_local_only_the_first_node(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    web, web_np, web_local = services.lab_services(lab)
    assert (web.type, web_np.type, web_local.type) == ("ClusterIP", "NodePort", "NodePort")
    assert all(s.cluster_ip in services.SERVICE_CIDR for s in (web, web_np, web_local))
    assert all(services.NODE_PORT_RANGE[0] <= (s.node_port or 0) <= services.NODE_PORT_RANGE[1]
               for s in (web_np, web_local))
    assert [b.pod for b in web.backends] == ["n1-p1", "n1-p2", "n2-p1", "n2-p2", "n3-p1", "n3-p2"]
    assert web.backends[2].ip == IPv4Address("10.244.2.2") and web.backends[2].node == "n2"
    assert web_local.local and {b.node for b in web_local.backends} == {"n1"}


def test_manifests_load_in_the_proxy_as_written(tmp_path: Path) -> None:
    from cnipy.proxy.manifests import load
    from cnipy.proxy.plan import NodeConfig, build_plans

    lab = _lab(tmp_path)
    services.publish(lab)
    path = services.manifest_dir(lab) / services.MANIFEST
    assert path.stat().st_mode & 0o777 == 0o600
    result = load([services.manifest_dir(lab)])
    assert result.problems == ()
    assert sorted(k.name for k in result.state.services) == ["web", "web-local", "web-np"]
    cfg = NodeConfig("n2", cluster_cidrs=(IPv4Network("10.244.0.0/16"),))
    plans = {k.name: ports[0] for k, ports in build_plans(result.state, cfg).items()}
    assert plans["web"].node_port is None and len(plans["web"].all_backends) == 6
    assert {b.port for b in plans["web"].all_backends} == {PROBE_PORT}
    assert plans["web-np"].node_port == 30080 and len(plans["web-np"].local_backends) == 2
    assert plans["web-local"].external_local and plans["web-local"].local_backends == ()
    assert plans["web-local"].health_check_node_port == 30090


def test_proxy_argv_runs_the_proxy_for_its_node(tmp_path: Path) -> None:
    lab = _lab(tmp_path, mode="iptables")
    argv = services.proxy_argv(lab, lab.nodes[1])
    assert argv[1:3] == ["-m", "cnipy.proxy"]
    text = " ".join(argv)
    assert "--mode iptables" in text and "--node-name n2" in text and "--cluster-cidr 10.244.0.0/16" in text
    assert f"--manifests {services.manifest_dir(lab)}" in text


def test_service_probes_are_planned_per_pod_and_node(tmp_path: Path) -> None:
    probes = plan_probes(_lab(tmp_path))
    cluster = [p for p in probes if p.kind == POD_CLUSTERIP]
    assert len(cluster) == 6 and all(len(p.backends) == 6 and p.tries > 1 for p in cluster)
    nodeport = [p for p in probes if p.kind == CLIENT_NODEPORT]
    assert [p.dst.ip for p in nodeport] == [IPv4Address(f"172.31.1.{10 + i}") for i in (1, 2, 3)]
    local = {p.dst.node: p for p in probes if p.kind == CLIENT_LOCAL}
    assert not local["n1"].refused and local["n1"].keeps_source
    assert {b.node for b in local["n1"].backends} == {"n1"}
    assert local["n2"].refused and local["n3"].refused
    assert not any(p.pending for p in probes)


def test_without_services_they_are_placeholders(tmp_path: Path) -> None:
    probes = plan_probes(_lab(tmp_path, mode="none"))
    assert {p.kind for p in probes if p.pending} == {POD_CLUSTERIP, CLIENT_NODEPORT}
    assert not [p for p in probes if p.kind == CLIENT_LOCAL]


def test_spread_shows_who_answered_and_failures(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    outcomes = []
    for p in plan_probes(lab):
        if p.kind == POD_CLUSTERIP:
            answers = tuple(p.backends[i % len(p.backends)].label for i in range(p.tries))
            outcomes.append(Outcome(p, True, "ok", 0.0, answers))
        elif p.kind == CLIENT_LOCAL and p.refused:
            outcomes.append(Outcome(p, True, "no answer", 0.0))
        elif p.kind in (CLIENT_LOCAL, CLIENT_NODEPORT):
            ok = p.dst.node != "n3"
            outcomes.append(Outcome(p, ok, "ok" if ok else "0/6 answered; TimeoutError", 0.0,
                                    (p.backends[0].label,) * (p.tries if ok else 0)))
    matrix = Matrix(tuple(outcomes))
    lines = service_spread(matrix)
    assert any(line.startswith("    pods on n1 -> web 10.96.0.10:80 (12/12): n1-p1 ") for line in lines), lines
    assert any("30081 Local" in line and "client address kept" in line for line in lines)
    assert any("no local endpoint (expected)" in line for line in lines)
    assert any("n3 172.31.1.13:30080 (0/6)" in line and "FAIL: 0/6 answered" in line for line in lines)
    assert not matrix.ok and "12/18 FAIL" in matrix_table(lab, matrix)


def test_replies_with_and_without_the_peer() -> None:
    assert parse_reply(b"cnipy-lab x-n1-p1 172.31.1.3\n") == parse_reply(b"cnipy-lab x-n1-p1 172.31.1.3")
    assert parse_reply(b"cnipy-lab x-n1-p1 172.31.1.3\n").peer == "172.31.1.3"
    assert parse_reply(b"cnipy-lab x-n1-p1\n").peer is None
    assert parse_reply(b"HTTP/1.0 400\n").netns == ""


def test_spec_keeps_the_services_mode(tmp_path: Path) -> None:
    spec = LabSpec(name="ts", services="iptables", state_root=tmp_path)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    old = spec_to_dict(LabSpec(name="ts", state_root=tmp_path))
    del old["services"]  # lab.json written before Services existed
    assert spec_from_dict(old).services == "none"
    with pytest.raises(LabError, match="--services"):
        LabSpec(name="ts", services="ipvs")
    assert "cnipy proxy (iptables)" in spec.describe()

"""The lab's plan, back-end registry, conflist, state file and reports: pure values, no root."""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from cnipy.lab import backend as backends
from cnipy.lab.build import _switch_lines, _veth_lines, read_sysctls
from cnipy.lab.connectivity import (
    CLIENT_NODE,
    CROSS_NODE,
    NO_SERVICES,
    SAME_NODE,
    Endpoint,
    Matrix,
    Outcome,
    Probe,
    plan_probes,
)
from cnipy.lab.errors import BackendUnavailable, LabError
from cnipy.lab.model import LabSpec, plan
from cnipy.lab.report import matrix_table, summary
from cnipy.lab.state import read_state, spec_from_dict, spec_to_dict, write_state
from cnipy.lab.static import StaticBackend, route_line

ROOT = Path(__file__).resolve().parents[3]


def test_plan_names_addresses_and_dirs(tmp_path: Path) -> None:
    lab = plan(LabSpec(name="t1", nodes=3, pods_per_node=2, state_root=tmp_path))
    assert [n.netns for n in lab.nodes] == ["t1-n1", "t1-n2", "t1-n3"]
    assert [n.underlay_ip for n in lab.nodes] == [IPv4Interface(f"172.31.1.{10 + i}/24") for i in (1, 2, 3)]
    assert [n.pod_cidr for n in lab.nodes] == [IPv4Network(f"10.244.{i}.0/24") for i in (1, 2, 3)]
    assert all(n.gateway is None and n.segment == 1 for n in lab.nodes)
    assert lab.router is None
    assert [p.netns for p in lab.pods_on(lab.nodes[1])] == ["t1-n2-p1", "t1-n2-p2"]
    assert lab.nodes[0].cni_conf_dir == tmp_path / "t1" / "nodes" / "n1" / "cni" / "net.d"
    assert all(ns.startswith(lab.prefix) for ns in lab.all_netns())
    assert len(set(lab.all_netns())) == len(lab.all_netns()) == 1 + 2 + 3 + 6


def test_two_segments_alternate_nodes_and_route_through_the_router(tmp_path: Path) -> None:
    lab = plan(LabSpec(name="t2", nodes=3, segments=2, state_root=tmp_path))
    assert [n.segment for n in lab.nodes] == [1, 2, 1]
    assert lab.nodes[1].underlay_ip == IPv4Interface("172.31.2.12/24")
    assert lab.nodes[1].gateway == IPv4Address("172.31.2.1")
    assert lab.router is not None and lab.router.netns == "t2-rt"
    n1, n2, n3 = lab.nodes
    assert route_line(lab, n1, n3) == "route replace 10.244.3.0/24 via 172.31.1.13 dev eth0"
    assert route_line(lab, n1, n2) == "route replace 10.244.2.0/24 via 172.31.1.1 dev eth0"
    veths = _veth_lines(lab)
    assert "link add s2 netns t2-rt type veth peer name router netns t2-s2" in veths
    assert "link set router master br0" in _switch_lines(lab, 2)


@pytest.mark.parametrize("kw", [{"name": "a-b"}, {"name": "Upper"}, {"name": "x" * 13}, {"nodes": 0},
                                {"segments": 3}, {"plugins": "nope"}, {"pods_per_node": -1}])
def test_spec_rejects_bad_values(kw: dict[str, object]) -> None:
    with pytest.raises(LabError):
        LabSpec(**kw)  # type: ignore[arg-type]


def test_backend_registry_loads_static_and_explains_missing_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(backends.load("static"), StaticBackend)
    with pytest.raises(BackendUnavailable, match="unknown back end"):
        backends.load("carrier-pigeon")
    monkeypatch.setitem(backends.BACKENDS, "ghost", "cnipy.lab.no_such_module:Ghost")
    with pytest.raises(BackendUnavailable, match="not available"):
        backends.load("ghost")


def test_bridge_conflist_is_a_chain_with_node_local_ipam(tmp_path: Path) -> None:
    lab = plan(LabSpec(name="t3", nodes=2, state_root=tmp_path))
    conf = StaticBackend().node_network_config(lab, lab.nodes[1])
    assert conf["cniVersion"] == backends.CNI_VERSION
    bridge, loopback = conf["plugins"]
    assert (bridge["type"], loopback["type"]) == ("cnipy-bridge", "cnipy-loopback")
    assert bridge["ipam"]["type"] == "cnipy-host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}]]
    assert bridge["ipam"]["dataDir"] == str(lab.nodes[1].ipam_dir)
    ref = plan(LabSpec(name="t3", plugins="reference", state_root=tmp_path))
    assert backends.bridge_conflist(ref, ref.nodes[0], mtu=1450)["plugins"][0]["mtu"] == 1450
    json.dumps(conf)


def test_state_round_trip_is_private(tmp_path: Path) -> None:
    spec = LabSpec(name="t4", nodes=5, segments=2, state_root=tmp_path)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    lab = plan(spec)
    write_state(lab, "building")
    state = read_state(lab.state_dir)
    assert state is not None and state.spec == spec and state.phase == "building"
    assert lab.state_file.stat().st_mode & 0o777 == 0o600
    assert lab.state_dir.stat().st_mode & 0o777 == 0o700
    assert read_state(tmp_path / "other") is None


def test_node_sysctls_file_is_shared_with_vagrant() -> None:
    settings = dict(read_sysctls(ROOT / "cnipy" / "lab" / "node-sysctls.conf"))
    assert settings["net.ipv4.ip_forward"] == "1"
    assert "cnipy/lab/node-sysctls.conf" in (ROOT / "vagrant" / "provision" / "node.sh").read_text()


def _fake_matrix(tmp_path: Path) -> tuple[object, Matrix]:
    lab = plan(LabSpec(name="t5", nodes=3, pods_per_node=2, segments=2, state_root=tmp_path))
    probes = plan_probes(lab)  # no CNI cache: pods have no address
    kinds = [p.kind for p in probes]
    assert kinds.count(SAME_NODE) == 6 and kinds.count(CROSS_NODE) == 6 and kinds.count(CLIENT_NODE) == 3
    assert sum(p.via_router for p in probes if p.kind == CROSS_NODE) == 4
    outcomes = [Outcome(p, None if p.pending else p.dst.label != "n3-p1", p.pending or "x", 0.0) for p in probes]
    return lab, Matrix(tuple(outcomes))


def test_matrix_table_shows_failures_and_placeholders(tmp_path: Path) -> None:
    lab, matrix = _fake_matrix(tmp_path)
    text = matrix_table(lab, matrix)  # type: ignore[arg-type]
    assert NO_SERVICES in text and "FAIL" in text
    assert not matrix.ok and matrix.failures
    assert any("through the router" in line for line in summary(matrix))


def test_placeholders_never_fail() -> None:
    ep = Endpoint("a", "n1", "x-n1-p1", IPv4Address("10.244.1.2"))
    matrix = Matrix((Outcome(Probe("pod -> ClusterIP", ep, Endpoint("ClusterIP", None, "", None)), None, "", 0),))
    assert matrix.ok


def test_cnipy_help_does_not_import_the_lab() -> None:
    code = ("import sys; from click.testing import CliRunner; from cnipy.cli.main import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'lab' in r.output; print(sorted(m for m in sys.modules if m.startswith('cnipy.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_lab_help_lists_the_commands() -> None:
    from click.testing import CliRunner

    from cnipy.cli.main import cli

    result = CliRunner().invoke(cli, ["lab", "--help"])
    assert result.exit_code == 0
    for command in ("up", "status", "check", "down", "demo"):
        assert command in result.output

"""The lab for real: namespaces, CNI plugins, traffic; and that nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cnipy.lab import LabSpec, check, down, procs, sh, status, up
from tests.netns.lab.conftest import PLUGINS, HostSnapshot, leftovers

ROOT = Path(__file__).resolve().parents[3]
CYCLES = 20


def spec(name: str, state_root: Path, **kw: object) -> LabSpec:
    return LabSpec(name=name, state_root=state_root, plugins=PLUGINS, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("segments", [1, 2])
def test_three_nodes_up_check_green_down(lab_name: str, state_root: Path, segments: int) -> None:
    before = HostSnapshot.take()
    lab = up(spec(lab_name, state_root, nodes=3, pods_per_node=2, segments=segments))
    st = status(lab_name, state_root)
    assert st.phase == "up" and not st.missing and all(p.ip for p in st.pods)
    matrix = check(lab)
    assert matrix.ok, [(o.probe.src.label, o.probe.dst.label, o.detail) for o in matrix.failures]
    assert len([o for o in matrix.outcomes if o.ok]) == 6 + 6 + 3
    if segments == 2:
        assert any(o.probe.via_router and o.ok for o in matrix.outcomes)
    report = down(lab_name, state_root=state_root)
    assert not report.leftovers and not report.warnings, report
    assert leftovers(lab_name, state_root, before) == []


def test_up_is_idempotent_and_refuses_another_shape(lab_name: str, state_root: Path) -> None:
    lab = up(spec(lab_name, state_root, nodes=2, pods_per_node=1))
    first = {p.name: p.ip for p in status(lab_name, state_root).pods}
    up(spec(lab_name, state_root, nodes=2, pods_per_node=1))
    assert {p.name: p.ip for p in status(lab_name, state_root).pods} == first
    assert check(lab).ok
    with pytest.raises(Exception, match="another shape"):
        up(spec(lab_name, state_root, nodes=3, pods_per_node=1))


def test_check_fails_when_a_path_is_broken(lab_name: str, state_root: Path) -> None:
    lab = up(spec(lab_name, state_root, nodes=2, pods_per_node=1))
    sh.run(["ip", "-n", lab.nodes[0].netns, "route", "del", str(lab.nodes[1].pod_cidr)])
    matrix = check(lab, timeout=1.0)
    assert not matrix.ok
    assert {o.probe.kind for o in matrix.failures} == {"pod -> pod, across nodes"}


def test_cli_check_exits_non_zero_on_failure(lab_name: str, state_root: Path) -> None:
    lab = up(spec(lab_name, state_root, nodes=2, pods_per_node=1))
    cli = [str(ROOT / ".venv" / "bin" / "cnipy"), "lab"]
    args = ["--name", lab_name, "--state-root", str(state_root)]
    ok = subprocess.run([*cli, "check", *args], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all probes passed" in ok.stdout and "n/a (no --services)" in ok.stdout
    sh.run(["ip", "-n", lab.nodes[1].netns, "link", "set", "eth0", "down"])
    bad = subprocess.run([*cli, "check", *args, "--timeout", "1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "FAILED" in bad.stdout


@pytest.mark.slow
def test_up_down_cycles_leave_nothing_behind(lab_name: str, state_root: Path) -> None:
    before = HostSnapshot.take()
    started = time.monotonic()
    for i in range(CYCLES):
        lab = up(spec(lab_name, state_root, nodes=2, pods_per_node=1, segments=1 + i % 2))
        if i % 5 == 0:
            assert check(lab, timeout=2.0).ok
        report = down(lab_name, state_root=state_root)
        assert not report.leftovers, (i, report)
        assert leftovers(lab_name, state_root, before) == [], i
        assert time.monotonic() - started < 480, f"cycles too slow: {i + 1} in {time.monotonic() - started:.0f}s"


def test_interrupted_up_then_down_cleans_everything(lab_name: str, state_root: Path) -> None:
    before = HostSnapshot.take()
    env = dict(os.environ, CNIPY_LAB_STATE_ROOT=str(state_root))
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "cnipy"), "lab", "up", "--name", lab_name,
                             "--nodes", "3", "--pods", "10", "--plugins", PLUGINS],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # Kill it once pods are being attached: some namespaces, links, IPAM files and plugin runs in flight.
        while time.monotonic() < deadline and proc.poll() is None:
            caches = list((state_root / lab_name).glob("nodes/*/cni/cache/*.json"))
            if caches:
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert any(ns.startswith(f"{lab_name}-") for ns in sh.netns_list()), "up was not interrupted mid-way"
    st = status(lab_name, state_root)
    assert st.phase == "building", "up finished before it was killed: the test proved nothing"
    assert sum(1 for p in st.pods if p.ip) < len(st.pods)
    report = down(lab_name, state_root=state_root)
    assert not report.leftovers, report
    assert leftovers(lab_name, state_root, before) == []


def test_down_without_state_finds_namespaces_by_prefix(lab_name: str, state_root: Path) -> None:
    before = HostSnapshot.take()
    up(spec(lab_name, state_root, nodes=2, pods_per_node=1))
    # A crash that lost the state directory: only the namespace prefix is left to go by.
    sh.run(["rm", "-rf", str(state_root / lab_name)])
    assert status(lab_name, state_root).phase == "orphaned"
    sleeper = subprocess.Popen(sh.in_netns(f"{lab_name}-n1", ["sleep", "300"]))
    try:
        deadline = time.monotonic() + 10
        while sleeper.pid not in procs.in_namespaces([f"{lab_name}-n1"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        report = down(lab_name, state_root=state_root)
        assert report.processes >= 1 and not report.leftovers
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert leftovers(lab_name, state_root, before) == []


def test_demo_runs_and_tears_down(lab_name: str, state_root: Path) -> None:
    before = HostSnapshot.take()
    env = dict(os.environ, CNIPY_LAB_STATE_ROOT=str(state_root))
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "cnipy"), "lab", "demo", "--name", lab_name,
                           "--plugins", PLUGINS], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all probes passed" in proc.stdout and "pod -> pod, across nodes" in proc.stdout
    assert "pod -> ClusterIP" in proc.stdout and "Which endpoints answered" in proc.stdout
    assert "n/a (no --services)" not in proc.stdout
    assert f"lab {lab_name} removed" in proc.stdout
    assert leftovers(lab_name, state_root, before) == []



def test_spawned_daemons_are_recorded_and_stopped_by_down(lab_name: str, state_root: Path) -> None:
    before = HostSnapshot.take()
    lab = up(spec(lab_name, state_root, nodes=1, pods_per_node=0))
    pid = procs.spawn(lab, lab.control.netns, "sleeper", ["sleep", "300"])
    assert procs.recorded(lab) == {"sleeper": pid}
    assert status(lab_name, state_root).daemons == {"sleeper": pid}
    assert (lab.state_dir / "pids" / "sleeper.pid").stat().st_mode & 0o777 == 0o600
    report = down(lab_name, state_root=state_root)
    assert report.processes == 1 and not report.leftovers
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert leftovers(lab_name, state_root, before) == []


def test_down_waits_for_a_running_up_of_the_same_lab(lab_name: str, state_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from cnipy.lab import files

    up(spec(lab_name, state_root, nodes=1, pods_per_node=1))
    monkeypatch.setattr(files, "LOCK_TIMEOUT", 0.3)
    with files.locked(state_root / lab_name), pytest.raises(Exception, match="another `cnipy lab` command"):
        down(lab_name, state_root=state_root)
    assert status(lab_name, state_root).phase == "up"
    assert not down(lab_name, state_root=state_root).leftovers

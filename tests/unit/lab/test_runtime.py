"""The lab's CNI runtime against fake plugins: env, stdin, prevResult chaining, DEL in reverse, undo on failure."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from cnipy.lab import runtime
from cnipy.lab.errors import PluginFailed
from cnipy.lab.model import LabSpec, PluginSet, plan

FAKE = """#!/usr/bin/env python3
import json, os, sys
conf = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.path.join(os.path.dirname(sys.argv[0]), "calls.jsonl"), "a") as fh:
    fh.write(json.dumps({"plugin": os.path.basename(sys.argv[0]), "env": env, "conf": conf}) + "\\n")
if conf.get("fail") and env["CNI_COMMAND"] == "ADD":
    print(json.dumps({"cniVersion": conf["cniVersion"], "code": 11, "msg": "told to fail"}))
    sys.exit(1)
if env["CNI_COMMAND"] == "ADD":
    prev = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "ips": [{"address": "10.244.1.7/24"}]}
    prev.setdefault("seen", []).append(os.path.basename(sys.argv[0]))
    print(json.dumps(prev))
"""


@pytest.fixture
def lab(tmp_path: Path):  # type: ignore[no-untyped-def]
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    for name in ("fbridge", "floop", "fhost"):
        exe = plugin_dir / name
        exe.write_text(FAKE)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    base = plan(LabSpec(name="rt", nodes=1, pods_per_node=1, state_root=tmp_path / "labs"))
    # netns "": run the plugins right here (as on a Vagrant VM), so no root is needed
    nodes = tuple(dataclasses.replace(n, netns="") for n in base.nodes)
    return dataclasses.replace(base, nodes=nodes, plugins=PluginSet(plugin_dir, "fbridge", "fhost", "floop"))


def calls(lab) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    path = lab.plugins.directory / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_add_chains_prev_result_and_del_runs_in_reverse(lab) -> None:  # type: ignore[no-untyped-def]
    node, pod = lab.nodes[0], lab.pods[0]
    conflist = {"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "fbridge"}, {"type": "floop"}]}
    att = runtime.add(lab, node, pod, conflist)
    assert str(att.ip) == "10.244.1.7/24" and att.result["seen"] == ["fbridge", "floop"]
    first, second = calls(lab)
    assert first["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod.container_id, "CNI_IFNAME": "eth0",
                            "CNI_NETNS": f"/run/netns/{pod.netns}", "CNI_PATH": str(lab.plugins.directory)}
    assert first["conf"] == {"type": "fbridge", "cniVersion": "1.0.0", "name": "net"}
    assert second["conf"]["prevResult"]["seen"] == ["fbridge"]
    assert runtime.cached(node, pod) == att
    assert runtime.cache_path(node, pod).stat().st_mode & 0o777 == 0o600
    assert runtime.delete(lab, node, pod) == []
    dels = calls(lab)[2:]
    assert [c["plugin"] for c in dels] == ["floop", "fbridge"]
    assert all(c["env"]["CNI_COMMAND"] == "DEL" and c["conf"]["prevResult"] == att.result for c in dels)
    assert runtime.cached(node, pod) is None
    assert runtime.delete(lab, node, pod) == []  # nothing cached: nothing to do


def test_a_failing_plugin_undoes_the_ones_before_it(lab) -> None:  # type: ignore[no-untyped-def]
    node, pod = lab.nodes[0], lab.pods[0]
    conflist = {"cniVersion": "1.0.0", "name": "net",
                "plugins": [{"type": "fbridge"}, {"type": "floop", "fail": True}]}
    with pytest.raises(PluginFailed, match="told to fail") as info:
        runtime.add(lab, node, pod, conflist)
    assert info.value.code == 11
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in calls(lab)] == [
        ("fbridge", "ADD"), ("floop", "ADD"), ("fbridge", "DEL")]
    assert runtime.cached(node, pod) is None

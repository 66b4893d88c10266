"""A host-local or loopback call must not load the heavy libraries (import cost is per call)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.cni import ROOT, env, hostlocal_conf

PROBE = r"""
import io, json, os, sys
sys.path[0:0] = [sys.argv[1]]
from cnipy.cni.skel import execute
from cnipy.plugins.registry import load
out = execute(load("cnipy-host-local"), json.loads(sys.argv[2]), sys.argv[3].encode())
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pyroute2", "click", "scapy", "yaml", "cnipy.netlink"})
print(json.dumps({"code": out.exit_code, "stdout": out.stdout.decode(), "heavy": heavy,
                  "netlink": "cnipy.netlink" in sys.modules}))
"""


def test_hostlocal_call_stays_lean(tmp_path: Path) -> None:
    stdin = json.dumps(hostlocal_conf(tmp_path))
    for verb in ("ADD", "CHECK", "DEL"):
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(ROOT), json.dumps(env(verb)), stdin],
                              capture_output=True, text=True, check=True, timeout=30)
        got = json.loads(proc.stdout)
        assert got["code"] == 0, got
        assert got["heavy"] == [] and not got["netlink"], got


def test_real_launcher_imports_nothing_heavy(tmp_path: Path) -> None:
    """The executable's own start-up path (launch.py), observed through -X importtime."""
    python = ROOT / ".venv" / "bin" / "python3"
    proc = subprocess.run([str(python), "-I", "-S", "-X", "importtime", str(ROOT / "cnipy" / "cni" / "launch.py"),
                           "cnipy-host-local"], env=env("ADD"), input=json.dumps(hostlocal_conf(tmp_path)).encode(),
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.decode().splitlines()
               if line.startswith("import time:")}
    assert "cnipy.ipam.allocator" in modules and "json" in modules  # (import_module itself is not timed)
    heavy = {m for m in modules if m.split(".")[0] in ("pyroute2", "click", "scapy", "yaml")
             or m.startswith("cnipy.netlink") or m in ("traceback", "threading", "subprocess", "asyncio")}
    assert heavy == set()

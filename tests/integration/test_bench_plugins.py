"""bench/plugins.py stays runnable: a tiny run of every path, and it leaves no namespace behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnipy.cni import build_front
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_bench_smoke(tmp_path: Path) -> None:
    need("gcc")
    if not Path("/usr/lib/cni/loopback").exists():
        pytest.skip("the Go reference plugins are not installed (bin/setup --test installs them)")
    build_front.build()
    before = netns_names()
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "plugins.py"), "--plugin", "loopback", "--runs", "2",
                           "--pods", "4", "--rounds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert set(result["latency"]) == {"go", "daemon", "launcher", "fallback", "python"}
    assert result["burst"]["ratio_add"] > 0
    assert {n for n in netns_names() - before if n.startswith("cnf")} == set()

"""The lab's vxlan and host-gw back ends (cnipy/overlay/lab.py) through `cnipy lab up/check/down`."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CNIPY = str(ROOT / ".venv" / "bin" / "cnipy")


def lab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CNIPY, "lab", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_lab_up_check_down(backend: str, tmp_path: Path) -> None:
    name = f"cno{secrets.token_hex(3)}"
    root = ["--name", name, "--state-root", str(tmp_path)]
    try:
        up = lab("up", *root, "--nodes", "3", "--pods", "1", "--backend", backend)
        assert up.returncode == 0, up.stdout + up.stderr
        check = lab("check", *root)
        assert check.returncode == 0 and "pod -> pod, across nodes   6/6 ok" in check.stdout, check.stdout
    finally:
        down = lab("down", *root)
        assert down.returncode == 0, down.stdout + down.stderr
    assert name not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout

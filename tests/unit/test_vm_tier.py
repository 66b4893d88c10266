"""The VM tier never passes when it could not run: without its prerequisites it is SKIPPED with the reason, and
under CI=true it FAILS. (Runs pytest on tests/vm with a kernel path that does not exist; no VM boots.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_vm_tier(ci: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CNIPY_VM_KERNEL="/nonexistent/vmlinuz-6.1.*", CI=ci)
    env.pop("CNIPY_VM_GUEST", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                           "tests/vm"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_missing_prerequisites_skip_with_the_reason() -> None:
    proc = run_vm_tier("")
    assert proc.returncode == 0, proc.stdout
    assert "passed" not in proc.stdout.splitlines()[-1]
    assert "skipped" in proc.stdout.splitlines()[-1]
    assert "VM tier prerequisites missing: /nonexistent/vmlinuz-6.1.*" in proc.stdout


def test_missing_prerequisites_fail_in_ci() -> None:
    proc = run_vm_tier("true")
    assert proc.returncode == 1, proc.stdout
    assert "failed" in proc.stdout.splitlines()[-1] and "passed" not in proc.stdout.splitlines()[-1]
    assert "CI=true: the VM tier must run" in proc.stdout

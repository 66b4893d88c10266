"""Running rule tools (iptables-restore, nft): argv lists only, never a shell; failures become RuleError."""

from __future__ import annotations

import os
import shutil
import subprocess

from cnipy.cni.errors import RuleError

# Runtimes may call plugins with a bare PATH; the rule tools live in the sbin directories.
FALLBACK_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
TIMEOUT = 60


def which(tool: str) -> str | None:
    path = os.environ.get("PATH", "")
    return shutil.which(tool, path=f"{path}:{FALLBACK_PATH}" if path else FALLBACK_PATH)


def run(argv: list[str], stdin: str = "", *, what: str) -> subprocess.CompletedProcess[str]:
    """Run a tool found on PATH (or the sbin fallback); raise RuleError with its stderr when it fails."""
    exe = which(argv[0])
    if exe is None:
        raise RuleError(f"{what}: {argv[0]} not found")
    try:
        proc = subprocess.run([exe, *argv[1:]], input=stdin, text=True, capture_output=True,
                              timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuleError(f"{what}: running {argv[0]} failed", str(exc)[:300]) from exc
    if proc.returncode != 0:
        raise RuleError(f"{what}: {argv[0]} exited with {proc.returncode}", proc.stderr.strip()[:500])
    return proc


def try_run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str] | None:
    """Like `run` but None when the tool is missing or fails (for listing what may not exist)."""
    exe = which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *argv[1:]], input=stdin, text=True, capture_output=True,
                              timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc if proc.returncode == 0 else None

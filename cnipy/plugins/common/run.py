"""Running rule tools (iptables-restore, nft): argv lists only, never a shell; failures become RuleError.

Every tool call goes through one seam, an `Executor` (argv, stdin) -> (exit code, stdout, stderr). The real one
runs the executable found on PATH; `cnipy.plugins.common.fakes.FakeIptables` keeps iptables-save/-restore
semantics in memory for tests without root (install it with `using`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cnipy.cni.errors import RuleError

Executor = Callable[[list[str], str], tuple[int, str, str]]

# Runtimes may call plugins with a bare PATH; the rule tools live in the sbin directories.
FALLBACK_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
TIMEOUT = 60


def which(tool: str) -> str | None:
    path = os.environ.get("PATH", "")
    return shutil.which(tool, path=f"{path}:{FALLBACK_PATH}" if path else FALLBACK_PATH)


MISSING = 127


def execute(argv: list[str], stdin: str) -> tuple[int, str, str]:
    """The real executor: exit code 127 when the tool is not installed."""
    exe = which(argv[0])
    if exe is None:
        return MISSING, "", f"{argv[0]} not found"
    proc = subprocess.run([exe, *argv[1:]], input=stdin, text=True, capture_output=True, timeout=TIMEOUT,
                          check=False)
    return proc.returncode, proc.stdout, proc.stderr


_executor: list[Executor] = [execute]


@contextmanager
def using(executor: Executor) -> Iterator[None]:
    """Run every tool call of the body through `executor` (a fake in tests)."""
    _executor.append(executor)
    try:
        yield
    finally:
        _executor.pop()


def run(argv: list[str], stdin: str = "", *, what: str) -> str:
    """Run a tool found on PATH (or the sbin fallback); its stdout, or RuleError with its stderr."""
    try:
        code, out, err = _executor[-1](argv, stdin)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuleError(f"{what}: running {argv[0]} failed", str(exc)[:300]) from exc
    if code != 0:
        raise RuleError(f"{what}: {argv[0]} exited with {code}", err.strip()[:500])
    return out


def try_run(argv: list[str], stdin: str = "") -> str | None:
    """Like `run` but None when the tool is missing or fails (for listing what may not exist)."""
    try:
        code, out, _ = _executor[-1](argv, stdin)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out if code == 0 else None

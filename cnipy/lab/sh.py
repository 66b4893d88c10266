"""Running iproute2 and friends: argv lists, never a shell, always with a timeout.

`ip -n NS -batch -` applies many changes to one namespace in one process; namespaces are created and deleted
with `ip -batch -` in the caller's namespace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence

from cnipy.lab.errors import CommandFailed

TIMEOUT = 60.0
NETNS_DIR = "/run/netns"
# Messages `ip -force -batch` prints for changes that are already in place; anything else is an error.
ALREADY = ("File exists", "Cannot find device", "No such file or directory", "No such process")


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input, text=True, capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(list(argv), -1, f"timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise CommandFailed(list(argv), -1, str(exc)) from exc
    if check and proc.returncode != 0:
        raise CommandFailed(list(argv), proc.returncode, proc.stderr)
    return proc


def ip_batch(netns: str | None, lines: Iterable[str]) -> None:
    """Apply `lines` (ip commands without the leading `ip`) in `netns` (None: here); stop at the first error."""
    text = "".join(f"{line}\n" for line in lines)
    if text:
        run(["ip", *(["-n", netns] if netns else []), "-batch", "-"], input=text)


def ip_batch_tolerant(netns: str | None, lines: Iterable[str]) -> list[str]:
    """Like ip_batch, but go on past errors and return them, except for `ALREADY` ones (for clean-up)."""
    text = "".join(f"{line}\n" for line in lines)
    if not text:
        return []
    proc = run(["ip", *(["-n", netns] if netns else []), "-force", "-batch", "-"], input=text, check=False)
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith("Command failed") and not any(a in line for a in ALREADY)]
    return errors


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """argv to run a command inside `netns` the way a runtime runs a CNI plugin on a node ("": right here,
    as on a Vagrant VM, where the node is the machine itself)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)

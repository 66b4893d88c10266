"""Processes of a lab: daemons started inside lab namespaces, and finding every process left in them.

`spawn` records `<state_dir>/pids/<name>.pid` with the process start time, so that `down` (also after a crash)
kills exactly the processes the lab started and never a later process that reused the pid. Processes found in a
lab namespace are killed too: nothing of the lab outlives `down`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cnipy.lab import sh
from cnipy.lab.files import private_dir, write_private
from cnipy.lab.model import Lab

STOP_GRACE = 3.0


def spawn(lab: Lab, netns: str, name: str, argv: Sequence[str], *,
          env: Mapping[str, str] | None = None) -> int:
    """Start `argv` inside `netns` as a daemon; its output goes to lab.state_dir/logs/<name>.log."""
    logs = lab.state_dir / "logs"
    private_dir(logs)
    log_path = logs / f"{name}.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(sh.in_netns(netns, argv), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                start_new_session=True, env=dict(env) if env is not None else None)
    finally:
        os.close(fd)
    write_private(lab.state_dir / "pids" / f"{name}.pid", f"{proc.pid} {_start_time(proc.pid)}\n")
    return proc.pid


def recorded(lab: Lab) -> dict[str, int]:
    """name -> pid of recorded daemons that still run (the same process, not a reused pid, not a zombie)."""
    alive: dict[str, int] = {}
    for path in sorted((lab.state_dir / "pids").glob("*.pid")):
        try:
            pid_text, start = path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if _start_time(pid) == start and _alive(pid):
            alive[path.stem] = pid
    return alive


def in_namespaces(names: Iterable[str]) -> list[int]:
    """Pids of every process whose network namespace is one of `names` (what `ip netns pids` does)."""
    wanted = set()
    for name in names:
        try:
            st = os.stat(f"{sh.NETNS_DIR}/{name}")
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    if not wanted:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted:
            found.append(int(entry))
    return sorted(found)


def kill_all(pids: Iterable[int], grace: float = STOP_GRACE) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left; returns pids that survived SIGKILL."""
    targets = [p for p in set(pids) if p != os.getpid()]
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while targets and time.monotonic() < deadline:
        targets = [p for p in targets if _alive(p)]
        if targets:
            time.sleep(0.05)
    for pid in targets:
        _signal(pid, signal.SIGKILL)
    time.sleep(0.05 if targets else 0)
    return [p for p in targets if _alive(p)]


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    # A zombie is dead: its parent (not necessarily us) reaps it; never wait for other people's children.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


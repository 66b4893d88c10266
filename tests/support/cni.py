"""Helpers for CNI tests: build configs and environments, run a plugin in-process or as an executable."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
GO_CNI = Path("/usr/lib/cni")
OURS = PLUGINS / "cnipy-host-local"
GO_HOST_LOCAL = GO_CNI / "host-local"


def env(command: str, container: str = "ctr1", ifname: str = "eth0", netns: str = "/var/run/netns/none",
        **extra: str) -> dict[str, str]:
    # CNIPY_CNI_SOCKET="" makes the compiled front (if built) run the Python plugin itself rather than forward to a
    # node daemon that may be running: these tests exercise (and SIGKILL) the process that does the work.
    out = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname, "CNI_NETNS": netns,
           "CNI_PATH": f"{PLUGINS}:{GO_CNI}", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "CNIPY_CNI_SOCKET": ""}
    out.update(extra)
    return out


def hostlocal_conf(data_dir: str | Path, version: str = "1.0.0", name: str = "cnhnet", ptype: str = "cnipy-host-local",
                   **ipam: Any) -> dict[str, Any]:
    if "ranges" not in ipam and "subnet" not in ipam:
        ipam["subnet"] = "10.77.0.0/24"
    return {"cniVersion": version, "name": name, "type": ptype,
            "ipam": {"type": ptype, "dataDir": str(data_dir), **ipam}}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run_exec(executable: str | Path, environ: Mapping[str, str], stdin: bytes | str | Mapping[str, Any],
             timeout: float = 30) -> Run:
    data = stdin if isinstance(stdin, bytes) else (stdin.encode() if isinstance(stdin, str)
                                                   else json.dumps(stdin).encode())
    proc = subprocess.run([str(executable)], input=data, env=dict(environ), capture_output=True, timeout=timeout,
                          check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def state_files(data_dir: str | Path, name: str = "cnhnet") -> dict[str, bytes]:
    """Every file of a network's state directory with its contents (the lock file is empty)."""
    d = Path(data_dir) / name
    if not d.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def all_paths(root: str | Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))

"""Fixtures for lab tests: a unique lab name per test, always torn down, and a leak detector.

The plugin set is cnipy's own; CNIPY_LAB_PLUGINS=reference runs the same tests with the Go reference plugins
(same config), to tell a lab bug from a plugin bug.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnipy.lab import down

LAB_LINK = re.compile(r"^(eth0|n\d+|s[12]|router|client|control|br0|cni0)$")
PLUGINS = os.environ.get("CNIPY_LAB_PLUGINS", "cnipy")


def _lines(*argv: str) -> set[str]:
    return set(subprocess.run(list(argv), capture_output=True, text=True, check=False).stdout.splitlines())


@dataclass(frozen=True)
class HostSnapshot:
    """What a lab must never leave behind in the host namespace."""

    links: set[str]
    rules: set[str]
    routes: set[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        links = {line.split(":")[1].strip().split("@")[0] for line in _lines("ip", "-o", "link", "show")}
        return cls(links, _lines("ip", "rule", "show"), _lines("ip", "route", "show", "table", "all"))


def leftovers(name: str, state_root: Path, before: HostSnapshot) -> list[str]:
    found = [f"namespace {ns}" for ns in sorted(os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
             if ns.startswith(f"{name}-")]
    if (state_root / name).exists():
        found.append(f"files under {state_root / name}: {sorted(str(p) for p in (state_root / name).rglob('*'))}")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{name}-" in cmdline or f"/{name}/" in cmdline:
                found.append(f"process {pid}: {cmdline[:120]}")
    # Other suites run in parallel on this host: count only new objects that look like a lab's.
    after = HostSnapshot.take()
    found += [f"host link {x}" for x in sorted(after.links - before.links) if LAB_LINK.match(x)]
    found += [f"host rule {x}" for x in sorted(after.rules - before.rules) if "172.31." in x]
    found += [f"host route {x}" for x in sorted(after.routes - before.routes) if "172.31." in x]
    return found


def root_for(name: str) -> Path:
    # Short: a node's CNI daemon socket lives under it (unix socket paths are limited to 107 bytes).
    return Path(f"/run/{name}-state")


@pytest.fixture
def lab_name() -> Iterator[str]:
    """A unique lab name (`cnl` + hex); whatever the test made under it is removed afterwards."""
    name = f"cnl{secrets.token_hex(4)}"
    yield name
    down(name, state_root=root_for(name), detach=False)
    shutil.rmtree(root_for(name), ignore_errors=True)


@pytest.fixture
def state_root(lab_name: str) -> Path:
    return root_for(lab_name)

"""Real network namespaces for tests, always removed, also when the test fails.

Names start with ``cnt`` (cnipy test) and a random suffix so that concurrent runs never collide.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

NETNS_DIR = "/run/netns"


def run(cmd: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, text=True, capture_output=True, input=input, timeout=timeout)


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def run(self, *cmd: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.name, *cmd], check=check, input=input, timeout=timeout)

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], text=True, **kw)  # type: ignore[call-overload]


def unique(prefix: str = "cnt") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def add(name: str | None = None) -> Netns:
    ns = Netns(name or unique())
    run(["ip", "netns", "add", ns.name])
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def delete(ns: Netns) -> None:
    # Kill anything still running inside, then remove the namespace (veth peers go with it).
    pids = run(["ip", "netns", "pids", ns.name], check=False).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    run(["ip", "netns", "delete", ns.name], check=False)


@contextmanager
def namespaces(count: int, prefix: str = "cnt") -> Iterator[list[Netns]]:
    made: list[Netns] = []
    try:
        for _ in range(count):
            made.append(add(unique(prefix)))
        yield made
    finally:
        for ns in made:
            delete(ns)


def is_root() -> bool:
    return os.geteuid() == 0

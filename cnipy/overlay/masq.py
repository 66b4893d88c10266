"""Masquerade for pod traffic leaving the cluster network, in one chain the agent owns (CNIPY-OVERLAY-MASQ in
the nat table, jumped to from POSTROUTING). Pod-to-pod traffic, also across nodes, keeps its pod source address.
Applied with one `iptables-restore --noflush` run, so the chain is replaced atomically."""

from __future__ import annotations

import ipaddress
import subprocess

CHAIN = "CNIPY-OVERLAY-MASQ"


class MasqError(RuntimeError):
    pass


def render(network: ipaddress.IPv4Network) -> str:
    return "\n".join([
        "*nat",
        f":{CHAIN} - [0:0]",
        f"-F {CHAIN}",
        f"-A {CHAIN} -s {network} -d {network} -m comment --comment \"pod to pod\" -j RETURN",
        f"-A {CHAIN} -s {network} -d 224.0.0.0/4 -m comment --comment multicast -j RETURN",
        f"-A {CHAIN} -s {network} -m comment --comment \"pods leaving the cluster\" -j MASQUERADE --random-fully",
        "COMMIT",
        "",
    ])


def _run(cmd: list[str], netns: str | None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd
    return subprocess.run(full, input=stdin, text=True, capture_output=True, timeout=30, check=False)


def ensure(network: ipaddress.IPv4Network, netns: str | None = None) -> None:
    out = _run(["iptables-restore", "--noflush", "-w"], netns, render(network))
    if out.returncode != 0:
        raise MasqError(f"iptables-restore: {out.stderr.strip()[:300]}")
    jump = ["POSTROUTING", "-m", "comment", "--comment", "cnipy overlay", "-j", CHAIN]
    if _run(["iptables", "-w", "-t", "nat", "-C", *jump], netns).returncode != 0:
        out = _run(["iptables", "-w", "-t", "nat", "-I", *jump], netns)
        if out.returncode != 0:
            raise MasqError(f"iptables: {out.stderr.strip()[:300]}")


def remove(netns: str | None = None) -> None:
    jump = ["POSTROUTING", "-m", "comment", "--comment", "cnipy overlay", "-j", CHAIN]
    while _run(["iptables", "-w", "-t", "nat", "-D", *jump], netns).returncode == 0:
        pass
    _run(["iptables", "-w", "-t", "nat", "-F", CHAIN], netns)
    _run(["iptables", "-w", "-t", "nat", "-X", CHAIN], netns)

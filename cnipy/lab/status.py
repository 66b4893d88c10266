"""`lab status`: what the recorded state says and what actually exists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnipy.lab import procs, runtime, sh
from cnipy.lab.model import STATE_ROOT, Lab, plan
from cnipy.lab.state import read_state


@dataclass(frozen=True)
class PodStatus:
    name: str
    node: str
    netns: str
    ip: str | None
    present: bool


@dataclass(frozen=True)
class LabStatus:
    name: str
    lab: Lab | None  # None: nothing recorded
    phase: str  # "up", "building" (interrupted or in progress), "absent", "orphaned" (namespaces, no state)
    seconds: float | None
    missing: tuple[str, ...]  # planned namespaces that do not exist
    stray: tuple[str, ...]  # namespaces with the lab's prefix that are not in the plan
    pods: tuple[PodStatus, ...]
    daemons: dict[str, int]


def labs(state_root: Path = STATE_ROOT) -> list[str]:
    """Names of labs with recorded state under `state_root`."""
    names = {p.name for p in state_root.iterdir() if (p / "lab.json").exists()} if state_root.is_dir() else set()
    return sorted(names)


def status(name: str, state_root: Path = STATE_ROOT) -> LabStatus:
    state = read_state(state_root / name)
    present = set(sh.netns_list())
    ours = {ns for ns in present if ns.startswith(f"{name}-")}
    if state is None:
        return LabStatus(name, None, "orphaned" if ours else "absent", None, (), tuple(sorted(ours)), (), {})
    lab = plan(state.spec)
    planned = set(lab.all_netns())
    pods = []
    for node in lab.nodes:
        for pod in lab.pods_on(node):
            att = runtime.cached(node, pod)
            pods.append(PodStatus(pod.name, node.name, pod.netns, str(att.ip) if att and att.ip else None,
                                  pod.netns in present))
    return LabStatus(name, lab, state.phase, state.seconds,
                     tuple(ns for ns in lab.all_netns() if ns not in present), tuple(sorted(ours - planned)),
                     tuple(pods), procs.recorded(lab))

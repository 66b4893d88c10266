"""`lab down`: remove everything of a lab, also after a crash or an interrupted `up`.

What is ours is found from two sources, so that either alone suffices: the recorded spec (lab.json: pods to DEL,
the back end to tear down) and the name prefix `<lab>-` of namespaces in /run/netns. Order: CNI DEL of every
cached attachment while the back end still runs, back-end teardown, kill recorded daemons and every process in a
lab namespace, delete the namespaces (their links, routes and rules go with them), remove the state directory.
"""

from __future__ import annotations

import contextlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cnipy.lab import backend as backends
from cnipy.lab import procs, runtime, sh
from cnipy.lab.errors import LabError
from cnipy.lab.files import locked
from cnipy.lab.model import STATE_ROOT, Lab, LabSpec, plan
from cnipy.lab.progress import NullProgress, Progress
from cnipy.lab.state import read_state

DEL_WORKERS = 8


@dataclass
class DownReport:
    name: str
    namespaces: int = 0
    processes: int = 0
    warnings: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # what could not be removed: a failure


def down(name: str, *, state_root: Path = STATE_ROOT, progress: Progress | None = None,
         detach: bool = True) -> DownReport:
    """Remove lab `name`. `detach=False` skips the CNI DELs (faster; the namespaces take everything along)."""
    LabSpec(name=name, state_root=state_root)  # validates the name before anything is matched by prefix
    state_dir = state_root / name
    if not state_dir.exists():
        return remove(name, state_root, progress or NullProgress(), detach=detach)
    with locked(state_dir):
        return remove(name, state_root, progress or NullProgress(), detach=detach)


def remove(name: str, state_root: Path, progress: Progress, *, detach: bool) -> DownReport:
    """`down` for a caller that holds the lab's lock (or when there is no state directory to lock)."""
    report = DownReport(name)
    state_dir = state_root / name
    try:
        state = read_state(state_dir)
    except LabError as exc:
        report.warnings.append(str(exc))
        state = None
    lab = plan(state.spec) if state is not None else None
    prefix = f"{name}-"
    existing = set(sh.netns_list())

    if lab is not None and detach:
        progress.step("detaching pods (CNI DEL)")
        report.warnings += _detach_all(lab, existing)
    if lab is not None:
        progress.step(f"stopping the {lab.spec.backend} back end")
        try:
            backends.load(lab.spec.backend).teardown(lab)
        except Exception as exc:  # noqa: BLE001 - clean-up goes on; the failure is reported
            report.warnings.append(f"back end teardown: {exc}")

    progress.step("stopping processes")
    ours = sorted(ns for ns in sh.netns_list() if ns.startswith(prefix))
    pids = set(procs.in_namespaces(ours))
    if lab is not None:
        pids |= set(procs.recorded(lab).values())
    report.processes = len(pids)
    survivors = procs.kill_all(pids)
    report.leftovers += [f"process {pid}" for pid in survivors]

    progress.step(f"deleting {len(ours)} namespaces")
    report.namespaces = len(ours)
    errors = sh.ip_batch_tolerant(None, [f"netns delete {ns}" for ns in ours])
    report.warnings += errors
    report.leftovers += [f"namespace {ns}" for ns in sh.netns_list() if ns.startswith(prefix)]

    shutil.rmtree(state_dir, ignore_errors=True)
    if state_dir.exists():
        report.leftovers.append(f"directory {state_dir}")
    with contextlib.suppress(OSError):  # the state root goes too once the last lab is gone
        state_root.rmdir()
    progress.finish()
    return report


def _detach_all(lab: Lab, existing: set[str]) -> list[str]:
    def detach_node(node_name: str) -> list[str]:
        node = lab.node(node_name)
        errors: list[str] = []
        if node.netns not in existing:
            return errors
        for pod in reversed(lab.pods_on(node)):
            if pod.netns in existing:
                errors += runtime.delete(lab, node, pod)
        return errors

    workers = max(1, min(DEL_WORKERS, len(lab.nodes)))
    with ThreadPoolExecutor(workers, thread_name_prefix="cnipy-lab-detach") as pool:
        results = list(pool.map(detach_node, [n.name for n in lab.nodes]))
    return [e for errs in results for e in errs]

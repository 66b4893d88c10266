"""Lab bring-up time: `cnipy lab up` (to "phase": "up") for 3 nodes x 4 pods and 20 nodes x 5 pods (run as root).

    .venv/bin/python bench/lab_bringup.py [--rounds 3] [--shapes 3x4,20x5] [--plugins cnipy,reference]
        [--backend static]

Each round is a full `up` of a fresh lab (unique name) followed by `down`, both timed; the steps of `up` are
timed too (namespaces, underlay, nodes, back end, pod attachment). Variants: cnipy (cnipy's plugins, a CNI daemon in
every node: the default), cnipy-exec (each call starts the Python plugin), reference (the Go plugins). The
variants alternate within a round, so
drift in machine load hits both alike. A `check` after the first up of each shape proves the lab works (a lab
that is fast but broken does not count). Prints medians; JSON goes to bench/results/lab_bringup-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnipy.lab import LabSpec, check, down, up  # noqa: E402


class StepTimer:
    """A Progress that records how long each step of `up` took."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.current: str | None = None
        self.started = 0.0

    def step(self, text: str) -> None:
        self._end()
        self.current, self.started = text.split(" (")[0], time.perf_counter()

    def count(self, done: int, total: int) -> None:
        return None

    def finish(self) -> None:
        self._end()

    def _end(self) -> None:
        if self.current is not None:
            self.steps[self.current] = time.perf_counter() - self.started
            self.current = None


VARIANTS = {  # name -> (plugin set, CNI node daemons)
    "cnipy": ("cnipy", True),
    "cnipy-exec": ("cnipy", False),
    "reference": ("reference", False),
}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that `finally: down(...)` runs on SIGTERM too


def one(shape: tuple[int, int], plugins: str, backend: str, state_root: Path, verify: bool) -> dict[str, object]:
    nodes, pods = shape
    name = f"cnb{secrets.token_hex(4)}"
    plugin_set, daemon = VARIANTS[plugins]
    spec = LabSpec(name=name, nodes=nodes, pods_per_node=pods, plugins=plugin_set, backend=backend,
                   state_root=state_root, cni_daemon=daemon)
    timer = StepTimer()
    t0 = time.perf_counter()
    try:
        lab = up(spec, timer)
        up_s = time.perf_counter() - t0
        ok = None
        if verify:
            matrix = check(lab)
            ok = matrix.ok
            if not ok:
                print(f"  check FAILED for {nodes}x{pods} {plugins}: {len(matrix.failures)} failures", flush=True)
    finally:
        t1 = time.perf_counter()
        report = down(name, state_root=state_root)
        down_s = time.perf_counter() - t1
    if report.leftovers:
        raise SystemExit(f"down left {report.leftovers}")
    return {"nodes": nodes, "pods_per_node": pods, "plugins": plugins, "backend": backend, "up_s": up_s,
            "down_s": down_s, "check_ok": ok, "steps": timer.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="3x4,20x5")
    parser.add_argument("--plugins", default="cnipy,reference",
                        help=f"variants to compare: {', '.join(VARIANTS)} (cnipy-exec: no node daemons)")
    parser.add_argument("--backend", default="static")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    plugin_sets = args.plugins.split(",")
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="cnb-", dir="/run") as tmp:  # short: daemon sockets live below
        for shape in shapes:
            for r in range(args.rounds):
                order = plugin_sets if r % 2 == 0 else list(reversed(plugin_sets))
                for plugins in order:
                    res = one((shape[0], shape[1]), plugins, args.backend, Path(tmp), verify=r == 0)
                    runs.append(res)
                    print(f"  {shape[0]}x{shape[1]} {plugins:<9} up {res['up_s']:.2f}s down {res['down_s']:.2f}s",
                          flush=True)
    print(f"\nlab bring-up, back end {args.backend}, median of {args.rounds} rounds:")
    print(f"  {'shape':<8} {'plugins':<10} {'up':>8} {'attach':>8} {'down':>8}")
    summary = []
    for shape in shapes:
        for plugins in plugin_sets:
            mine = [r for r in runs if (r["nodes"], r["pods_per_node"]) == shape and r["plugins"] == plugins]
            up_med = statistics.median(float(str(r["up_s"])) for r in mine)
            down_med = statistics.median(float(str(r["down_s"])) for r in mine)
            attach = statistics.median(
                next((v for k, v in r["steps"].items() if k.startswith("attaching")), 0.0)  # type: ignore[union-attr]
                for r in mine)
            print(f"  {f'{shape[0]}x{shape[1]}':<8} {plugins:<10} {up_med:>7.2f}s {attach:>7.2f}s {down_med:>7.2f}s")
            summary.append({"shape": f"{shape[0]}x{shape[1]}", "plugins": plugins, "up_median_s": up_med,
                            "attach_median_s": attach, "down_median_s": down_med})
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lab_bringup-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))
    print(f"\nresults: {path}")
    return 0 if all(r["check_ok"] is not False for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

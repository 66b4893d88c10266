"""CNI plugin latency, cnipy against the Go reference plugins, side by side in one run (run as root).

    .venv/bin/python bench/plugins.py [--runs 30] [--pods 100] [--parallel 8] [--rounds 3] [--plugin bridge]

What it measures, all inside a fresh "node" network namespace that it creates and removes:
  1. ADD and DEL latency, wall time of the executable as a runtime spawns it, over --runs interleaved runs
     (each run: one new pod namespace per path, ADDs in shuffled order, then DELs in shuffled order), p50/p90
     per path and the p50 ratio ours / Go. Paths:
       go        /usr/lib/cni/<plugin> with /usr/lib/cni/host-local
       daemon    the compiled front (.venv/libexec/cni) forwarding to a cnipy daemon: the default path
       launcher  the sh launcher in plugins/, which execs that front (so also through the daemon)
       fallback  the compiled front with no daemon reachable (it execs the Python plugin)
       python    the Python plugin executable with no front at all
  2. A burst: --pods pods ADDed, then DELed, --parallel at a time, as a runtime starting many pods at once;
     total wall time go / daemon over --rounds alternating rounds (median ratio reported).

The "cpu" column is the CPU time of one call: the processes the bench spawned (and their children) plus the
daemon's processes, but not programs the daemon itself runs (iptables-restore, nft with --masq).

--plugin loopback measures the loopback plugins instead (no IPAM), e.g. while bridge is being written.
--masq turns on ipMasq (podman's default for its networks): iptables work is then part of every call.
Results go to stdout and, as JSON, to bench/results/plugins-<time>.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GO_DIR = Path("/usr/lib/cni")
FRONTS = ROOT / ".venv" / "libexec" / "cni"
PYTHON = ROOT / ".venv" / "bin" / "python3"
LAUNCH = ROOT / "cnipy" / "cni" / "launch.py"
PATHS = ("go", "daemon", "launcher", "fallback", "python")


@dataclass
class Path_:
    """One way of running a plugin: its argv, config and extra environment."""

    name: str
    argv: list[str]
    conf: dict[str, Any]
    env: dict[str, str]
    add: list[float] = field(default_factory=list)
    dele: list[float] = field(default_factory=list)
    add_cpu: list[float] = field(default_factory=list)
    dele_cpu: list[float] = field(default_factory=list)


DAEMON_PIDS: list[int] = []


def cpu_seconds() -> float:
    """CPU time used so far by this process's waited-for children and by the daemon's processes."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    for pid in DAEMON_PIDS:  # the kernel's per-process CPU clock: ((~pid) << 3) | CPUCLOCK_SCHED
        with contextlib.suppress(OSError):
            total += time.clock_gettime((~pid << 3) | 2)
    return total


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, timeout=60, **kw)


def netns_add(name: str) -> None:
    run(["ip", "netns", "add", name])


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False, timeout=60)


def conf_for(plugin: str, ours: bool, index: int, data_dir: Path, masq: bool) -> dict[str, Any]:
    name = f"cnfnet{index}"
    if plugin == "loopback":
        return {"cniVersion": "1.0.0", "name": name, "type": "cnipy-loopback" if ours else "loopback"}
    ipam = "cnipy-host-local" if ours else "host-local"
    return {"cniVersion": "1.0.0", "name": name, "type": "cnipy-bridge" if ours else "bridge",
            "bridge": f"cnfbr{index}", "isGateway": True, "ipMasq": masq,
            "ipam": {"type": ipam, "subnet": f"10.249.{index}.0/24", "dataDir": str(data_dir / name)}}


def make_paths(plugin: str, socket_path: Path, data_dir: Path, masq: bool, wanted: list[str]) -> list[Path_]:
    ours = f"cnipy-{plugin}"
    cni_path = f"{FRONTS}:{GO_DIR}"
    table = {
        "go": ([str(GO_DIR / plugin)], False, {"CNI_PATH": str(GO_DIR)}),
        "daemon": ([str(FRONTS / ours)], True, {"CNI_PATH": cni_path, "CNIPY_CNI_SOCKET": str(socket_path)}),
        "launcher": ([str(ROOT / "plugins" / ours)], True,
                     {"CNI_PATH": cni_path, "CNIPY_CNI_SOCKET": str(socket_path)}),
        "fallback": ([str(FRONTS / ours)], True,
                     {"CNI_PATH": cni_path, "CNIPY_CNI_SOCKET": str(socket_path) + ".absent"}),
        "python": ([str(PYTHON), "-I", "-S", str(LAUNCH), ours], True, {"CNI_PATH": cni_path}),
    }
    out = []
    for i, name in enumerate(wanted):
        argv, is_ours, env = table[name]
        out.append(Path_(name, argv, conf_for(plugin, is_ours, i, data_dir, masq), env))
    return out


def call(p: Path_, command: str, pod: str, container: str) -> float:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_IFNAME": "lo" if p.conf["type"].endswith("loopback") else "eth0",
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **p.env}
    data = json.dumps(p.conf).encode()
    started = time.perf_counter()
    proc = subprocess.run(p.argv, input=data, env=env, capture_output=True, timeout=120, check=False)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{p.name} {command} {pod} failed ({proc.returncode}): "
                           f"{proc.stdout.decode()[:400]} {proc.stderr.decode()[:400]}")
    return took


def latency(paths: list[Path_], runs: int, warmup: int) -> None:
    """Sequential calls: wall time, and CPU time (the plugin processes' plus the daemon's) of each."""
    for i in range(warmup + runs):
        pods = {p.name: f"cnf{secrets.token_hex(4)}" for p in paths}
        for pod in pods.values():
            netns_add(pod)
        try:
            for command in ("ADD", "DEL"):
                order = paths[:]
                random.shuffle(order)
                for p in order:
                    cpu = cpu_seconds()
                    took = call(p, command, pods[p.name], f"cnfc{i}")
                    cpu = cpu_seconds() - cpu
                    if i >= warmup:
                        (p.add if command == "ADD" else p.dele).append(took)
                        (p.add_cpu if command == "ADD" else p.dele_cpu).append(cpu)
        finally:
            for pod in pods.values():
                netns_del(pod)


def burst(p: Path_, pods: int, parallel: int, round_no: int) -> tuple[float, float, float]:
    """Wall time of all ADDs, of all DELs, and the CPU time the ADDs used."""
    names = [f"cnf{secrets.token_hex(4)}" for _ in range(pods)]
    for n in names:
        netns_add(n)
    try:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            times = []
            for command in ("ADD", "DEL"):
                started, cpu = time.perf_counter(), cpu_seconds()
                futures = [pool.submit(call, p, command, n, f"cnfb{round_no}x{k}") for k, n in enumerate(names)]
                for f in futures:
                    f.result()
                times.append(time.perf_counter() - started)
                if command == "ADD":
                    add_cpu = cpu_seconds() - cpu
        return times[0], times[1], add_cpu
    finally:
        for n in names:
            netns_del(n)


@contextlib.contextmanager
def daemon(socket_path: Path, processes: int | None, calls: int | None) -> Iterator[None]:
    log = open(socket_path.parent.parent / "daemon.log", "wb")  # noqa: SIM115 - closed below
    extra = (["--processes", str(processes)] if processes else []) + (["--calls", str(calls)] if calls else [])
    proc = subprocess.Popen([str(PYTHON), "-m", "cnipy.cni.daemon", "--socket", str(socket_path), *extra], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(socket_path))
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the cnipy daemon did not start: "
                                   + (socket_path.parent.parent / "daemon.log").read_text())
            time.sleep(0.05)
        # It listens before it forks its workers; it logs "serving" after: count their CPU too.
        log_path = socket_path.parent.parent / "daemon.log"
        while b"serving " not in log_path.read_bytes() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        DAEMON_PIDS[:] = [proc.pid, *children(proc.pid)]
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


Bursts = dict[str, list[tuple[float, float, float]]]


def report(paths: list[Path_], bursts: Bursts, args: argparse.Namespace) -> dict[str, Any]:
    go = next((p for p in paths if p.name == "go"), None)
    out: dict[str, Any] = {"plugin": args.plugin, "masq": args.masq, "runs": args.runs, "latency": {}, "burst": {}}
    print(f"\n{args.plugin}{' + host-local' if args.plugin == 'bridge' else ''}, {args.runs} interleaved runs "
          f"(ms; ratio = p50 / Go p50; cpu = p50 CPU time of the call, plugin processes + daemon)")
    print(f"{'path':10} {'ADD p50':>8} {'p90':>7} {'ratio':>6} {'cpu':>6}   "
          f"{'DEL p50':>8} {'p90':>7} {'ratio':>6} {'cpu':>6}")
    for p in paths if args.runs else []:
        row: dict[str, Any] = {}
        cells = []
        for verb, vals, cpu in (("ADD", p.add, p.add_cpu), ("DEL", p.dele, p.dele_cpu)):
            p50, p90, cpu50 = statistics.median(vals) * 1e3, pct(vals, 0.9) * 1e3, statistics.median(cpu) * 1e3
            ref = (go.add if verb == "ADD" else go.dele) if go else None
            ratio = p50 / (statistics.median(ref) * 1e3) if ref else float("nan")
            row[verb] = {"p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "ratio": round(ratio, 3),
                         "cpu_p50_ms": round(cpu50, 2)}
            cells.append(f"{p50:8.2f} {p90:7.2f} {ratio:6.2f} {cpu50:6.1f}")
        out["latency"][p.name] = row
        print(f"{p.name:10} {cells[0]}   {cells[1]}")
    if bursts:
        print(f"\nburst: {args.pods} pods, {args.parallel} in parallel, {args.rounds} rounds (s, total wall time)")
        for name, rounds in bursts.items():
            adds, dels, cpus = [r[0] for r in rounds], [r[1] for r in rounds], [r[2] for r in rounds]
            out["burst"][name] = {"add_s": [round(x, 3) for x in adds], "del_s": [round(x, 3) for x in dels],
                                  "add_cpu_s": [round(x, 3) for x in cpus]}
            print(f"{name:10} ADD {' '.join(f'{x:6.2f}' for x in adds)}   DEL {' '.join(f'{x:6.2f}' for x in dels)}"
                  f"   ADD CPU {' '.join(f'{x:5.2f}' for x in cpus)}")
        if "go" in bursts and "daemon" in bursts:
            ra = statistics.median(a[0] / b[0] for a, b in zip(bursts["daemon"], bursts["go"], strict=True))
            rd = statistics.median(a[1] / b[1] for a, b in zip(bursts["daemon"], bursts["go"], strict=True))
            out["burst"]["ratio_add"], out["burst"]["ratio_del"] = round(ra, 3), round(rd, 3)
            print(f"ratio daemon / go (median of rounds): ADD {ra:.2f}  DEL {rd:.2f}")
    return out


def inside(args: argparse.Namespace) -> int:
    """Runs in the node namespace (under `ip netns exec`, so /sys is the node's too)."""
    run(["ip", "link", "set", "lo", "up"])
    work = Path(tempfile.mkdtemp(prefix="cnfbench"))
    os.chmod(work, 0o700)
    socket_path = work / "run" / "cni.sock"
    wanted = [p for p in PATHS if p in args.paths.split(",")]
    load_before = os.getloadavg()[0]
    try:
        paths = make_paths(args.plugin, socket_path, work / "data", args.masq, wanted)
        with daemon(socket_path, args.daemon_processes, args.daemon_calls):
            if args.runs:
                latency(paths, args.runs, warmup=2)
            bursts: Bursts = {}
            if args.pods:
                pair = [p for p in paths if p.name in ("go", "daemon")]
                for r in range(args.rounds):
                    for p in pair if r % 2 == 0 else pair[::-1]:
                        bursts.setdefault(p.name, []).append(burst(p, args.pods, args.parallel, r))
        result = report(paths, dict(sorted(bursts.items())), args)
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
        cpus = os.cpu_count() or 1
        print(f"load average before/after: {load_before:.1f} / {result['load_after']:.1f} on {cpus} CPUs")
        if max(load_before, result["load_after"]) > cpus:
            print("warning: the machine was busy with other work; these figures are noisy, re-run when idle")
        out_dir = ROOT / "bench" / "results"
        out_file = args.out or out_dir / f"plugins-{args.plugin}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten: {out_file}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--pods", type=int, default=100, help="pods in the burst (0: no burst)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plugin", choices=("bridge", "loopback"), default="bridge")
    parser.add_argument("--masq", action="store_true", help="bridge with ipMasq (iptables rules per pod)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--daemon-processes", type=int, help="the daemon's --processes (default: its own)")
    parser.add_argument("--daemon-calls", type=int, help="the daemon's --calls (default: its own)")
    parser.add_argument("--out", type=Path, help="write the JSON results here (default: bench/results/)")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/plugins.py: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    if not (FRONTS / f"cnipy-{args.plugin}").exists():
        print("bench/plugins.py: the compiled fronts are missing; run bin/setup", file=sys.stderr)
        return 2
    if args.inside:
        return inside(args)
    node = f"cnf{secrets.token_hex(4)}"
    netns_add(node)
    try:
        rest = sys.argv[1:] if argv is None else argv
        return subprocess.run(["ip", "netns", "exec", node, sys.executable, __file__, "--inside", node, *rest],
                              check=False).returncode
    finally:
        netns_del(node)


if __name__ == "__main__":
    sys.exit(main())

"""ADD+DEL latency of cnipy-host-local against the reference /usr/lib/cni/host-local, interleaved in one run.

    .venv/bin/python bench/hostlocal.py [--runs 40] [--with-daemon]

Each run is one ADD then one DEL of a fresh container on a temporary dataDir (one per variant), called the way a
runtime calls a plugin (exec, env, stdin). The variants take turns, in a rotating order, so drift in machine load
hits all alike. Prints p50/p90 per verb, the ratio of the medians to the reference, and, for scale, the bare start
of the interpreter our executable runs (`python3 -I -S -c pass`).

`cnipy` runs the Python plugin in the executable's own process (CNIPY_CNI_SOCKET=""), whether or not a node
daemon is up. --with-daemon also starts a private cnipy CNI daemon (python -m cnipy.cni.daemon) on a temporary
socket and measures the same executable forwarding to it (`cnipy+daemon`); the daemon is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python3"
OURS = ROOT / "plugins" / "cnipy-host-local"
GO = Path("/usr/lib/cni/host-local")
VERBS = ("ADD", "DEL", "ADD+DEL")


def call(exe: Path, socket: str, command: str, container: str, conf: bytes) -> float:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/var/run/netns/bench",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "CNIPY_CNI_SOCKET": socket}
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe)], input=conf, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{exe} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed * 1000


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def start_daemon(socket: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(PYTHON), "-m", "cnipy.cni.daemon", "--socket", socket], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(socket):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("the cnipy CNI daemon did not start")
        time.sleep(0.05)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--with-daemon", action="store_true", help="also measure the path through a cnipy daemon")
    args = ap.parse_args()
    if args.runs < 30:
        sys.exit("use at least 30 runs: two identical binaries differ by up to 15% over 20 runs here")
    with tempfile.TemporaryDirectory(prefix="cnhbench") as tmp:
        variants = {"cnipy": (OURS, ""), "go": (GO, "")}
        daemon = None
        if args.with_daemon:
            variants["cnipy+daemon"] = (OURS, f"{tmp}/cni.sock")
            daemon = start_daemon(f"{tmp}/cni.sock")
        try:
            times, bare = measure(variants, tmp, args.runs, args.warmup)
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
    load = os.getloadavg()[0]
    print(f"host-local, {args.runs} interleaved ADD+DEL runs per variant (ms); load average {load:.1f}")
    print(f"{'':10}{'variant':14}{'p50':>8}{'p90':>8}")
    for verb in VERBS:
        for name in times:
            v = times[name][verb]
            print(f"{verb:10}{name:14}{pct(v, 0.5):8.1f}{pct(v, 0.9):8.1f}")
    print(f"{'start':10}{'python':14}{pct(bare, 0.5):8.1f}{pct(bare, 0.9):8.1f}   (python3 -I -S -c pass, for scale)")
    for name in times:
        if name != "go":
            for verb in VERBS:
                ratio = statistics.median(times[name][verb]) / statistics.median(times["go"][verb])
                print(f"ratio {name}/go, median {verb}: {ratio:.2f}")


def measure(variants: dict[str, tuple[Path, str]], tmp: str, runs: int,
            warmup: int) -> tuple[dict[str, dict[str, list[float]]], list[float]]:
    times: dict[str, dict[str, list[float]]] = {n: {v: [] for v in VERBS} for n in variants}
    bare: list[float] = []
    confs = {n: json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "host-local",
                            "ipam": {"type": "host-local", "subnet": "10.250.0.0/16",
                                     "dataDir": f"{tmp}/{n}"}}).encode() for n in variants}
    names = list(variants)
    for i in range(-warmup, runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            exe, socket = variants[name]
            add = call(exe, socket, "ADD", f"c{i + warmup}", confs[name])
            dele = call(exe, socket, "DEL", f"c{i + warmup}", confs[name])
            if i >= 0:
                times[name]["ADD"].append(add)
                times[name]["DEL"].append(dele)
                times[name]["ADD+DEL"].append(add + dele)
        if i >= 0:
            t0 = time.perf_counter()
            subprocess.run([str(PYTHON), "-I", "-S", "-c", "pass"], check=True)
            bare.append((time.perf_counter() - t0) * 1000)
    return times, bare


if __name__ == "__main__":
    main()

"""ADD+DEL latency of cnipy-host-local against the reference /usr/lib/cni/host-local, interleaved in one run.

    .venv/bin/python bench/hostlocal.py [--runs 40] [--daemon-socket /run/cnipy/cni.sock]

Each run is one ADD then one DEL of a fresh container on its own temporary dataDir (one per plugin), called the way
a runtime calls a plugin (exec, env, stdin). The plugins alternate, and which one goes first alternates too, so
drift in machine load hits both alike. Prints p50/p90 per verb, the ratio of the medians, and, for scale, the
bare start of the interpreter our executable runs (`python3 -I -S -c pass`).

By default the call runs the Python plugin in the executable's own process (CNIPY_CNI_SOCKET=""), whether or not
a cnipy node daemon is up; --daemon-socket measures the path through the daemon instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = {"cnipy": ROOT / "plugins" / "cnipy-host-local", "go": Path("/usr/lib/cni/host-local")}


SOCKET = ""


def call(exe: Path, command: str, container: str, conf: bytes) -> float:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/var/run/netns/bench",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "CNIPY_CNI_SOCKET": SOCKET}
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe)], input=conf, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{exe} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed * 1000


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--daemon-socket", default="", help="forward through the cnipy daemon listening here")
    args = ap.parse_args()
    global SOCKET
    SOCKET = args.daemon_socket
    if args.runs < 30:
        sys.exit("use at least 30 runs: two identical binaries differ by up to 15% over 20 runs here")
    times: dict[str, dict[str, list[float]]] = {p: {"ADD": [], "DEL": [], "ADD+DEL": []} for p in PLUGINS}
    bare: list[float] = []
    python = ROOT / ".venv" / "bin" / "python3"
    with tempfile.TemporaryDirectory(prefix="cnhbench") as tmp:
        confs = {p: json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "host-local",
                                "ipam": {"type": "host-local", "subnet": "10.250.0.0/16",
                                         "dataDir": f"{tmp}/{p}"}}).encode() for p in PLUGINS}
        for i in range(-args.warmup, args.runs):
            order = list(PLUGINS) if i % 2 == 0 else list(reversed(PLUGINS))
            for p in order:
                add = call(PLUGINS[p], "ADD", f"c{i + args.warmup}", confs[p])
                dele = call(PLUGINS[p], "DEL", f"c{i + args.warmup}", confs[p])
                if i >= 0:
                    if p == "cnipy":
                        t0 = time.perf_counter()
                        subprocess.run([str(python), "-I", "-S", "-c", "pass"], check=True)
                        bare.append((time.perf_counter() - t0) * 1000)
                    times[p]["ADD"].append(add)
                    times[p]["DEL"].append(dele)
                    times[p]["ADD+DEL"].append(add + dele)
    via = f"through the daemon at {SOCKET}" if SOCKET else "standalone (no daemon)"
    print(f"host-local, {args.runs} interleaved runs each (ms); cnipy {via}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':10}{'plugin':8}{'p50':>8}{'p90':>8}")
    for verb in ("ADD", "DEL", "ADD+DEL"):
        for p in PLUGINS:
            v = times[p][verb]
            print(f"{verb:10}{p:8}{pct(v, 0.5):8.1f}{pct(v, 0.9):8.1f}")
    print(f"{'start':10}{'python':8}{pct(bare, 0.5):8.1f}{pct(bare, 0.9):8.1f}   (python3 -I -S -c pass, for scale)")
    for verb in ("ADD", "DEL", "ADD+DEL"):
        ratio = statistics.median(times["cnipy"][verb]) / statistics.median(times["go"][verb])
        print(f"ratio cnipy/go, median {verb}: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Run inside a client namespace: make connections and print a JSON summary.

    probe.py tcp HOST PORT COUNT [TIMEOUT]         -> {"ok": {ident: n}, "peers": {peer: n}, "fail": n, "errors": {}}
    probe.py udp HOST PORT COUNT SPORT [TIMEOUT]   -> same, one datagram each from a fixed source port
    probe.py loop HOST PORT STOPFILE MAXSECONDS    -> connect continuously until STOPFILE exists; adds
                                                      "slowest" (s) and "failed_at" (s since start, per failure)

The loop allows 5 s per connection: a SYN the proxy lost costs a 1 s retransmission and a blackhole never
answers, while a busy test machine may stall a healthy connection for a second or two.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter


def tcp_once(host: str, port: int, timeout: float) -> tuple[str, str]:
    with socket.create_connection((host, port), timeout=timeout) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    ident, peer = data.decode().split()
    return ident, peer


def main() -> None:
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ok: Counter[str] = Counter()
    peers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    if mode == "tcp":
        count, timeout = int(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
        for _ in range(count):
            try:
                ident, peer = tcp_once(host, port, timeout)
                ok[ident] += 1
                peers[peer] += 1
            except OSError as exc:
                errors[type(exc).__name__] += 1
    elif mode == "udp":
        count, sport = int(sys.argv[4]), int(sys.argv[5])
        timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 0.5
        v6 = ":" in host
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("::" if v6 else "0.0.0.0", sport))
        s.settimeout(timeout)
        for i in range(count):
            try:
                s.sendto(f"ping {i}".encode(), (host, port))
                ident, peer = s.recv(256).decode().split()
                ok[ident] += 1
                peers[peer] += 1
            except OSError as exc:
                errors[type(exc).__name__] += 1
    else:  # loop
        start = time.monotonic()
        stop, limit = sys.argv[4], start + float(sys.argv[5])
        slowest, failed_at = 0.0, []
        while not os.path.exists(stop) and time.monotonic() < limit:
            t = time.monotonic()
            try:
                ident, peer = tcp_once(host, port, 5.0)
                ok[ident] += 1
                slowest = max(slowest, time.monotonic() - t)
            except OSError as exc:
                errors[type(exc).__name__] += 1
                failed_at.append(round(t - start, 2))
        print(json.dumps({"ok": ok, "fail": sum(errors.values()), "errors": errors, "slowest": round(slowest, 3),
                          "failed_at": failed_at}))
        return
    print(json.dumps({"ok": ok, "peers": peers, "fail": sum(errors.values()), "errors": errors}))


if __name__ == "__main__":
    main()

"""Overlay benchmarks in namespaces with a real etcd (run as root):

    .venv/bin/python bench/overlay.py [--nodes 3,50] [--rounds 5] [--seconds 5]

1. Convergence: a lease for a new (synthetic) node is written to etcd; the time until the last agent has
   programmed it (each agent's cnipy_overlay_last_change_timestamp_seconds, same clock) at each cluster size.
   Targets: <= 1 s at 3 nodes, <= 5 s at 50 nodes. The removal of that lease is timed the same way.
2. Throughput: iperf3 TCP pod(n1) -> pod(n2) through VXLAN and node(n1) -> node(n2) on the underlay, alternating,
   in the same run; the ratio of medians (target >= 0.75).
3. Latency: TCP request/response RTT pod -> pod (VXLAN) and node -> node (underlay); the difference is what
   the overlay adds.

Results go to stdout and, as JSON, to bench/results/overlay-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnipy.netlink.ns import entered  # noqa: E402
from cnipy.overlay.backends import vtep_mac  # noqa: E402
from cnipy.overlay.etcd import Client  # noqa: E402
from tests.netns.overlay.topo import Cluster, in_ns, ns_http  # noqa: E402

LEASE_KEY = "/cnipy.io/network/subnets/10.244.{i}.0-24"


def last_change(c: Cluster, node_ns: str) -> float:
    for line in ns_http(node_ns, 9867, "/metrics")[1].splitlines():
        if line.startswith("cnipy_overlay_last_change_timestamp_seconds "):
            return float(line.split()[1])
    return 0.0


def converge(c: Cluster, put: bool, i: int, timeout: float = 30) -> float:
    client = Client(c.etcd_url)
    value = json.dumps({"node": f"bench{i}", "publicIP": "172.30.1.250", "backendType": "vxlan",
                        "vtepMAC": vtep_mac(f"bench{i}")})
    t0 = time.time()
    with entered(c.ctl):
        if put:
            client.put(LEASE_KEY.format(i=i), value)
        else:
            client.delete(LEASE_KEY.format(i=i))
    deadline = time.monotonic() + timeout
    pending = {n.ns for n in c.nodes}
    done: dict[str, float] = {}
    while pending:
        for ns in sorted(pending):
            ts = last_change(c, ns)
            if ts >= t0:
                done[ns] = ts
                pending.discard(ns)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} nodes did not converge")
        time.sleep(0.05)
    return max(done.values()) - t0


def bench_convergence(nodes: int, rounds: int) -> dict[str, object]:
    with Cluster(resync=30.0).build(nodes) as c:
        t = time.monotonic()
        for n in c.nodes:
            c.start_agent(n)
        c.wait_ready(timeout=120)
        started = time.monotonic() - t
        time.sleep(1.0)
        adds, dels = [], []
        for r in range(rounds):
            adds.append(converge(c, True, 200 + r))
            time.sleep(0.3)
            dels.append(converge(c, False, 200 + r))
            time.sleep(0.3)
        out = {"nodes": nodes, "agents_ready_s": round(started, 2),
               "add_s": [round(x, 3) for x in adds], "del_s": [round(x, 3) for x in dels],
               "add_median_s": round(statistics.median(adds), 3), "add_max_s": round(max(adds), 3),
               "del_median_s": round(statistics.median(dels), 3)}
        print(f"convergence {nodes:3d} nodes: add median {out['add_median_s']} s, max {out['add_max_s']} s; "
              f"del median {out['del_median_s']} s (agents ready in {out['agents_ready_s']} s)", flush=True)
        return out


def iperf(c: Cluster, client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = in_ns(client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-J", timeout=seconds + 30)
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait()


def tcp_rtt(client_ns: str, server_ns: str, ip: str, count: int = 2000) -> float:
    """Median round trip (microseconds) of 1-byte request/response on one TCP connection, sockets opened
    inside the namespaces (ping is not installed here; the Python overhead is the same on both paths)."""
    with entered(server_ns):
        srv = socket.socket()
    with entered(client_ns):
        cli = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, 7101))
    srv.listen(1)

    def echo() -> None:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(1):
                conn.sendall(data)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    try:
        cli.connect((ip, 7101))
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            cli.sendall(b"x")
            cli.recv(1)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e6
    finally:
        cli.close()
        t.join(2)
        srv.close()


def bench_dataplane(seconds: int, rounds: int) -> dict[str, object]:
    with Cluster().build(2) as c:
        for n in c.nodes:
            c.start_agent(n)
        c.wait_ready()
        p1, p2 = c.add_pod(c.nodes[0]), c.add_pod(c.nodes[1])
        c.wait_reachable()
        n1, n2 = c.nodes
        vtep2 = str(p2.ip).rsplit(".", 1)[0] + ".0"  # n2's VXLAN device: the tunnel without the pod veth/bridge
        pod_bw, node_bw, vtep_bw = [], [], []
        for r in range(rounds):  # interleaved, the order alternating, so load drift hits all paths alike
            pair = [(pod_bw, p1.ns, p2.ns, str(p2.ip)), (node_bw, n1.ns, n2.ns, str(n2.ip.ip))]
            for bucket, cns, sns, ip in pair if r % 2 == 0 else pair[::-1]:
                bucket.append(iperf(c, cns, sns, ip, seconds))
            vtep_bw.append(iperf(c, n1.ns, n2.ns, vtep2, seconds))
        pod_rtt = [tcp_rtt(p1.ns, p2.ns, str(p2.ip)) for _ in range(3)]
        node_rtt = [tcp_rtt(n1.ns, n2.ns, str(n2.ip.ip)) for _ in range(3)]
        out = {"pod_gbit": [round(x, 2) for x in pod_bw], "node_gbit": [round(x, 2) for x in node_bw],
               "node_vtep_gbit": [round(x, 2) for x in vtep_bw],
               "ratio": round(statistics.median(pod_bw) / statistics.median(node_bw), 3),
               "ratio_per_round": [round(a / b, 3) for a, b in zip(pod_bw, node_bw, strict=True)],
               "loadavg": [round(x, 1) for x in os.getloadavg()],
               "pod_rtt_us": round(statistics.median(pod_rtt), 1), "node_rtt_us": round(statistics.median(node_rtt), 1)}
        out["added_rtt_us"] = round(float(out["pod_rtt_us"]) - float(out["node_rtt_us"]), 1)  # type: ignore[arg-type]
        print(f"throughput pod->pod (vxlan) {statistics.median(pod_bw):.2f} Gbit/s, node->node "
              f"{statistics.median(node_bw):.2f} Gbit/s, ratio {out['ratio']} (per round {out['ratio_per_round']}); "
              f"node->VTEP {statistics.median(vtep_bw):.2f} Gbit/s; load average {out['loadavg']}", flush=True)
        print(f"latency pod->pod {out['pod_rtt_us']} us, node->node {out['node_rtt_us']} us, overlay adds "
              f"{out['added_rtt_us']} us RTT", flush=True)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="3,50")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--skip-dataplane", action="store_true")
    args = ap.parse_args()
    results: dict[str, object] = {"convergence": [bench_convergence(int(n), args.rounds)
                                                  for n in args.nodes.split(",")]}
    if not args.skip_dataplane:
        results["dataplane"] = bench_dataplane(args.seconds, args.rounds)
    out = ROOT / "bench" / "results" / f"overlay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Service proxy benchmarks (not part of pytest). Run as root: .venv/bin/python bench/proxy_sync.py [--quick]

1. Full sync of N services x 10 endpoints (N = 1k, 10k): our total time (plan + render + apply, as the daemon
   does it) divided by a bare ``nft -f`` / ``iptables-restore --noflush`` of the same rule text, each in a
   fresh network namespace. Target <= 1.2.
2. One service changed among 10k (endpoints replaced): partial sync time, median of several. nftables target
   <= 50 ms; the iptables figure is reported. For nftables also end to end: from a watch event into the object
   store to rules in force, through the daemon (snapshot, conflict check, re-plan, sync).
3. Connection setup time to a ClusterIP with 10k services loaded divided by the same with 10 services
   (median of many connects). nftables target <= 1.1; the iptables figure is reported.

Everything runs inside namespaces this script creates and deletes; --quick uses 1k services only.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnipy.proxy.iptables.backend import IptablesProxier  # noqa: E402
from cnipy.proxy.iptables.runner import Iptables  # noqa: E402
from cnipy.proxy.model import ClusterState, ServiceKey  # noqa: E402
from cnipy.proxy.nftables.backend import NftablesProxier  # noqa: E402
from cnipy.proxy.nftables.runner import Nft  # noqa: E402
from cnipy.proxy.plan import NodeConfig, build_plans  # noqa: E402
from cnipy.proxy.sync import Proxier, gc_paused  # noqa: E402
from tests.netns.proxy.topology import Topology, build  # noqa: E402
from tests.support import netns as N  # noqa: E402
from tests.unit.proxy.builders import endpoints, scale_state, service  # noqa: E402

CONFIG = NodeConfig(node_name="bench-node")  # the scaled endpoints live on other nodes


class Namespaces:
    def __init__(self) -> None:
        self.made: list[N.Netns] = []

    def __call__(self) -> N.Netns:
        ns = N.add(N.unique("cpx"))
        self.made.append(ns)
        return ns

    def close(self) -> None:
        for ns in reversed(self.made):
            N.delete(ns)
        self.made.clear()


def with_target(st: ClusterState, ep_ip: str) -> ClusterState:
    """Add the measured service, 10.95.0.1:80 -> ep_ip:8080 (an endpoint that exists)."""
    s = service("target", "10.95.0.1")
    return ClusterState(services={**st.services, s.key: s},
                        slices={**st.slices, s.key: (endpoints(s, ep_ip, node="bench-node"),)})


def _tee(captured: list[str], chunks: Any) -> Any:
    for chunk in chunks:
        captured.append(chunk)
        yield chunk


def proxier_for(mode: str, ns: N.Netns, captured: list[str]) -> Proxier:
    """A proxier in ``ns`` that also copies the rule text it applies into ``captured`` (for the bare load)."""
    prefix = ("ip", "netns", "exec", ns.name)
    if mode.startswith("nftables"):
        nft = Nft(prefix=prefix)
        run_lines = nft.run_lines
        nft.run_lines = lambda lines: run_lines(_tee(captured, lines))  # type: ignore[method-assign]
        return NftablesProxier(nft, CONFIG)
    ipt = Iptables("legacy" if mode == "iptables-legacy" else "nft", prefix=prefix)
    restore, restore_lines = ipt.restore, ipt.restore_lines
    ipt.restore = lambda text: restore("".join(_tee(captured, [text])))  # type: ignore[method-assign]
    ipt.restore_lines = lambda chunks: restore_lines(_tee(captured, chunks))  # type: ignore[method-assign]
    return IptablesProxier(ipt, CONFIG)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_load(mode: str, ns: N.Netns, text: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".rules", delete=False) as f:
        f.write(text)
    restore = "iptables-legacy-restore" if mode == "iptables-legacy" else "iptables-nft-restore"
    argv = ["nft", "-f", f.name] if mode == "nftables" else [restore, "-w", "5", "--noflush", f.name]
    try:
        return timed(lambda: subprocess.run(["ip", "netns", "exec", ns.name, *argv], check=True,
                                            capture_output=True))
    finally:
        Path(f.name).unlink()


def connect_latency(topo: Topology, count: int) -> float:
    code = (
        "import socket,time,statistics,sys\n"
        "ts=[]\n"
        f"for _ in range({count}):\n"
        "    t=time.perf_counter()\n"
        "    s=socket.create_connection(('10.95.0.1',80),timeout=2); s.recv(64); s.close()\n"
        "    ts.append(time.perf_counter()-t)\n"
        "print(statistics.median(ts))\n")
    out = topo.client.run(sys.executable, "-c", code, timeout=300).stdout
    return float(out)


def load_times(mode: str, st: ClusterState, make: Namespaces, reps: int) -> dict[str, float]:
    """Cold full syncs (plan + render + apply) and bare loads of the same text, each in a fresh namespace,
    interleaved; the minimum of each (the machine is shared, so the minimum is the least disturbed figure)."""
    plan_t, sync_t, bare_t = [], [], []
    for _ in range(reps):
        ours_ns, bare_ns = make(), make()
        captured: list[str] = []
        proxier = proxier_for(mode, ours_ns, captured)
        with gc_paused():
            start = time.perf_counter()
            plans = build_plans(st, CONFIG)
            mid = time.perf_counter()
            proxier.sync(plans, None)
            end = time.perf_counter()
        plan_t.append(mid - start)
        sync_t.append(end - mid)
        bare_t.append(bare_load(mode, bare_ns, "".join(captured)))
        for ns in (ours_ns, bare_ns):
            N.delete(ns)
            make.made.remove(ns)
    # Each repetition's ratio compares runs made seconds apart, which cancels most of the load that other
    # users put on the machine; report the median of those, and the minima.
    pairs = list(zip(plan_t, sync_t, bare_t, strict=True))
    return {"ours_s": min(p + s for p, s, _ in pairs), "plan_s": min(plan_t), "sync_s": min(sync_t),
            "bare_s": min(bare_t), "ratio": statistics.median((p + s) / b for p, s, b in pairs),
            "sync_ratio": statistics.median(s / b for _, s, b in pairs), "reps": reps}


def full_sync(mode: str, n: int, make: Namespaces, samples: int, reps: int) -> dict[str, Any]:
    st = with_target(scale_state(n, 10), "10.244.1.10")
    result: dict[str, Any] = {"mode": mode, "services": n}
    if reps:
        result |= load_times(mode, st, make, reps)
    topo = build(make, 1)
    try:
        captured: list[str] = []
        proxier = proxier_for(mode, topo.node, captured)
        with gc_paused():
            plans = build_plans(st, CONFIG)
            proxier.sync(plans, None)
            if mode == "nftables" or n >= 1000:
                # A periodic/repairing full resync (plans kept, everything re-rendered; iptables reuses the
                # rendered chains of unchanged plans but rewrites every chain); compare with loading the same
                # (table-replacing, chain-rewriting) text again in the same namespace.
                captured.clear()
                result["resync_ours_s"] = timed(lambda: proxier.sync(plans, None))
                result["resync_bare_s"] = bare_load(mode, topo.node, "".join(captured))
                result["resync_ratio"] = result["resync_ours_s"] / result["resync_bare_s"]
        result["connect_median_s"] = connect_latency(topo, samples)
        return result | {"_topo": topo, "_proxier": proxier, "_state": st}
    except BaseException:
        topo.close()
        raise


def one_change(proxier: Proxier, st: ClusterState, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        key = ServiceKey("default", f"svc{(i * 997) % 1000}")
        svc = st.services[key]
        new_slice = endpoints(svc, *[f"10.250.{i % 250}.{j + 1}" for j in range(10)], node="other")
        st = replace(st, slices={**st.slices, key: (new_slice,)})
        with gc_paused():
            times.append(timed(lambda st=st, key=key: _partial(proxier, st, key)))
    return times


def _raw_service(i: int) -> dict[str, Any]:
    ip = f"10.96.{(i + 1) >> 8}.{(i + 1) & 255}"
    return {"metadata": {"name": f"svc{i}", "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def _raw_slice(i: int, ips: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": f"svc{i}-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": f"svc{i}"}},
            "addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "other"} for ip in ips]}


def end_to_end_change(proxier: Proxier, n: int, rounds: int) -> list[float]:
    """One EndpointSlice changed among n services, from the object store the API and etcd sources feed (a
    watch event) to rules in force: snapshot + conflict check + re-plan + sync, as the daemon does it."""
    from cnipy.proxy.daemon import ProxyDaemon, Timing
    from cnipy.proxy.store import SERVICES, SLICES, ObjectStore

    store = ObjectStore("bench:")
    store.replace(SERVICES, [_raw_service(i) for i in range(n)])
    store.replace(SLICES, [_raw_slice(i, [f"10.244.{(i * 10 + j) >> 8 & 255}.{(i * 10 + j) & 255}"
                                          for j in range(10)]) for i in range(n)])

    class Source:
        def poll(self) -> Any:
            return store.snapshot()

    daemon = ProxyDaemon(Source(), proxier, CONFIG, timing=Timing(min_sync_period=0, repair_period=1e9))
    daemon.step()  # the first snapshot: a full sync
    times = []
    for r in range(rounds):
        i = (r * 997) % n
        start = time.perf_counter()
        store.put(SLICES, _raw_slice(i, [f"10.251.{r % 250}.{j + 1}" for j in range(10)]))
        assert daemon.step()
        times.append(time.perf_counter() - start)
    return times


_PLANS: dict[int, dict[ServiceKey, Any]] = {}


def _partial(proxier: Proxier, st: ClusterState, key: ServiceKey) -> None:
    # The daemon keeps every service's plan and re-plans only the changed one; do the same here.
    plans = _PLANS.setdefault(id(proxier), {})
    if not plans:
        plans.update(build_plans(st, CONFIG))
    plans.update(build_plans(st, CONFIG, {key}))
    proxier.sync(plans, {key})


# (mode, sizes, repetitions per size). iptables-nft 1.8.x's --noflush restore is quadratic in the chains the
# text names (a sorted linked list of chains to fetch, nft-cache.c) unless the table is listed first ("-S"): ours
# does when that pays (backend._list_first_pays), so the bare load of the same text is linear too. A 10k full
# sync takes 10-15 s with iptables-nft, 6-9 s with legacy (the bare load of kube-proxy-shaped text without "-S"
# did not finish in 10 minutes); the iptables-nft 10k figures therefore come from 2 repetitions, like legacy's.
PLAN_FULL = [("nftables", (1000, 10000), (7, 5)), ("iptables", (1000, 10000), (5, 2)),
             ("iptables-legacy", (1000, 10000), (5, 2))]


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so every namespace is deleted
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k services only, fewer samples (about a minute)")
    ap.add_argument("--modes", default="nftables,iptables,iptables-legacy")
    ap.add_argument("--connects", type=int, default=500)
    args = ap.parse_args()
    wanted = args.modes.split(",")
    connects = 100 if args.quick else args.connects
    results: list[dict[str, Any]] = []
    make = Namespaces()
    try:
        for mode, all_sizes, all_reps in PLAN_FULL:
            if mode not in wanted:
                continue
            sizes = [n for n in all_sizes if n == 1000 or not args.quick]
            base = full_sync(mode, 10, make, connects, 0)
            base_lat = base["connect_median_s"]
            base["_topo"].close()
            for n, reps in zip(sizes, all_reps, strict=False):
                r = full_sync(mode, n, make, connects, reps)
                topo, proxier, st = r.pop("_topo"), r.pop("_proxier"), r.pop("_state")
                try:
                    r["connect_ratio_vs_10"] = r.pop("connect_median_s") / base_lat
                    r["connect_10_median_s"] = base_lat
                    if n == max(sizes):
                        _PLANS.pop(id(proxier), None)
                        _partial(proxier, st, ServiceKey("default", "svc0"))  # warm the plan cache
                        times = one_change(proxier, st, 10 if mode == "nftables" else 3)
                        r["one_change_median_s"] = statistics.median(times)
                        r["one_change_max_s"] = max(times)
                        if mode == "nftables":
                            e2e = end_to_end_change(proxier, n, 10)
                            r["one_change_e2e_median_s"] = statistics.median(e2e)
                finally:
                    topo.close()
                results.append(r)
                print(json.dumps(r), flush=True)
                make.close()
    finally:
        make.close()
    print()
    print("ours = plan + sync (cold, as after a restart); sync = the proxier's sync alone (plans kept by the "
          "daemon); resync = periodic full resync. Ratios: median over repetitions of ours/bare measured back "
          "to back; times: minima.")
    print(f"{'mode':15} {'services':>8} {'plan s':>7} {'sync s':>7} {'bare s':>7} {'ours/bare':>9} "
          f"{'sync/bare':>9} {'resync':>6} {'1-change ms':>11} {'connect us (n / 10)':>20} {'ratio':>6}")
    for r in results:
        change = f"{r['one_change_median_s'] * 1000:.1f}" if "one_change_median_s" in r else "-"
        resync = f"{r['resync_ratio']:.2f}" if "resync_ratio" in r else "-"
        conn = r["connect_ratio_vs_10"] * r["connect_10_median_s"] * 1e6
        print(f"{r['mode']:15} {r['services']:>8} {r['plan_s']:>7.2f} {r['sync_s']:>7.2f} {r['bare_s']:>7.2f} "
              f"{r['ratio']:>9.2f} {r['sync_ratio']:>9.2f} {resync:>6} {change:>11} "
              f"{conn:>9.0f} / {r['connect_10_median_s'] * 1e6:<8.0f} {r['connect_ratio_vs_10']:>6.2f}")
    for r in results:
        if "one_change_e2e_median_s" in r:
            print(f"{r['mode']} {r['services']}: one EndpointSlice changed, from the object store (a watch event) "
                  f"to rules in force (snapshot, conflict check, re-plan, sync): "
                  f"{r['one_change_e2e_median_s'] * 1000:.1f} ms median")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"proxy_sync-{int(time.time())}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

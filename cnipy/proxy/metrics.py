"""Prometheus text-format metrics for the proxy, stdlib only and thread-safe."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._lock = threading.Lock()
        self.sync_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.sync_sum: dict[str, float] = defaultdict(float)
        self.sync_count: dict[str, int] = defaultdict(int)
        self.counters: dict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}

    def observe_sync(self, kind: str, seconds: float) -> None:
        with self._lock:
            buckets = self.sync_buckets[kind]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.sync_sum[kind] += seconds
            self.sync_count[kind] += 1

    def inc(self, name: str, by: float = 1) -> None:
        with self._lock:
            self.counters[name] += by

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def render(self) -> str:
        m = f'mode="{self.mode}"'
        with self._lock:
            out = ["# HELP cnipy_proxy_sync_duration_seconds Time to apply rules, by sync kind.",
                   "# TYPE cnipy_proxy_sync_duration_seconds histogram"]
            for kind in sorted(self.sync_count):
                labels = f'{m},kind="{kind}"'
                for bound, count in zip(BUCKETS, self.sync_buckets[kind], strict=True):
                    out.append(f'cnipy_proxy_sync_duration_seconds_bucket{{{labels},le="{bound}"}} {count}')
                out.append(f'cnipy_proxy_sync_duration_seconds_bucket{{{labels},le="+Inf"}} '
                           f"{self.sync_count[kind]}")
                out.append(f"cnipy_proxy_sync_duration_seconds_sum{{{labels}}} {self.sync_sum[kind]:.6f}")
                out.append(f"cnipy_proxy_sync_duration_seconds_count{{{labels}}} {self.sync_count[kind]}")
            for name in sorted(self.counters):
                out += [f"# TYPE cnipy_proxy_{name} counter", f"cnipy_proxy_{name}{{{m}}} {self.counters[name]:g}"]
            for name in sorted(self.gauges):
                out += [f"# TYPE cnipy_proxy_{name} gauge", f"cnipy_proxy_{name}{{{m}}} {self.gauges[name]:g}"]
        return "\n".join(out) + "\n"

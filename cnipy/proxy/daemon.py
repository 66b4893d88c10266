"""The proxy daemon: watch a source, keep the kernel's rules in step, report health and metrics.

Loop: take changes from the source (coalesced: at most one sync per ``min_sync_period``), sync the changed
services (a full sync every ``full_sync_period``, after a failure, or when ``needs_repair`` finds our rules
flushed), then delete stale UDP conntrack entries and update the healthCheckNodePort servers. A failed apply
keeps the previous rules in force and is retried after ``retry_period``.

A dual-stack daemon has a NodeConfig per IP family and a ``dualstack.MetaProxier``: it plans each service for
both families (the plans of a key hold both) and runs one loop, one /healthz and one set of metrics (summed over
the families); conntrack cleanup and healthCheckNodePorts see the plans of both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cnipy.proxy.errors import ApplyError, ManifestError
from cnipy.proxy.metrics import Metrics
from cnipy.proxy.model import ClusterState, IPAddress, ServiceKey
from cnipy.proxy.plan import AnyNodeConfig, NodeConfig, PortPlan, build_family_plans, changed_services
from cnipy.proxy.sync import Proxier, gc_paused
from cnipy.stopflag import StopFlag

log = logging.getLogger("cnipy.proxy")

# (reply sources, (ip, port) destinations, NodePorts) -> entries deleted
ConntrackCleaner = Callable[[Iterable[IPAddress], Iterable[tuple[IPAddress, int]], Iterable[int]], int]


class Source(Protocol):
    def poll(self) -> tuple[ClusterState, tuple[ManifestError, ...]] | None:
        """A new snapshot when something changed since the last poll, else None."""


@dataclass(frozen=True)
class Timing:
    min_sync_period: float = 1.0
    full_sync_period: float = 3600.0
    repair_period: float = 10.0
    retry_period: float = 5.0
    poll_period: float = 0.2


def udp_cleanup(old: dict[ServiceKey, tuple[PortPlan, ...]], new: dict[ServiceKey, tuple[PortPlan, ...]],
                keys: Iterable[ServiceKey]) -> tuple[set[IPAddress], set[tuple[IPAddress, int]], set[int]]:
    """UDP flows to clean after a change: endpoints that went away, and services that got their first
    endpoint (flows created while they had none are cached with no DNAT): their IPs and ports, and NodePorts."""
    gone: set[IPAddress] = set()
    fresh: set[tuple[IPAddress, int]] = set()
    node_ports: set[int] = set()
    for key in keys:
        # by name and family: a dual-stack service has a plan of each family under one name
        before = {(p.name, p.cluster_ips[0].version): p for p in old.get(key, ()) if p.protocol.value == "UDP"}
        for p in new.get(key, ()):
            if p.protocol.value != "UDP":
                continue
            prev = before.pop((p.name, p.cluster_ips[0].version), None)
            prev_ips = {b.ip for b in prev.all_backends} if prev else set()
            gone |= prev_ips - {b.ip for b in p.all_backends}
            if p.all_backends and not prev_ips:
                fresh |= {(ip, p.port) for ip in (*p.cluster_ips, *p.external_ips, *p.load_balancer_ips)}
                if p.node_port is not None:
                    node_ports.add(p.node_port)
        for p in before.values():
            gone |= {b.ip for b in p.all_backends}
    return gone, fresh, node_ports


class ProxyDaemon:
    """``config``: this node's NodeConfig, or one per IP family for a dual-stack proxier (MetaProxier)."""

    def __init__(self, source: Source, proxier: Proxier, config: AnyNodeConfig | Sequence[AnyNodeConfig], *,
                 timing: Timing = Timing(),
                 metrics: Metrics | None = None, conntrack: ConntrackCleaner | None = None,
                 healthchecks: Callable[[dict[int, tuple[ServiceKey, int]]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.configs = (config,) if isinstance(config, NodeConfig) else tuple(config)
        if not self.configs or len({c.ip_family for c in self.configs}) != len(self.configs):
            raise ValueError("one NodeConfig per IP family")
        self.source, self.proxier, self.config, self.timing = source, proxier, self.configs[0], timing
        self.metrics = metrics or Metrics(proxier.mode)
        self.conntrack = conntrack
        self.healthchecks = healthchecks
        self.clock = clock
        self.stop_event = StopFlag()  # set from a signal handler (command.py): no lock in it
        self.state = ClusterState()
        self.plans: dict[ServiceKey, tuple[PortPlan, ...]] = {}
        self.applied_plans: dict[ServiceKey, tuple[PortPlan, ...]] = {}
        self.pending: set[ServiceKey] | None = set()  # None: a full sync is due
        self.last_sync = -1e18
        self.last_full = -1e18
        self.last_repair_check = clock()
        self.next_retry = -1e18
        self.last_success_wall: float | None = None
        self.failing = False
        self.problems: tuple[ManifestError, ...] = ()
        self.have_state = False

    # One turn of the loop; the tests drive this directly.
    def step(self) -> bool:
        """Returns True when a sync ran (successfully or not)."""
        now = self.clock()
        with gc_paused():  # a snapshot of 10k services allocates ~1M objects: 85% of its time went to the GC
            update = self.source.poll()
            if update is not None:
                new_state, problems = update
                self._take(new_state, problems)
                self.have_state = True
        if not self.have_state:
            return False  # never sync before the source's first snapshot: an empty one would drop every service
        if now - self.last_full >= self.timing.full_sync_period:
            self.pending = None
        if self.pending is not None and now - self.last_repair_check >= self.timing.repair_period:
            self.last_repair_check = now
            if self.proxier.needs_repair():
                log.warning("our rules are missing or were flushed; doing a full sync")
                self.metrics.inc("repairs_total")
                self.pending = None
        if self.pending is not None and not self.pending:
            return False
        if now < self.next_retry or now - self.last_sync < self.timing.min_sync_period:
            return False
        self.sync()
        return True

    def _take(self, state: ClusterState, problems: tuple[ManifestError, ...]) -> None:
        for p in problems:
            if p not in self.problems:
                log.error("bad manifest skipped: %s", p)
        self.problems = problems
        self.metrics.set("manifest_problems", len(problems))
        changed = changed_services(self.state, state)
        self.state = state
        for key, ports in build_family_plans(state, self.configs, changed).items():
            if ports:
                self.plans[key] = ports
            else:
                self.plans.pop(key, None)
        if self.pending is not None:
            self.pending |= changed

    def sync(self) -> None:
        now = self.clock()
        self.last_sync = now
        changed = self.pending
        start = time.perf_counter()
        try:
            with gc_paused():
                result = self.proxier.sync(self.plans, changed)
        except ApplyError as exc:
            log.error("sync failed, previous rules stay in force; retrying: %s", exc)
            self.metrics.inc("sync_failures_total")
            self.failing = True
            self.next_retry = now + self.timing.retry_period
            self.pending = None  # retry with a full sync: the kernel state is what we last applied, or unknown
            return
        elapsed = time.perf_counter() - start
        kind = "full" if result.full else "partial"
        self.metrics.observe_sync(kind, elapsed)
        self.metrics.inc(f"syncs_{kind}_total")
        self.metrics.set("rules", result.rules)
        self.metrics.set("elements", result.elements)
        self.metrics.set("services", len(self.plans))
        self.metrics.set("last_sync_timestamp_seconds", time.time())
        if result.full:
            self.last_full = now
        self.failing = False
        self.last_success_wall = time.time()
        keys = set(self.plans) | set(self.applied_plans) if changed is None else changed
        self._after_sync(keys)
        self.applied_plans = dict(self.plans)
        self.pending = set()

    def _after_sync(self, keys: set[ServiceKey]) -> None:
        if self.conntrack is not None:
            gone, fresh, node_ports = udp_cleanup(self.applied_plans, self.plans, keys)
            if gone or fresh or node_ports:
                try:
                    self.metrics.inc("conntrack_deleted_total", self.conntrack(gone, fresh, node_ports))
                except Exception as exc:  # never let cleanup break the sync loop
                    log.warning("conntrack cleanup failed: %s", exc)
                    self.metrics.inc("conntrack_failures_total")
        if self.healthchecks is not None:
            # A dual-stack service has a plan per family with the same port: the local endpoints are the same
            # pods, so the count is the larger of the two, not their sum.
            wanted: dict[int, tuple[ServiceKey, int]] = {}
            for key, ports in self.plans.items():
                for p in ports:
                    if (hc := p.health_check_node_port) is not None:
                        n = len(p.local_backends)
                        wanted[hc] = (key, max(n, wanted[hc][1]) if hc in wanted else n)
            self.healthchecks(wanted)

    def healthz(self) -> tuple[bool, dict[str, object]]:
        ok = self.last_success_wall is not None and not self.failing
        return ok, {"lastUpdated": self.last_success_wall, "currentTime": time.time(), "mode": self.proxier.mode,
                    "failing": self.failing}

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.step()
            self.stop_event.wait(self.timing.poll_period)

    def stop(self) -> None:
        self.stop_event.set()


class ManifestPoller:
    """Adapts ManifestSource to the daemon's Source: a snapshot whenever the files change."""

    def __init__(self, paths: Iterable[str]) -> None:
        from pathlib import Path

        from cnipy.proxy.manifests import ManifestSource
        self.source = ManifestSource([Path(p) for p in paths])

    def poll(self) -> tuple[ClusterState, tuple[ManifestError, ...]] | None:
        if not self.source.changed():
            return None
        result = self.source.load()
        return result.state, result.problems

    def stop(self) -> None:
        self.source.close()

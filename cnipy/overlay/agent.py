"""The node agent: lease a pod subnet, publish it, learn every peer's, and keep the kernel programmed.

Threads (all daemon threads, stopped by `stop()`):

    lease       acquire (retrying while the store is down), then keep-alive every TTL/3; acquire again when
                the lease was lost (expired during a long outage, or its key deleted by hand)
    peers       list all leases, then watch from that revision; on any error list again (a watch that broke
                misses nothing: the list is the truth)
    monitor     netlink events: a deleted device, route or neighbour/FDB entry wakes the reconciler at once
    reconcile   on every wake-up and every `resync` seconds: device, then routes/neighbours/FDB diffed and fixed

Ready (GET /healthz) once the lease is held, the subnet file written and the kernel reconciled once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnipy.netlink.vxlan import Underlay
from cnipy.overlay import backends, leases, subnetfile
from cnipy.overlay import config as C
from cnipy.overlay.etcd import Client, Etcd, FileEtcd, Watch
from cnipy.overlay.kernel import Kernel, NetlinkKernel
from cnipy.overlay.metrics import Metrics, StatusServer
from cnipy.overlay.reconcile import reconcile
from cnipy.stopflag import StopFlag

log = logging.getLogger("cnipy.overlay.agent")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_STATIC_STORE = Path("/var/lib/cnipy/overlay-leases.json")


@dataclass(frozen=True)
class AgentOptions:
    node: str
    etcd: str | None = None  # http://host:port; None: static mode (leases in `static_store`)
    static_store: Path = DEFAULT_STATIC_STORE
    network_config: Path | None = None  # static mode: the config file (else the embedded default);
    #                                     etcd mode: stored under <prefix>/config when none is there yet
    prefix: str = leases.DEFAULT_PREFIX
    public_ip: IPAddress | None = None  # None: the address of the default route's interface
    netns: str | None = None  # program this namespace (None: our own)
    subnet_file: Path = subnetfile.DEFAULT_PATH
    lease_ttl: int = leases.DEFAULT_TTL
    resync: float = 10.0
    listen: str | None = "127.0.0.1:9867"
    release_on_exit: bool = False  # node removal: give the subnet back and delete the device
    masquerade_rules: bool = True  # install the agent's masquerade chain when the config asks for it
    retry: float = 1.0
    monitor: bool = True  # watch netlink for deletions (off: periodic resync only; unit tests on fakes)


@dataclass
class _State:
    lease: leases.Lease | None = None
    peers: dict[ipaddress.IPv4Network, leases.Lease] = field(default_factory=dict)
    ready_reason: str = "starting"
    ready: bool = False


METRICS = {
    "cnipy_overlay_ready": ("gauge", "1 when the agent is ready (lease held, subnet file written, reconciled)"),
    "cnipy_overlay_peers": ("gauge", "peers (other nodes' leases) known"),
    "cnipy_overlay_peers_rejected": ("gauge", "peers the back end refuses to program (see the log)"),
    "cnipy_overlay_reconciles_total": ("counter", "reconcile passes"),
    "cnipy_overlay_reconcile_errors_total": ("counter", "reconcile passes that failed"),
    "cnipy_overlay_kernel_changes_total": ("counter", "routes, neighbours and FDB entries added or removed"),
    "cnipy_overlay_device_repairs_total": ("counter", "times the overlay device had to be created or fixed"),
    "cnipy_overlay_lease_renewals_total": ("counter", "successful lease keep-alives"),
    "cnipy_overlay_lease_acquisitions_total": ("counter", "subnet leases acquired"),
    "cnipy_overlay_store_errors_total": ("counter", "calls to the lease store that failed"),
    "cnipy_overlay_watch_restarts_total": ("counter", "times the peer watch was restarted"),
    "cnipy_overlay_last_reconcile_seconds": ("gauge", "duration of the last reconcile pass"),
    "cnipy_overlay_last_change_timestamp_seconds": ("gauge", "wall-clock time the kernel was last changed"),
}


def make_store(opts: AgentOptions) -> tuple[Etcd, leases.LeaseStore]:
    if opts.etcd:
        etcd: Etcd = Client(opts.etcd)
    else:
        opts.static_store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        etcd = FileEtcd(str(opts.static_store))
    return etcd, leases.LeaseStore(etcd, opts.prefix, opts.lease_ttl)


class Agent:
    def __init__(self, opts: AgentOptions, store: leases.LeaseStore | None = None,
                 kernel: Kernel | None = None, underlay: Underlay | None = None) -> None:
        """`store`, `kernel` and `underlay` replace the real ones (tests run agents on fakes)."""
        self.opts = opts
        self._underlay = underlay
        self.store = store if store is not None else make_store(opts)[1]
        self.kernel = kernel if kernel is not None else NetlinkKernel(opts.netns, C.ROUTE_PROTO)
        self.metrics = Metrics()
        for name, (kind, text) in METRICS.items():
            self.metrics.declare(name, kind, text)
        self.state = _State()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._lease_lost = threading.Event()
        self._stopping = StopFlag()  # set from a signal handler too (request_stop): no lock in it
        self._threads: list[threading.Thread] = []
        self._watch: Watch | None = None
        self._server: StatusServer | None = None
        self.conf: C.NetworkConfig | None = None
        self.backend: backends.Backend | None = None

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve status, then bring everything up in the background; returns at once."""
        if self.opts.listen:
            self._server = StatusServer(self.opts.listen, self.metrics, self.readiness)
            self._server.start()
        self._spawn("lease", self._lease_loop)

    def _spawn(self, name: str, target: object) -> None:
        t = threading.Thread(target=target, name=f"{self.opts.node}-{name}", daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def stop(self, release: bool | None = None) -> None:
        self._stopping.set()
        self._wake.set()
        self._lease_lost.set()  # wakes the lease loop
        if self._watch is not None:
            with contextlib.suppress(Exception):
                self._watch.close()
        for t in self._threads:
            t.join(timeout=5)
        if self._server is not None:
            self._server.stop()
        if release if release is not None else self.opts.release_on_exit:
            self._release()

    def _release(self) -> None:
        try:
            self.store.release()
        except leases.LeaseError as exc:
            log.warning("releasing the lease failed: %s", exc)
        with contextlib.suppress(Exception):
            for route in self.kernel.routes():
                self.kernel.delete_route(route)
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.remove()
        if self.conf is not None and self.conf.masquerade and self.opts.masquerade_rules:
            from cnipy.overlay import masq
            masq.remove(self.opts.netns)
        self.opts.subnet_file.unlink(missing_ok=True)

    def request_stop(self) -> None:
        """Ask `wait()` to return (safe from a signal handler)."""
        self._stopping.set()

    def wait(self) -> None:
        while not self._stopping.wait(1.0):
            pass

    def readiness(self) -> tuple[bool, str]:
        return self.state.ready, self.state.ready_reason

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False when stopping."""
        return not self._stopping.wait(seconds)

    # -- lease ------------------------------------------------------------------------------------------

    def _network_config(self) -> C.NetworkConfig:
        if not self.opts.etcd:
            return C.loads(self.opts.network_config.read_text()) if self.opts.network_config else C.default()
        try:
            return self.store.network_config()
        except leases.ConfigMissing:
            if self.opts.network_config is None:
                raise
            conf = C.loads(self.opts.network_config.read_text())
            self.store.put_network_config(conf)
            return conf

    def _setup(self) -> None:
        from cnipy.netlink.vxlan import underlay_for

        self.conf = self._network_config()
        underlay = self._underlay or underlay_for(self.opts.netns, self.opts.public_ip)
        self.backend = backends.make(self.conf.backend, underlay, self.opts.node, self.opts.netns)
        self._public_ip = underlay.address.ip

    def _acquire(self) -> None:
        assert self.conf is not None and self.backend is not None
        previous = None
        with contextlib.suppress(FileNotFoundError, subnetfile.SubnetFileError):
            previous = subnetfile.read(self.opts.subnet_file).subnet.network
        if self.state.lease is not None:
            previous = self.state.lease.subnet
        want = leases.Lease(self.conf.network, self.opts.node, self._public_ip, self.backend.type,
                            self.backend.vtep_mac)
        lease = self.store.acquire(self.conf, want, previous)
        self.metrics.inc("cnipy_overlay_lease_acquisitions_total")
        if self.state.lease is not None and self.state.lease.subnet != lease.subnet:
            log.error("lease lost and a different subnet acquired (%s -> %s): existing pods lose connectivity",
                      self.state.lease.subnet, lease.subnet)
        self.state.lease = lease
        log.info("node %s holds %s", self.opts.node, lease.subnet)
        self.backend.ensure_device(lease)
        if self.conf.masquerade and self.opts.masquerade_rules:
            from cnipy.overlay import masq
            masq.ensure(self.conf.network, self.opts.netns)
        gateway = ipaddress.IPv4Interface((lease.subnet.network_address + 1, lease.subnet.prefixlen))
        subnetfile.write(self.opts.subnet_file, subnetfile.SubnetFile(
            self.conf.network, gateway, self.backend.mtu, self.conf.masquerade))

    def _lease_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.backend is None:
                    self._setup()
                self._acquire()
                break
            except Exception as exc:  # noqa: BLE001 - the loop reports and retries every failure
                self.metrics.inc("cnipy_overlay_store_errors_total")
                self.state.ready_reason = f"no lease yet: {exc}"
                log.warning("%s; retrying", self.state.ready_reason)
                if not self._sleep(self.opts.retry):
                    return
        if self._stopping.is_set():
            return
        self._spawn("peers", self._peers_loop)
        if self.opts.monitor:
            self._spawn("monitor", self._monitor_loop)
        self._spawn("reconcile", self._reconcile_loop)
        self._renew_loop()

    def _renew_loop(self) -> None:
        every = max(0.5, self.opts.lease_ttl / 3)
        failing = False
        while not self._stopping.is_set():
            lost = self._lease_lost.wait(self.opts.retry if failing else every)
            if self._stopping.is_set():
                return
            try:
                if lost:
                    raise leases.LeaseLost("our lease key was deleted or taken")
                self.store.renew()
                self.metrics.inc("cnipy_overlay_lease_renewals_total")
                if failing:
                    # The store is back after failures: a watch on a half-open connection could hang for
                    # ever, so restart it (list again) rather than trust it.
                    self._restart_watch()
                failing = False
            except leases.LeaseLost as exc:
                log.warning("%s: acquiring again", exc)
                self._lease_lost.clear()
                self._retry_acquire()
                failing = False
            except leases.LeaseError as exc:
                self.metrics.inc("cnipy_overlay_store_errors_total")
                log.warning("lease renewal failed (will retry): %s", exc)
                failing = True

    def _retry_acquire(self) -> None:
        self.state.ready, self.state.ready_reason = False, "lease lost, acquiring again"
        self.metrics.set("cnipy_overlay_ready", 0)
        while not self._stopping.is_set():
            try:
                self._acquire()
                self._wake.set()
                return
            except Exception as exc:  # noqa: BLE001
                self.metrics.inc("cnipy_overlay_store_errors_total")
                log.warning("acquiring the lease again failed: %s", exc)
                if not self._sleep(self.opts.retry):
                    return

    # -- peers ------------------------------------------------------------------------------------------

    def _peers_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                found, revision = self.store.snapshot()
                with self._lock:
                    self.state.peers = {lease.subnet: lease for lease in found}
                self._check_own()
                self._wake.set()
                self._watch, changes = self.store.watch(revision)
                for batch in changes:
                    with self._lock:
                        for change in batch:
                            if change.lease is None:
                                self.state.peers.pop(change.subnet, None)
                            else:
                                self.state.peers[change.subnet] = change.lease
                    self._check_own()
                    self._wake.set()
            except leases.LeaseError as exc:
                if self._stopping.is_set():
                    return
                self.metrics.inc("cnipy_overlay_store_errors_total")
                log.warning("peer watch: %s; listing again", exc)
            self.metrics.inc("cnipy_overlay_watch_restarts_total")
            if not self._sleep(self.opts.retry):
                return

    def _restart_watch(self) -> None:
        w = self._watch
        if w is not None:
            with contextlib.suppress(Exception):
                w.close()

    def _check_own(self) -> None:
        own = self.state.lease
        if own is None:
            return
        held = self.state.peers.get(own.subnet)
        if held is None or held.node != own.node:
            self._lease_lost.set()

    # -- kernel -----------------------------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        from cnipy.netlink.monitor import Monitor

        device = self.backend.device if self.backend else ""
        while not self._stopping.is_set():
            try:
                with Monitor(self.opts.netns) as mon:
                    while not self._stopping.is_set():
                        for kind, detail in mon.wait(0.5):
                            if kind.startswith("RTM_DEL") or (kind == "RTM_NEWLINK" and detail == device):
                                self._wake.set()
            except Exception as exc:  # noqa: BLE001 - a broken monitor is replaced; resync still runs
                log.warning("netlink monitor: %s", exc)
                if not self._sleep(self.opts.retry):
                    return

    def _reconcile_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.opts.resync)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.reconcile_once()
            except Exception as exc:  # noqa: BLE001
                self.metrics.inc("cnipy_overlay_reconcile_errors_total")
                self.state.ready_reason = f"reconcile failed: {exc}"
                log.warning("reconcile failed (retrying): %s", exc)
                self._sleep(min(self.opts.retry, 1.0))
                self._wake.set()

    def reconcile_once(self) -> None:
        assert self.backend is not None
        own = self.state.lease
        if own is None:
            return
        started = time.monotonic()
        with self._lock:
            peers = list(self.state.peers.values())
        if self.backend.ensure_device(own):
            self.metrics.inc("cnipy_overlay_device_repairs_total")
        want = self.backend.desired(own, peers)
        for why in want.rejected:
            log.error("%s", why)
        applied = reconcile(self.kernel, self.backend.device, want)
        now = time.time()
        self.metrics.inc("cnipy_overlay_reconciles_total")
        self.metrics.inc("cnipy_overlay_kernel_changes_total", applied.added + applied.removed)
        self.metrics.set("cnipy_overlay_peers", len([p for p in peers if p.subnet != own.subnet]))
        self.metrics.set("cnipy_overlay_peers_rejected", len(want.rejected))
        self.metrics.set("cnipy_overlay_last_reconcile_seconds", time.monotonic() - started)
        if applied.changed:
            self.metrics.set("cnipy_overlay_last_change_timestamp_seconds", now)
            log.info("reconciled: %d added, %d removed", applied.added, applied.removed)
        self.state.ready, self.state.ready_reason = True, "ok"
        self.metrics.set("cnipy_overlay_ready", 1)

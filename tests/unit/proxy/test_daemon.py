from __future__ import annotations

import json
import urllib.error
import urllib.request
from ipaddress import IPv4Address

from cnipy.proxy.daemon import ProxyDaemon, Timing, udp_cleanup
from cnipy.proxy.errors import ManifestError
from cnipy.proxy.health import HealthCheckServers, StatusServer
from cnipy.proxy.model import ClusterState, ServiceKey
from cnipy.proxy.nftables.backend import NftablesProxier
from cnipy.proxy.nftables.runner import FakeNft
from cnipy.proxy.nftables.transaction import Table, Transaction
from cnipy.proxy.plan import build_plans
from tests.unit.proxy.builders import config, endpoints, service, state


class FakeSource:
    def __init__(self) -> None:
        self.next: tuple[ClusterState, tuple[ManifestError, ...]] | None = None

    def push(self, st: ClusterState, problems: tuple[ManifestError, ...] = ()) -> None:
        self.next = (st, problems)

    def poll(self) -> tuple[ClusterState, tuple[ManifestError, ...]] | None:
        out, self.next = self.next, None
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**timing: float) -> tuple[FakeSource, FakeNft, ProxyDaemon, Clock, list[tuple[object, object]]]:
    src, fake, clock = FakeSource(), FakeNft(), Clock()
    cleaned: list[tuple[object, object]] = []

    def conntrack(gone: object, fresh: object, node_ports: object) -> int:
        cleaned.append((set(gone), set(fresh), set(node_ports)))  # type: ignore[call-overload]
        return 1

    d = ProxyDaemon(src, NftablesProxier(fake, config()), config(), timing=Timing(**timing), clock=clock,
                    conntrack=conntrack)
    return src, fake, d, clock, cleaned


WEB = service("web", "10.96.0.10")
DNS = service("dns", "10.96.0.53", 53, protocol="UDP", target=53, type="NodePort", node_port=30053)


def test_first_sync_is_full_then_partial_and_coalesced() -> None:
    src, fake, d, clock, _ = make(min_sync_period=1.0)
    src.push(state((WEB, endpoints(WEB, "10.244.1.2"))))
    assert d.step()
    assert d.metrics.counters["syncs_full_total"] == 1
    src.push(state((WEB, endpoints(WEB, "10.244.1.3"))))
    assert not d.step()  # within the minimum sync period: wait, keep the change pending
    clock.now += 1.5
    assert d.step()
    assert d.metrics.counters["syncs_partial_total"] == 1
    assert "10.244.1.3 . 8080" in fake.dump()
    assert not d.step()  # nothing pending


def test_periodic_full_resync() -> None:
    src, _, d, clock, _ = make(full_sync_period=60)
    src.push(state((WEB, endpoints(WEB, "10.244.1.2"))))
    d.step()
    clock.now += 61
    assert d.step()
    assert d.metrics.counters["syncs_full_total"] == 2


def test_failed_apply_keeps_rules_and_retries_later() -> None:
    src, fake, d, clock, _ = make(retry_period=5)
    src.push(state((WEB, endpoints(WEB, "10.244.1.2"))))
    d.step()
    before = fake.dump()
    fake.fail_next = "boom"
    src.push(state((WEB, endpoints(WEB, "10.244.1.3"))))
    clock.now += 2
    assert d.step()
    assert fake.dump() == before
    assert d.metrics.counters["sync_failures_total"] == 1
    assert not d.healthz()[0]
    clock.now += 2
    assert not d.step()  # still backing off
    clock.now += 4
    assert d.step()
    assert "10.244.1.3 . 8080" in fake.dump() and d.healthz()[0]


def test_self_repair_after_flush() -> None:
    src, fake, d, clock, _ = make(repair_period=10)
    src.push(state((WEB, endpoints(WEB, "10.244.1.2"))))
    d.step()
    good = fake.dump()
    tx = Transaction("ip", "cnipy")
    tx.delete(Table())
    fake.run(tx)
    clock.now += 11
    assert d.step()
    assert fake.dump() == good
    assert d.metrics.counters["repairs_total"] == 1


def test_udp_conntrack_cleanup_on_endpoint_change() -> None:
    src, _, d, clock, cleaned = make()
    src.push(state((DNS, None)))  # a UDP NodePort service with no endpoint yet
    d.step()
    clock.now += 2
    src.push(state((DNS, endpoints(DNS, "10.244.1.5", port=53))))
    d.step()
    assert cleaned[-1] == (set(), {(IPv4Address("10.96.0.53"), 53)}, {30053})  # first endpoint: stuck flows
    clock.now += 2
    src.push(state((DNS, endpoints(DNS, "10.244.1.6", port=53))))
    d.step()
    assert cleaned[-1] == ({IPv4Address("10.244.1.5")}, set(), set())
    assert d.metrics.counters["conntrack_deleted_total"] == 2


def test_udp_cleanup_ignores_tcp() -> None:
    cfg = config()
    old = build_plans(state((WEB, endpoints(WEB, "10.244.1.2"))), cfg)
    new = build_plans(state((WEB, endpoints(WEB, "10.244.1.3"))), cfg)
    assert udp_cleanup(old, new, {WEB.key}) == (set(), set(), set())


def test_bad_manifest_counted_and_others_synced() -> None:
    src, fake, d, _, _ = make()
    problem = ManifestError("/m/bad.yaml", "spec.ports[0].port", "must be a port number")
    src.push(state((WEB, endpoints(WEB, "10.244.1.2"))), (problem,))
    d.step()
    assert d.metrics.gauges["manifest_problems"] == 1
    assert "10.96.0.10 . tcp . 80" in fake.dump()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_metrics_and_healthcheck_servers() -> None:
    src, _, d, _, _ = make()
    lb = service("lb", "10.96.0.12", type="LoadBalancer", node_port=30081, etp="Local", hc_port=0)
    server = StatusServer("127.0.0.1", 0, d.healthz, d.metrics.render)
    hc = HealthCheckServers("127.0.0.1")
    try:
        assert _get(f"http://127.0.0.1:{server.port}/healthz")[0] == 503  # never synced yet
        src.push(state((lb, endpoints(lb, "10.244.1.7", "10.244.2.7", nodes={"10.244.2.7": "n2"}))))
        d.step()
        code, body = _get(f"http://127.0.0.1:{server.port}/healthz")
        assert code == 200 and json.loads(body)["mode"] == "nftables"
        code, text = _get(f"http://127.0.0.1:{server.port}/metrics")
        assert 'cnipy_proxy_sync_duration_seconds_count{mode="nftables",kind="full"} 1' in text
        assert "cnipy_proxy_rules{" in text and "cnipy_proxy_elements{" in text
        hc.update({0: (ServiceKey("default", "lb"), 1)})
        (port,) = [s.server_address[1] for s in hc.servers.values()]
        code, body = _get(f"http://127.0.0.1:{port}/")
        assert code == 200 and json.loads(body)["localEndpoints"] == 1
        hc.state = {0: (ServiceKey("default", "lb"), 0)}
        hc.servers = {0: hc.servers[0]}
        assert _get(f"http://127.0.0.1:{port}/")[0] == 503
    finally:
        server.close()
        hc.close()


def test_no_sync_before_the_first_snapshot() -> None:
    src, fake, d, clock, _ = make(full_sync_period=60)
    clock.now += 100
    assert not d.step()  # e.g. the API source has not finished listing: keep whatever rules are there
    assert fake.state is None
    src.push(state((WEB, endpoints(WEB, "10.244.1.2"))))
    assert d.step()

"""IPv6 and dual-stack: per-family plans, the ``ip6 cnipy`` table, the MetaProxier and the daemon around it."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

import pytest

from cnipy.proxy.daemon import ProxyDaemon, Timing, udp_cleanup
from cnipy.proxy.dualstack import MetaProxier
from cnipy.proxy.errors import ApplyError
from cnipy.proxy.model import ClusterState, EndpointSlice, Service, ServiceKey
from cnipy.proxy.nftables.backend import NftablesProxier
from cnipy.proxy.nftables.render import sticky_set_name
from cnipy.proxy.nftables.runner import FakeNft
from cnipy.proxy.plan import NodeConfig, build_family_plans, build_plans, changed_services, plan_family
from tests.unit.proxy.builders import endpoints, service, state
from tests.unit.proxy.goldens import check_golden

V4 = NodeConfig("node1", cluster_cidrs=(IPv4Network("10.244.0.0/16"),))
V6 = NodeConfig("node1", cluster_cidrs=(IPv6Network("fd00:244::/48"),), ip_family=6)


def v6_feature_state() -> ClusterState:
    """tests/unit/proxy/scenarios.feature_state over IPv6 (affinity apart: see test_golden_ipv6_affinity_...)."""
    web = service("web", "fd00:96::10", type="NodePort", node_port=30080)
    dns = service("dns", "fd00:96::53", 53, protocol="UDP", target=53, namespace="kube-system")
    lb = service("lb", "fd00:96::12", type="LoadBalancer", node_port=30081, lb_ips=("2001:db8::12",),
                 source_ranges=("2001:db8:100::/64",), etp="Local", hc_port=30999)
    ext = service("ext", "fd00:96::11", external_ips=("2001:db8::11",))
    remote_only = service("remote", "fd00:96::13", type="NodePort", node_port=30082, etp="Local")
    empty = service("empty", "fd00:96::14", type="NodePort", node_port=30083)
    itp = service("itp", "fd00:96::15", itp="Local")
    return state(
        (web, endpoints(web, "fd00:244:1::2", "fd00:244:1::3", "fd00:244:2::2", nodes={"fd00:244:2::2": "node2"})),
        (dns, endpoints(dns, "fd00:244:1::5", "fd00:244:2::5", port=53, nodes={"fd00:244:2::5": "node2"})),
        (lb, endpoints(lb, "fd00:244:1::7", "fd00:244:2::7", nodes={"fd00:244:2::7": "node2"})),
        (ext, endpoints(ext, "fd00:244:1::6")),
        (remote_only, endpoints(remote_only, "fd00:244:2::8", node="node2")),
        (empty, None),
        (itp, endpoints(itp, "fd00:244:2::9", node="node2")),
    )


def dual(name: str, v4: str, v6: str, v4_eps: tuple[str, ...], v6_eps: tuple[str, ...],
         **kw: object) -> tuple[Service, tuple[EndpointSlice, ...]]:
    """A dual-stack service (clusterIPs v4 then v6) with an EndpointSlice per family."""
    svc = service(name, v4, **kw)  # type: ignore[arg-type]
    svc = dataclasses.replace(svc, cluster_ips=(ip_address(v4), ip_address(v6)))
    return svc, (endpoints(svc, *v4_eps), endpoints(svc, *v6_eps))


def dual_state() -> ClusterState:
    web, web_slices = dual("web", "10.96.0.10", "fd00:96::10", ("10.244.1.2", "10.244.2.2"),
                           ("fd00:244:1::2", "fd00:244:2::2"), type="NodePort", node_port=30080)
    only6 = service("only6", "fd00:96::20")
    only4 = service("only4", "10.96.0.20")
    return ClusterState(
        services={s.key: s for s in (web, only6, only4)},
        slices={web.key: web_slices, only6.key: (endpoints(only6, "fd00:244:1::20"),),
                only4.key: (endpoints(only4, "10.244.1.20"),)})


def synced6(st: ClusterState, cfg: NodeConfig = V6) -> tuple[FakeNft, NftablesProxier]:
    fake = FakeNft("ip6")
    proxier = NftablesProxier(fake, cfg)
    proxier.sync(build_plans(st, cfg), None)
    return fake, proxier


def test_golden_ipv6_features() -> None:
    fake, _ = synced6(v6_feature_state())
    check_golden("nftables_ipv6_features.txt", fake.dump())


def test_ipv6_table_has_no_ipv4_in_it() -> None:
    text = synced6(v6_feature_state())[0].dump()
    assert text.startswith("table ip6 cnipy\n")
    for v4_only in ("ip daddr", "ip saddr", "ipv4_addr", "dnat ip to", "127.0.0.0/8", "0.0.0.0"):
        assert v4_only not in text, v4_only
    assert "reject with icmpv6 type port-unreachable" in text
    assert "ip6 daddr != ::1" in text  # no localhost NodePorts over IPv6


def test_ipv6_plan_takes_only_ipv6_addresses_and_slices() -> None:
    plans = build_plans(dual_state(), V6)
    assert set(plans) == {ServiceKey("default", k) for k in ("web", "only6", "only4")}
    assert plans[ServiceKey("default", "only4")] == ()
    (web,) = plans[ServiceKey("default", "web")]
    assert web.cluster_ips == (IPv6Address("fd00:96::10"),)
    assert [str(b) for b in web.all_backends] == ["[fd00:244:1::2]:8080", "[fd00:244:2::2]:8080"]
    (v4web,) = build_plans(dual_state(), V4)[ServiceKey("default", "web")]
    assert [str(b) for b in v4web.all_backends] == ["10.244.1.2:8080", "10.244.2.2:8080"]


def test_family_plans_hold_both_families_of_a_dual_stack_service() -> None:
    plans = build_family_plans(dual_state(), (V4, V6))
    assert [plan_family(p) for p in plans[ServiceKey("default", "web")]] == [4, 6]
    assert [plan_family(p) for p in plans[ServiceKey("default", "only6")]] == [6]
    assert [plan_family(p) for p in plans[ServiceKey("default", "only4")]] == [4]
    assert build_family_plans(dual_state(), (V4,)) == build_plans(dual_state(), V4)


def test_node_config_refuses_mixed_families() -> None:
    with pytest.raises(ValueError, match="cluster_cidrs of an IPv6 NodeConfig must be IPv6"):
        NodeConfig("n", cluster_cidrs=(IPv4Network("10.0.0.0/8"),), ip_family=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="node_port_addresses of an IPv4 NodeConfig must be IPv4"):
        NodeConfig("n", node_port_addresses=(IPv6Network("fd00::/64"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="localhost NodePorts are IPv4 only"):
        NodeConfig("n", localhost_nodeports=True, ip_family=6)
    with pytest.raises(ValueError, match="ip_family must be 4 or 6"):
        NodeConfig("n", ip_family=5)
    with pytest.raises(ValueError, match="needs an nft table of family ip6, not ip"):
        NftablesProxier(FakeNft("ip"), V6)


def meta() -> tuple[FakeNft, FakeNft, MetaProxier]:
    f4, f6 = FakeNft("ip"), FakeNft("ip6")
    return f4, f6, MetaProxier({6: NftablesProxier(f6, V6), 4: NftablesProxier(f4, V4)})


def test_golden_dual_stack_tables() -> None:
    f4, f6, proxier = meta()
    result = proxier.sync(build_family_plans(dual_state(), (V4, V6)), None)
    assert result.full
    check_golden("nftables_dual_stack.txt", f4.dump() + f6.dump())
    assert "fd00" not in f4.dump() and "10.244" not in f6.dump()
    # each table equals what a single-family proxier of that family makes of the same state
    assert f4.dump() == synced4(dual_state()).dump()
    assert f6.dump() == synced6(dual_state())[0].dump()
    assert result.elements == sum(len(s.elements) for f in (f4, f6) for s in f.state.sets.values())  # type: ignore[union-attr]


def synced4(st: ClusterState) -> FakeNft:
    fake = FakeNft("ip")
    NftablesProxier(fake, V4).sync(build_plans(st, V4), None)
    return fake


def _mutate(st: ClusterState, rng: random.Random) -> ClusterState:
    services, slices = dict(st.services), dict(st.slices)
    action = rng.randrange(4) if services else 2
    key = rng.choice(sorted(services)) if services else ServiceKey("", "")
    svc = services.get(key)
    if svc is not None and action == 0:  # the endpoints of one family change
        v6 = rng.random() < 0.5
        ips = [f"fd00:244:{rng.randrange(1, 3)}::{rng.randrange(2, 250):x}" if v6
               else f"10.244.{rng.randrange(1, 3)}.{rng.randrange(2, 250)}" for _ in range(rng.randrange(0, 4))]
        kept = tuple(s for s in slices.get(key, ()) if s.address_type != ("IPv6" if v6 else "IPv4"))
        fresh = (endpoints(svc, *ips, nodes={ip: "node1" if ":1::" in ip or ".1." in ip else "node2"
                                             for ip in ips}),) if ips else ()
        slices[key] = kept + fresh
    elif action == 1 and svc is not None:  # the service goes
        del services[key]
        slices.pop(key, None)
    elif action == 3 and svc is not None:  # another service on its ClusterIPs, another port (cluster-ips shared)
        i = rng.randrange(3)
        s = dataclasses.replace(service(f"share{i}", "10.96.9.9", 2000 + i), cluster_ips=svc.cluster_ips)
        services[s.key] = s
        slices[s.key] = ()
    else:  # a new dual-stack NodePort service
        i = rng.randrange(200)
        s, sl = dual(f"new{i}", f"10.96.1.{i + 1}", f"fd00:96:1::{i + 1:x}", (f"10.244.1.{i + 1}",),
                     (f"fd00:244:1::{i + 1:x}",), type="NodePort", node_port=31000 + i)
        services[s.key], slices[s.key] = s, sl
    return ClusterState(services=services, slices=slices)


@pytest.mark.parametrize("seed", range(3))
def test_dual_stack_partial_syncs_converge_to_the_full_sync(seed: int) -> None:
    rng = random.Random(seed)
    st = dual_state()
    f4, f6, proxier = meta()
    proxier.sync(build_family_plans(st, (V4, V6)), None)
    for _ in range(20):
        new = _mutate(st, rng)
        result = proxier.sync(build_family_plans(new, (V4, V6)), changed_services(st, new))
        assert not result.full
        st = new
        assert f4.dump() == synced4(st).dump()
        assert f6.dump() == synced6(st)[0].dump()
        for fake, v in ((f4, 4), (f6, 6)):
            assert fake.elements("cluster-ips") == dict.fromkeys(
                {str(ip) for x in st.services.values() for ip in x.cluster_ips if ip.version == v})


def test_one_family_failing_fails_the_sync_and_keeps_its_rules() -> None:
    f4, f6, proxier = meta()
    plans = build_family_plans(dual_state(), (V4, V6))
    proxier.sync(plans, None)
    before6 = f6.dump()
    f6.fail_next = "nft crashed"
    with pytest.raises(ApplyError, match="IPv6: .*nft crashed"):
        proxier.sync(build_family_plans(ClusterState(), (V4, V6)), None)
    assert f6.dump() == before6 and f4.dump() == synced4(ClusterState()).dump()  # IPv4 still synced
    assert not proxier.needs_repair()
    f6.state = None  # someone deleted the IPv6 table
    assert proxier.needs_repair()
    proxier.cleanup()
    assert f4.dump() == "" and f6.dump() == ""


def test_meta_proxier_refuses_bad_families() -> None:
    with pytest.raises(ValueError, match="keyed by IP family"):
        MetaProxier({5: NftablesProxier(FakeNft("ip"), V4)})


def _sticky6(*ips: str, affinity: int | None = 60, node_port: int | None = None) -> ClusterState:
    kw: dict[str, Any] = {"type": "NodePort", "node_port": node_port} if node_port else {}
    s = service("sticky", "fd00:96::11", affinity=affinity, **kw)
    return state((s, endpoints(s, *ips)))


def _record6(fake: FakeNft, dest: str, client: str, endpoint: str, timeout: int = 60) -> None:
    """What the record chain does for a new connection from ``client`` DNATed to ``endpoint``."""
    fake.record(sticky_set_name(dest, endpoint), client, None, timeout)


def _clients(fake: FakeNft, dest: str, endpoint: str) -> set[str]:
    name = sticky_set_name(dest, endpoint)
    return {e.key for e in fake.list_sets(name).get(name, ())}  # list_sets drops expired entries


DEST = "fd00:96::11 . tcp . 80"
EP1, EP2 = "fd00:244:1::6 . 8080", "fd00:244:2::6 . 8080"


def test_golden_ipv6_affinity_layout() -> None:
    """IPv6 ClientIP affinity: a client set per (destination, endpoint), a lookup and a record chain."""
    fake, proxier = synced6(_sticky6("fd00:244:1::6", "fd00:244:2::6", node_port=30011))
    check_golden("nftables_ipv6_affinity.txt", fake.dump())
    text = fake.dump()
    assert "update @affinity-" not in text  # the rule nft 1.0.6 cannot generate for IPv6
    assert proxier.rule_count() == sum(len(c.rules) for c in fake.state.chains.values())  # type: ignore[union-attr]


def test_ipv6_affinity_partial_sync_drops_the_set_of_a_departed_endpoint() -> None:
    fake, proxier = synced6(_sticky6("fd00:244:1::6", "fd00:244:2::6"))
    _record6(fake, DEST, "fd00:100::2", EP1)
    _record6(fake, DEST, "fd00:100::3", EP2)
    new = _sticky6("fd00:244:1::6", "fd00:244:3::6")
    proxier.sync(build_plans(new, V6), {ServiceKey("default", "sticky")})
    assert _clients(fake, DEST, EP1) == {"fd00:100::2"}  # kept, with its client
    assert sticky_set_name(DEST, EP2) not in fake.state.sets  # type: ignore[union-attr]
    assert _clients(fake, DEST, "fd00:244:3::6 . 8080") == set()
    reference, _ = synced6(new)
    assert _without_entries(fake.dump()) == reference.dump()
    # the service loses affinity: its chains and sets go
    proxier.sync(build_plans(_sticky6("fd00:244:1::6", affinity=None), V6), {ServiceKey("default", "sticky")})
    assert "sticky-" not in fake.dump() and "stick-" not in fake.dump()
    assert fake.dump() == synced6(_sticky6("fd00:244:1::6", affinity=None))[0].dump()


def _without_entries(text: str) -> str:
    """A dump without the clients recorded in sticky sets (a fresh full sync has none)."""
    out, in_sticky = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("  "):
            if not line.startswith("    "):
                in_sticky = line.startswith("  set sticky-")
            elif in_sticky:
                continue
        out.append(line)
    return "".join(out)


def test_ipv6_affinity_full_sync_and_restart_carry_over_valid_clients() -> None:
    fake, proxier = synced6(_sticky6("fd00:244:1::6", "fd00:244:2::6"))
    _record6(fake, DEST, "fd00:100::2", EP1)
    _record6(fake, DEST, "fd00:100::3", EP2)
    fake.now += 20
    new = _sticky6("fd00:244:1::6")  # EP2 left
    proxier.sync(build_plans(new, V6), None)  # a full resync replaces the table
    assert _clients(fake, DEST, EP1) == {"fd00:100::2"}
    assert sticky_set_name(DEST, EP2) not in fake.state.sets  # type: ignore[union-attr]
    (entry,) = fake.list_sets(sticky_set_name(DEST, EP1))[sticky_set_name(DEST, EP1)]
    assert (entry.timeout, entry.expires) == (60, 40)  # the remaining time, not a fresh timeout
    restarted = NftablesProxier(fake, V6)  # a new process: nothing in memory
    restarted.sync(build_plans(new, V6), None)
    assert _clients(fake, DEST, EP1) == {"fd00:100::2"}
    fake.now += 41
    assert _clients(fake, DEST, EP1) == set()  # expired


@pytest.mark.parametrize("seed", range(3))
def test_ipv6_affinity_partial_syncs_converge_to_the_full_sync(seed: int) -> None:
    rng = random.Random(seed)
    st = _sticky6("fd00:244:1::6", "fd00:244:2::6", node_port=30011)
    fake, proxier = synced6(st)
    key = ServiceKey("default", "sticky")
    for _ in range(25):
        svc = st.services[key]
        ips = [f"fd00:244:{rng.randrange(1, 3)}::{rng.randrange(2, 9):x}" for _ in range(rng.randrange(0, 4))]
        svc = dataclasses.replace(svc, affinity_timeout=rng.choice([None, 30, 60]),
                                  external_traffic_policy=rng.choice(list(type(svc.external_traffic_policy))))
        new = ClusterState({key: svc}, {key: (endpoints(svc, *ips),)} if ips else {})
        proxier.sync(build_plans(new, V6), changed_services(st, new))
        st = new
        assert fake.dump() == synced6(st)[0].dump()
        assert proxier.rule_count() == sum(len(c.rules) for c in fake.state.chains.values())  # type: ignore[union-attr]


def test_daemon_runs_both_families_in_one_loop() -> None:
    class Source:
        def __init__(self) -> None:
            self.next: ClusterState | None = None

        def poll(self) -> tuple[ClusterState, tuple[()]] | None:
            out, self.next = self.next, None
            return None if out is None else (out, ())

    f4, f6, proxier = meta()
    src = Source()
    hc: list[dict[int, tuple[ServiceKey, int]]] = []
    cleaned: list[tuple[set[object], set[object], set[int]]] = []

    def conntrack(gone: object, fresh: object, ports: object) -> int:
        cleaned.append((set(gone), set(fresh), set(ports)))  # type: ignore[call-overload]
        return 0

    d = ProxyDaemon(src, proxier, (V4, V6), timing=Timing(min_sync_period=0), healthchecks=hc.append,
                    conntrack=conntrack)
    lb, slices = dual("lb", "10.96.0.12", "fd00:96::12", ("10.244.1.7", "10.244.2.7"),
                      ("fd00:244:1::7", "fd00:244:2::7"), type="LoadBalancer", node_port=30081, etp="Local",
                      hc_port=30999, protocol="UDP")
    slices = (endpoints(lb, "10.244.1.7", "10.244.2.7", nodes={"10.244.2.7": "node2"}), slices[1])
    src.next = ClusterState(services={lb.key: lb}, slices={lb.key: slices})
    assert d.step() and d.healthz()[0]
    assert "10.96.0.12 . udp . 80" in f4.dump() and "fd00:96::12 . udp . 80" in f6.dump()
    # one local IPv4 endpoint, two local IPv6 ones: the larger count, not the sum
    assert hc[-1] == {30999: (lb.key, 2)}
    assert d.metrics.gauges["services"] == 1
    assert d.metrics.gauges["elements"] == sum(len(s.elements) for f in (f4, f6)
                                               for s in f.state.sets.values())  # type: ignore[union-attr]
    # the IPv6 endpoints go: their UDP flows are cleaned, the IPv4 ones stay
    src.next = ClusterState(services={lb.key: lb}, slices={lb.key: slices[:1]})
    assert d.step()
    assert cleaned[-1][0] == {IPv6Address("fd00:244:1::7"), IPv6Address("fd00:244:2::7")}


def test_udp_cleanup_tells_the_families_of_a_service_apart() -> None:
    dns, slices = dual("dns", "10.96.0.53", "fd00:96::53", (), ("fd00:244:1::5",), protocol="UDP", port=53)
    before = build_family_plans(ClusterState({dns.key: dns}, {dns.key: slices[1:]}), (V4, V6))
    after = build_family_plans(ClusterState({dns.key: dns}, {dns.key: (endpoints(dns, "10.244.1.5"),
                                                                          slices[1])}), (V4, V6))
    gone, fresh, ports = udp_cleanup(before, after, {dns.key})
    # the IPv4 plan got its first endpoint: flows to the IPv4 cluster IP are stale; nothing left IPv6
    assert (gone, fresh, ports) == (set(), {(IPv4Address("10.96.0.53"), 53)}, set())

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from cnipy.proxy.errors import ApplyError, FakeApplyError
from cnipy.proxy.model import ClusterState, ServiceKey, ServicePort
from cnipy.proxy.nftables.backend import NftablesProxier
from cnipy.proxy.nftables.runner import FakeNft, parse_map_json
from cnipy.proxy.nftables.transaction import (
    Chain,
    Element,
    Entry,
    RenderedElements,
    Rule,
    Set,
    Table,
    Transaction,
)
from cnipy.proxy.plan import build_plans, changed_services
from tests.unit.proxy.builders import config, endpoints, scale_state, service, state
from tests.unit.proxy.goldens import check_golden
from tests.unit.proxy.scenarios import feature_state


def synced(st: ClusterState, **kw: object) -> tuple[FakeNft, NftablesProxier]:
    cfg = config(**kw)
    fake = FakeNft()
    proxier = NftablesProxier(fake, cfg)
    proxier.sync(build_plans(st, cfg), None)
    return fake, proxier


def test_golden_features() -> None:
    fake, _ = synced(feature_state())
    check_golden("nftables_features.txt", fake.dump())


def test_golden_masquerade_all_and_localhost_nodeports() -> None:
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    fake, _ = synced(state((s, endpoints(s, "10.244.1.2"))), masquerade_all=True, localhost_nodeports=True)
    check_golden("nftables_masq_all.txt", fake.dump())


def test_transaction_render() -> None:
    tx = Transaction("ip", "cnipy")
    tx.add(Table())
    tx.add(Chain("nat-prerouting", "nat", "prerouting", "-100"))
    tx.add(Rule("nat-prerouting", "jump services"))
    tx.add(Set("s", "type ipv4_addr"))
    tx.add(Element("s", "10.0.0.1"))
    tx.add(Element("s", "10.0.0.2"))
    tx.delete(Element("s", "10.0.0.3"))
    assert tx.render() == (
        "add table ip cnipy\n"
        "add chain ip cnipy nat-prerouting { type nat hook prerouting priority -100; policy accept; }\n"
        "add rule ip cnipy nat-prerouting jump services\n"
        "add set ip cnipy s { type ipv4_addr ; }\n"
        "add element ip cnipy s { 10.0.0.1, 10.0.0.2 }\n"
        "delete element ip cnipy s { 10.0.0.3 }\n")
    with pytest.raises(ValueError):
        tx.add(Chain("bad name"))
    with pytest.raises(ValueError):
        tx.add(Rule("c", "a\nb"))


def test_rendered_elements() -> None:
    # What a full sync queues: element text, rendered as is, parsed back into keys and values by the fake.
    tx = Transaction("ip", "cnipy")
    tx.add(Table())
    tx.add(Chain("c"))
    tx.add(Set("m", "type ipv4_addr : verdict", is_map=True))
    tx.add(RenderedElements("m", ["10.0.0.1 : goto c", "10.0.0.2 : drop"]))
    assert tx.render().endswith("add element ip cnipy m { 10.0.0.1 : goto c, 10.0.0.2 : drop }\n")
    fake = FakeNft()
    fake.run(tx)
    assert fake.elements("m") == {"10.0.0.1": "goto c", "10.0.0.2": "drop"}
    for bad in (["10.0.0.3\n"], [""]):
        with pytest.raises(ValueError):
            tx.add(RenderedElements("m", bad))


def test_fake_enforces_kernel_rules() -> None:
    fake = FakeNft()
    tx = Transaction("ip", "cnipy")
    tx.add(Table())
    tx.add(Chain("a"))
    tx.add(Rule("a", "jump missing"))
    with pytest.raises(FakeApplyError, match="ENOENT"):
        fake.run(tx)
    assert fake.state is None  # nothing committed
    tx = Transaction("ip", "cnipy")
    tx.add(Table())
    tx.add(Chain("a"))
    tx.add(Chain("b"))
    tx.add(Rule("a", "jump b"))
    tx.add(Set("m", "type ipv4_addr : verdict", is_map=True))
    tx.add(Element("m", "10.0.0.1", "goto b"))
    fake.run(tx)
    for bad, errno in [
        (Element("m", "10.0.0.1", "goto a"), "EEXIST"),
        (Element("m", "10.0.0.2", "goto nowhere"), "ENOENT"),
        (Rule("a", "ip daddr @nosuchset drop"), "ENOENT"),
    ]:
        tx = Transaction("ip", "cnipy")
        tx.add(bad)
        with pytest.raises(FakeApplyError, match=errno):
            fake.run(tx)
    tx = Transaction("ip", "cnipy")
    tx.delete(Chain("b"))
    with pytest.raises(FakeApplyError, match="EBUSY"):
        fake.run(tx)
    tx = Transaction("ip", "cnipy")
    tx.delete(Element("m", "10.0.0.9"))
    with pytest.raises(FakeApplyError, match="ENOENT"):
        fake.run(tx)
    assert fake.elements("m") == {"10.0.0.1": "goto b"}


def _mutate(st: ClusterState, rng: random.Random) -> ClusterState:
    services, slices = dict(st.services), dict(st.slices)
    keys = sorted(services)
    key = rng.choice(keys)
    svc = services[key]
    action = rng.randrange(6)
    if action == 0:  # endpoints change
        n = rng.randrange(0, 5)
        ips = [f"10.244.{rng.randrange(1, 3)}.{rng.randrange(2, 250)}" for _ in range(n)]
        slices[key] = (endpoints(svc, *ips, nodes={ip: "node1" if ip.startswith("10.244.1.") else "node2"
                                                   for ip in ips}),) if ips else ()
    elif action == 1:  # delete the service
        del services[key]
        slices.pop(key, None)
    elif action == 2:  # flip policies / affinity
        services[key] = dataclasses.replace(
            svc, affinity_timeout=None if svc.affinity_timeout else 100,
            external_traffic_policy=rng.choice(list(type(svc.external_traffic_policy))))
    elif action == 3:  # a new service
        i = rng.randrange(1000)
        s = service(f"new{i}", f"10.96.1.{i % 250 + 1}", type="NodePort", node_port=31000 + i)
        services[s.key] = s
        slices[s.key] = (endpoints(s, f"10.244.1.{i % 250 + 1}"),)
    elif action == 4:  # another port on the same ClusterIP, or one port less (cluster-ips: shared by ports)
        if len(svc.ports) > 1:
            services[key] = dataclasses.replace(svc, ports=svc.ports[:1])
        else:
            p = svc.ports[0]
            extra = ServicePort("extra", p.protocol, p.port + 1000 + rng.randrange(3), p.target_port)
            services[key] = dataclasses.replace(svc, ports=(*svc.ports, extra))
    else:  # another service on an existing service's ClusterIP (another port), or a ClusterIP moves
        other = services[rng.choice(keys)]
        if rng.random() < 0.5:
            s = service(f"share{rng.randrange(3)}", str(other.cluster_ips[0]), 2000 + rng.randrange(100))
            services[s.key] = s
            slices[s.key] = (endpoints(s, f"10.244.1.{rng.randrange(2, 250)}"),)
        else:
            services[key] = dataclasses.replace(svc, cluster_ips=(ip_address(f"10.96.2.{rng.randrange(1, 5)}"),))
    return ClusterState(services=services, slices=slices)


@pytest.mark.parametrize("seed", range(5))
def test_partial_syncs_converge_to_the_full_sync(seed: int) -> None:
    rng = random.Random(seed)
    kw = {"service_cidrs": (IPv4Network("10.96.0.0/16"),)} if seed % 2 else {}
    cfg = config(**kw)
    st = feature_state()
    fake = FakeNft()
    proxier = NftablesProxier(fake, cfg)
    proxier.sync(build_plans(st, cfg), None)
    for _ in range(40):
        new = _mutate(st, rng)
        changed = changed_services(st, new)
        result = proxier.sync(build_plans(new, cfg), changed)
        assert not result.full
        st = new
        reference, _ = synced(st, **kw)
        assert fake.elements("cluster-ips") == dict.fromkeys(
            {str(ip) for s in st.services.values() for ip in s.cluster_ips})
        assert fake.dump() == reference.dump()
        assert result.elements == sum(len(s.elements) for s in reference.state.sets.values())  # type: ignore[union-attr]


def test_partial_sync_only_touches_elements() -> None:
    cfg = config()
    st = scale_state(50, 4)
    fake = FakeNft()
    proxier = NftablesProxier(fake, cfg)
    proxier.sync(build_plans(st, cfg), None)
    key = ServiceKey("default", "svc7")
    svc = st.services[key]
    new = ClusterState(services=st.services, slices={**st.slices, key: (endpoints(svc, "10.244.9.1"),)})
    seen: list[Transaction] = []
    real_run = fake.run

    def spy(tx: Transaction) -> None:
        seen.append(tx)
        real_run(tx)

    fake.run = spy  # type: ignore[method-assign]
    result = proxier.sync(build_plans(new, cfg), {key})
    (tx,) = seen
    kinds = Counter(type(obj).__name__ for _, obj in tx.ops)
    assert set(kinds) <= {"Elements", "Chain", "Rule"} and "Table" not in kinds
    assert result.operations <= 16  # 4 slots + 4 hairpin out, 1 + 1 in, the vmap entry, maybe a chain


def test_failed_apply_keeps_previous_rules_and_state() -> None:
    cfg = config()
    s = service("web", "10.96.0.10")
    st = state((s, endpoints(s, "10.244.1.2")))
    fake, proxier = synced(st)
    before = fake.dump()
    new = state((s, endpoints(s, "10.244.1.3")))
    fake.fail_next = "nft exploded"
    with pytest.raises(ApplyError):
        proxier.sync(build_plans(new, cfg), {s.key})
    assert fake.dump() == before
    proxier.sync(build_plans(new, cfg), {s.key})  # the retry works from the remembered state
    assert "10.244.1.3 . 8080" in fake.dump() and "10.244.1.2 . 8080" not in fake.dump()


def test_slots_cover_every_backend_exactly_once() -> None:
    # Equal shares: numgen random mod n over slots 0..n-1, and slot i holds backend i.
    s = service("web", "10.96.0.10")
    ips = [f"10.244.1.{i}" for i in range(2, 9)]
    fake, _ = synced(state((s, endpoints(s, *ips))))
    slots = {k: v for k, v in fake.elements("ip-tcp-backends").items() if k.startswith("10.96.0.10 ")}
    assert sorted(int(k.rsplit(" ", 1)[1]) for k in slots) == list(range(len(ips)))
    assert sorted(v.split(" ")[0] for v in slots.values() if v) == sorted(ips)
    assert fake.elements("service-ips")["10.96.0.10 . tcp . 80"] == "goto ip-tcp-c-7"


def test_repair_detects_flushed_table() -> None:
    s = service("web", "10.96.0.10")
    fake, proxier = synced(state((s, endpoints(s, "10.244.1.2"))))
    assert not proxier.needs_repair()
    tx = Transaction("ip", "cnipy")
    tx.flush(Table())
    fake.run(tx)
    assert proxier.needs_repair()
    tx = Transaction("ip", "cnipy")
    tx.delete(Table())
    fake.run(tx)
    assert proxier.needs_repair()
    proxier.sync(build_plans(state((s, endpoints(s, "10.244.1.2"))), config()), None)
    assert not proxier.needs_repair()
    tx = Transaction("ip", "cnipy")
    tx.flush(Set("service-ips", "type ipv4_addr . inet_proto . inet_service : verdict", is_map=True))
    fake.run(tx)
    assert proxier.needs_repair()  # the chains are intact, the maps were emptied


def test_forward_drops_invalid_unless_conntrack_is_liberal() -> None:
    # kube-proxy's KUBE-FORWARD INVALID drop; its accepts have no nftables equivalent (an accept in our table
    # does not override a drop elsewhere), so the chain holds the drop only, or nothing.
    s = service("web", "10.96.0.10")
    fake, _ = synced(state((s, endpoints(s, "10.244.1.2"))))
    assert fake.list_rules("filter-forward") == ["ct state invalid drop"]
    assert "type filter hook forward priority -110" in fake.dump()
    liberal, _ = synced(state((s, endpoints(s, "10.244.1.2"))), conntrack_tcp_liberal=True)
    assert liberal.list_rules("filter-forward") == []


# ClientIP affinity: entries (client . service address . port -> endpoint) are written by the packet path; the
# fake's record() does what the "update @affinity-<proto>" rule does for a new connection.
def _sticky(*ips: str, affinity: int | None = 60) -> ClusterState:
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080, affinity=affinity)
    return state((s, endpoints(s, *ips)))


def _record(fake: FakeNft, client: str, dest: str, endpoint: str) -> None:
    fake.record("affinity-tcp", f"{client} . {dest}", f"{endpoint} . 8080", 60)


def test_golden_affinity_layout() -> None:
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080, affinity=60, etp="Local")
    u = service("dns", "10.96.0.53", 53, protocol="UDP", target=53, affinity=100)
    st = state((s, endpoints(s, "10.244.1.2", "10.244.2.2", nodes={"10.244.2.2": "node2"})),
               (u, endpoints(u, "10.244.1.5", port=53)))
    fake, _ = synced(st)
    dump = fake.dump()
    check_golden("nftables_affinity.txt", dump)
    # One lookup before numgen, whatever the number of endpoints; no per-slot or per-service objects.
    assert "dnat ip to ip saddr . ip daddr . tcp dport map @affinity-tcp" in dump
    assert "aff0" not in dump and "-s0-" not in dump
    assert fake.elements("affinity-nodeports") == {"tcp . 30080": "goto record-tcp-t60"}
    assert fake.elements("affinity-ips") == {"10.96.0.10 . tcp . 80": "goto record-tcp-t60",
                                             "10.96.0.53 . udp . 53": "goto record-udp-t100"}


def test_partial_sync_purges_entries_of_departed_endpoints() -> None:
    cfg = config()
    fake, proxier = synced(_sticky("10.244.1.2", "10.244.1.3"))
    _record(fake, "192.168.0.1", "10.96.0.10 . 80", "10.244.1.2")
    _record(fake, "192.168.0.2", "10.96.0.10 . 80", "10.244.1.3")
    _record(fake, "192.168.0.1", "192.168.100.1 . 30080", "10.244.1.2")  # a NodePort, by node address
    key = ServiceKey("default", "web")
    # Endpoints sorting before the others shift the slots; the entries stay as they are.
    proxier.sync(build_plans(_sticky("10.244.1.0", "10.244.1.1", "10.244.1.2", "10.244.1.3"), cfg), {key})
    assert len(fake.elements("affinity-tcp")) == 3
    # An entry recorded between the listing and the commit goes in a second transaction.
    real_run = fake.run

    def racing(tx: Transaction) -> None:
        _record(fake, "192.168.0.3", "10.96.0.10 . 80", "10.244.1.2")
        fake.run = real_run  # type: ignore[method-assign]
        real_run(tx)

    fake.run = racing  # type: ignore[method-assign]
    proxier.sync(build_plans(_sticky("10.244.1.0", "10.244.1.1", "10.244.1.3"), cfg), {key})
    assert fake.elements("affinity-tcp") == {"192.168.0.2 . 10.96.0.10 . 80": "10.244.1.3 . 8080"}
    # An entry that expires between the listing and the commit does not fail the transaction.
    _record(fake, "192.168.0.4", "10.96.0.10 . 80", "10.244.1.0")
    real_list = fake.list_map

    def listed_then_expired(name: str) -> list[Entry] | None:
        entries = real_list(name)
        fake.now += 61
        return entries

    fake.list_map = listed_then_expired  # type: ignore[method-assign]
    proxier.sync(build_plans(_sticky("10.244.1.1", "10.244.1.3"), cfg), {key})
    fake.list_map = real_list  # type: ignore[method-assign]
    assert fake.elements("affinity-tcp") == {}  # 192.168.0.2's entry expired with the clock
    # Losing affinity, or the service going, purges every entry of the service.
    _record(fake, "192.168.0.2", "10.96.0.10 . 80", "10.244.1.3")
    proxier.sync(build_plans(_sticky("10.244.1.1", "10.244.1.3", affinity=None), cfg), {key})
    assert fake.elements("affinity-tcp") == {}
    assert "record-tcp-t60" not in fake.dump()
    proxier.sync(build_plans(_sticky("10.244.1.1", "10.244.1.3"), cfg), {key})
    _record(fake, "192.168.0.2", "10.96.0.10 . 80", "10.244.1.3")
    proxier.sync(build_plans(ClusterState(services={}, slices={}), cfg), {key})
    assert fake.elements("affinity-tcp") == {}
    # A service address gaining affinity: entries recorded for it by the NodePort rule (a port equal to an
    # affinity NodePort) that point elsewhere than its endpoints go.
    proxier.sync(build_plans(_sticky("10.244.1.3", affinity=None), cfg), {key})
    _record(fake, "192.168.0.2", "10.96.0.10 . 80", "10.244.1.9")
    _record(fake, "192.168.0.5", "10.96.0.10 . 80", "10.244.1.3")
    proxier.sync(build_plans(_sticky("10.244.1.3"), cfg), {key})
    assert fake.elements("affinity-tcp") == {"192.168.0.5 . 10.96.0.10 . 80": "10.244.1.3 . 8080"}


def test_full_sync_carries_over_still_valid_entries() -> None:
    cfg = config()
    other = service("other", "10.96.0.20", affinity=60)
    plain = service("plain", "10.96.0.30")
    s = _sticky("10.244.1.2", "10.244.1.3").services[ServiceKey("default", "web")]
    before = state((s, endpoints(s, "10.244.1.2", "10.244.1.3")), (other, endpoints(other, "10.244.1.4")),
                   (plain, endpoints(plain, "10.244.1.5")))
    fake, _ = synced(before)
    _record(fake, "192.168.0.1", "10.96.0.10 . 80", "10.244.1.2")
    _record(fake, "192.168.0.2", "10.96.0.10 . 80", "10.244.1.3")
    _record(fake, "192.168.0.2", "192.168.100.1 . 30080", "10.244.1.3")
    _record(fake, "192.168.0.3", "10.96.0.20 . 80", "10.244.1.4")
    fake.now += 20
    # A restarted proxy (no memory of what it applied) does a full sync: 10.244.1.2 has left web, other has
    # lost affinity.
    other_plain = dataclasses.replace(other, affinity_timeout=None)
    after = state((s, endpoints(s, "10.244.1.3", "10.244.1.6")), (other_plain, endpoints(other, "10.244.1.4")),
                  (plain, endpoints(plain, "10.244.1.5")))
    restarted = NftablesProxier(fake, cfg)
    restarted.sync(build_plans(after, cfg), None)
    kept = {e.key: e for e in fake.list_map("affinity-tcp") or ()}
    assert set(kept) == {"192.168.0.2 . 10.96.0.10 . 80", "192.168.0.2 . 192.168.100.1 . 30080"}
    assert all(e.value == "10.244.1.3 . 8080" and e.timeout == 60 and e.expires == 40 for e in kept.values())
    fake.now += 40  # the timers ran on: they were not restarted
    assert fake.elements("affinity-tcp") == {}
    # Without affinity services a full sync does not read the maps at all.
    fake.list_map = None  # type: ignore[assignment,method-assign]
    NftablesProxier(fake, cfg).sync(build_plans(state((plain, endpoints(plain, "10.244.1.5"))), cfg), None)


def test_parse_map_json_of_nft_1_0_6() -> None:
    text = ('{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "ip", "name": "affinity-tcp", '
            '"table": "cnipy", "type": ["ipv4_addr", "ipv4_addr", "inet_service"], "map": "ipv4_addr . '
            'inet_service", "flags": ["timeout"], "elem": [[{"elem": {"val": {"concat": ["1.2.3.4", "10.96.0.10", '
            '80]}, "timeout": 60, "expires": 29}}, {"concat": ["10.244.1.10", 8080]}]]}}]}')
    assert parse_map_json(text) == [Entry("1.2.3.4 . 10.96.0.10 . 80", "10.244.1.10 . 8080", 60, 29)]
    assert Entry("1.2.3.4 . 10.96.0.10 . 80", "10.244.1.10 . 8080", 60, 0).text() == \
        "1.2.3.4 . 10.96.0.10 . 80 timeout 60s expires 1s : 10.244.1.10 . 8080"
    # The kernel refuses (ERANGE) an element that expires after its timeout.
    assert Entry("k", "v", 10, 30).text() == "k timeout 10s expires 10s : v"


def test_cluster_ips_check_rejects_bad_ports_and_drops_unallocated_addresses() -> None:
    s = service("web", "10.96.0.10")
    st = state((s, endpoints(s, "10.244.1.2")))
    fake, _ = synced(st)
    assert fake.list_rules("cluster-ips-check") == ["ip daddr @cluster-ips goto reject-packet"]  # no CIDR: no drop
    assert fake.elements("cluster-ips") == {"10.96.0.10": None}
    # After DNAT: forward (any priority), output after nat output (-100); new connections only.
    for name, hook in (("cluster-ips-forward", "forward"), ("cluster-ips-output", "output")):
        assert f"chain {name} {{ type filter hook {hook} priority -90;" in fake.dump()
        assert fake.list_rules(name) == ["ct state new jump cluster-ips-check"]
    nets = (IPv4Network("10.96.0.0/16"), IPv4Network("10.97.0.0/24"))
    for cidrs, drop in ((nets[:1], "ip daddr 10.96.0.0/16 drop"),
                        (nets, "ip daddr { 10.96.0.0/16, 10.97.0.0/24 } drop")):
        fake, _ = synced(st, service_cidrs=cidrs)
        assert fake.list_rules("cluster-ips-check") == ["ip daddr @cluster-ips goto reject-packet", drop]
    with pytest.raises(ValueError, match="service_cidrs of an IPv4 NodeConfig must be IPv4"):
        config(service_cidrs=(IPv6Network("fd00:96::/112"),))

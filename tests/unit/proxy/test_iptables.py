from __future__ import annotations

import random
from dataclasses import replace

import pytest

from cnipy.proxy.errors import ApplyError, FakeApplyError
from cnipy.proxy.iptables import names
from cnipy.proxy.iptables.backend import IptablesProxier, _list_first_pays
from cnipy.proxy.iptables.runner import FakeIptables
from cnipy.proxy.model import ClusterState
from cnipy.proxy.plan import build_plans, changed_services
from tests.unit.proxy.builders import config, endpoints, scale_state, service, state
from tests.unit.proxy.goldens import check_golden
from tests.unit.proxy.scenarios import feature_state
from tests.unit.proxy.test_nftables import _mutate


def synced(st: ClusterState, **kw: object) -> tuple[FakeIptables, IptablesProxier]:
    cfg = config(**kw)
    fake = FakeIptables()
    proxier = IptablesProxier(fake, cfg)
    proxier.sync(build_plans(st, cfg), None)
    return fake, proxier


def test_kube_proxy_chain_names() -> None:
    # The same hashes kube-proxy computes (values from kube-proxy's own tests).
    assert names.svc_chain("ns1/svc1:p80", "TCP") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert names.sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_golden_features() -> None:
    fake, _ = synced(feature_state())
    check_golden("iptables_features.txt", fake.dump())


def test_golden_localhost_nodeports_and_node_port_addresses() -> None:
    from ipaddress import IPv4Network
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    fake, _ = synced(state((s, endpoints(s, "10.244.1.2"))), masquerade_all=True, localhost_nodeports=True,
                     node_port_addresses=(IPv4Network("192.168.0.0/16"),))
    check_golden("iptables_localhost.txt", fake.dump())


def test_statistic_probabilities_give_equal_shares() -> None:
    s = service("web", "10.96.0.10")
    fake, _ = synced(state((s, endpoints(s, *[f"10.244.1.{i}" for i in range(2, 6)]))))
    chain = names.svc_chain("default/web", "tcp")
    probs = [r[r.index("--probability") + 1] for r in fake.tables["nat"][chain] if "--probability" in r]
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000"]


@pytest.mark.parametrize("seed", range(5))
def test_partial_syncs_converge_to_the_full_sync(seed: int) -> None:
    rng = random.Random(seed)
    cfg = config()
    st = feature_state()
    fake = FakeIptables()
    proxier = IptablesProxier(fake, cfg)
    proxier.sync(build_plans(st, cfg), None)
    for _ in range(25):
        new = _mutate(st, rng)
        result = proxier.sync(build_plans(new, cfg), changed_services(st, new))
        assert not result.full
        st = new
        reference, _ = synced(st)
        assert fake.dump() == reference.dump()
        # A partial sync compares only the changed services' chains and the shared ones: what it records as
        # applied must still be everything the full rendering would write.
        assert proxier.applied == proxier._desired(proxier.owned)
        assert proxier.shared_keys == set(proxier._shared(proxier.owned))


def test_partial_sync_rewrites_only_changed_chains() -> None:
    cfg = config()
    a, b = service("a", "10.96.0.1"), service("b", "10.96.0.2")
    st = state((a, endpoints(a, "10.244.1.2")), (b, endpoints(b, "10.244.1.3")))
    fake, proxier = synced(st)
    seen: list[str] = []
    real = fake.restore
    fake.restore = lambda text: (seen.append(text), real(text))[1]  # type: ignore[method-assign,func-returns-value]
    new = state((a, endpoints(a, "10.244.1.2")), (b, endpoints(b, "10.244.1.4")))
    proxier.sync(build_plans(new, cfg), {b.key})
    (text,) = seen
    assert names.svc_chain("default/a", "tcp") not in text
    assert names.svc_chain("default/b", "tcp") in text
    old_sep = names.sep_chain("default/b", "tcp", "10.244.1.3:8080")
    assert f"-X {old_sep}" in text
    assert old_sep not in fake.tables["nat"]


def test_restart_removes_chains_left_by_an_earlier_run() -> None:
    cfg = config()
    a = service("a", "10.96.0.1")
    fake, _ = synced(state((a, endpoints(a, "10.244.1.2"))))
    proxier = IptablesProxier(fake, cfg)  # a new process, same kernel
    proxier.sync(build_plans(state(), cfg), None)
    assert not [c for c in fake.tables["nat"] if c.startswith(("KUBE-SVC-", "KUBE-SEP-"))]


def test_fake_semantics_and_failed_apply() -> None:
    fake = FakeIptables()
    with pytest.raises(FakeApplyError, match="ENOENT"):
        fake.restore("*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT\n")
    assert "KUBE-A" not in fake.tables["nat"]
    fake.restore("*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT\n")
    with pytest.raises(FakeApplyError, match="EBUSY"):
        fake.restore("*nat\n-X KUBE-B\nCOMMIT\n")
    s = service("web", "10.96.0.10")
    fake, proxier = synced(state((s, endpoints(s, "10.244.1.2"))))
    before = fake.dump()
    fake.fail_next = "iptables-restore: line 7 failed"
    with pytest.raises(ApplyError):
        proxier.sync(build_plans(state((s, endpoints(s, "10.244.1.3"))), config()), {s.key})
    assert fake.dump() == before


def test_repair_detects_flush_and_missing_jumps() -> None:
    s = service("web", "10.96.0.10")
    fake, proxier = synced(state((s, endpoints(s, "10.244.1.2"))))
    assert not proxier.needs_repair()
    fake.flush_all("nat")
    assert proxier.needs_repair()
    proxier.sync(build_plans(state((s, endpoints(s, "10.244.1.2"))), config()), None)
    assert not proxier.needs_repair()
    assert fake.dump() == synced(state((s, endpoints(s, "10.244.1.2"))))[0].dump()


@pytest.mark.parametrize("localhost", [False, True])
def test_node_port_addresses_give_one_destination_per_rule(localhost: bool) -> None:
    # iptables refuses two -d matches in one rule ("multiple -d flags not allowed"); the fake refuses it too.
    from ipaddress import IPv4Network
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    nets = (IPv4Network("172.31.1.0/24"), IPv4Network("127.0.0.0/8"), IPv4Network("0.0.0.0/0"))
    fake, _ = synced(state((s, endpoints(s, "10.244.1.2"))), localhost_nodeports=localhost, node_port_addresses=nets)
    jumps = [r for r in fake.tables["nat"][names.KUBE_SERVICES] if r[-1] == names.KUBE_NODEPORTS]
    assert all(r.count("-d") <= 1 for r in jumps)
    dests = [r[r.index("-d") + 1] for r in jumps if "-d" in r and "!" not in r[r.index("-d") - 1:r.index("-d")]]
    assert "172.31.1.0/24" in dests
    assert ("127.0.0.0/8" in dests) == localhost


def test_fake_refuses_repeated_destination() -> None:
    fake = FakeIptables()
    with pytest.raises(FakeApplyError):
        fake.restore("*nat\n:KUBE-X - [0:0]\n-A KUBE-X -d 10.0.0.0/8 ! -d 127.0.0.0/8 -j RETURN\nCOMMIT\n")


def test_filter_accepts_run_after_our_drops_and_follow_conntrack_liberal() -> None:
    s = service("lb", "10.96.0.12", type="LoadBalancer", node_port=30081, lb_ips=("192.0.2.12",), etp="Local",
                hc_port=30999)
    st = state((s, endpoints(s, "10.244.2.7", node="node2")))  # no local endpoint: the port is served anyway
    fake, _ = synced(st)
    fwd = fake.tables["filter"]["FORWARD"]
    # The accepts come after our drops and rejects (KUBE-SERVICES, KUBE-PROXY-FIREWALL, KUBE-FIREWALL) and see
    # every packet, not only NEW ones.
    assert fwd[-1][-1] == names.KUBE_FORWARD and "--ctstate" not in fwd[-1]
    inp = [r[-1] for r in fake.tables["filter"]["INPUT"]]
    assert inp[0] == names.KUBE_FIREWALL and inp[-1] == names.KUBE_NODEPORTS
    forward = fake.tables["filter"][names.KUBE_FORWARD]
    assert forward[0] == ("-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    assert forward[1][-6:] == ("-m", "mark", "--mark", "0x4000/0x4000", "-j", "ACCEPT")
    assert fake.tables["filter"][names.KUBE_NODEPORTS] == [
        ("-m", "comment", "--comment", "default/lb health check node port", "-m", "tcp", "-p", "tcp",
         "--dport", "30999", "-j", "ACCEPT")]
    liberal, _ = synced(st, conntrack_tcp_liberal=True)
    assert [r[-1] for r in liberal.tables["filter"][names.KUBE_FORWARD]] == ["ACCEPT", "ACCEPT"]


def test_health_check_accept_follows_the_service_and_cleanup_removes_the_chains() -> None:
    cfg = config()
    s = service("lb", "10.96.0.12", type="LoadBalancer", node_port=30081, etp="Local", hc_port=30999)
    fake, proxier = synced(state((s, endpoints(s, "10.244.1.7"))))
    assert len(fake.tables["filter"][names.KUBE_NODEPORTS]) == 1
    proxier.sync(build_plans(state(), cfg), {s.key})
    assert fake.tables["filter"][names.KUBE_NODEPORTS] == []
    proxier.cleanup()
    assert not {names.KUBE_FORWARD, names.KUBE_NODEPORTS} & set(fake.tables["filter"])
    assert not [r for c in ("INPUT", "FORWARD") for r in fake.tables["filter"][c]]


def test_several_cluster_cidrs_masquerade_only_traffic_from_none_of_them() -> None:
    # One "! -s" rule per CIDR would mark everything: each source is outside all CIDRs but one.
    from ipaddress import IPv4Network
    nets = (IPv4Network("10.244.0.0/16"), IPv4Network("10.245.0.0/16"))
    s = service("web", "10.96.0.10")
    fake, proxier = synced(state((s, endpoints(s, "10.244.1.2"))), cluster_cidrs=nets)
    head = fake.tables["nat"][names.svc_chain("default/web", "tcp")][0]
    assert head[-2:] == ("-j", names.KUBE_MASQ_OFF_CLUSTER) and "!" not in head
    assert [r[-3:] for r in fake.tables["nat"][names.KUBE_MASQ_OFF_CLUSTER]] == [
        ("10.244.0.0/16", "-j", "RETURN"), ("10.245.0.0/16", "-j", "RETURN"), ("-j", names.KUBE_MARK_MASQ)]
    one, _ = synced(state((s, endpoints(s, "10.244.1.2"))))
    assert names.KUBE_MASQ_OFF_CLUSTER not in one.tables["nat"]
    proxier.cleanup()
    assert names.KUBE_MASQ_OFF_CLUSTER not in fake.tables["nat"]


def test_iptables_nft_restores_list_the_table_first_when_they_name_many_chains() -> None:
    # iptables-nft's --noflush restore is quadratic in the chains it names unless a chain-less "-S" comes first
    # (backend._list_first_pays); the "-S" must follow the jumps from the built-in chains (which create them).
    cfg = config()
    st = scale_state(30, 10)  # 330 service chains
    fake = FakeIptables(quadratic_chain_names=True)
    proxier = IptablesProxier(fake, cfg)
    seen: list[str] = []
    real = fake.restore
    fake.restore = lambda text: (seen.append(text), real(text))[1]  # type: ignore[method-assign,func-returns-value]
    plans = build_plans(st, cfg)
    proxier.sync(plans, None)
    nat = seen[0].split("*nat\n")[1].split("COMMIT")[0].splitlines()
    assert nat.count("-S") == 1
    listed = nat.index("-S")
    assert max(i for i, line in enumerate(nat) if line.startswith("-I ")) < listed
    assert min(i for i, line in enumerate(nat) if line.startswith((":KUBE-SVC-", ":KUBE-SEP-"))) > listed
    assert "-S" not in seen[0].split("*nat\n")[0].splitlines()  # filter names a few chains only
    reference, _ = synced(st)
    assert fake.dump() == reference.dump() and fake.listed == 1
    # One service changed: a few chains, no listing.
    key = sorted(st.services)[0]
    new = replace(st, slices={**st.slices, key: (endpoints(st.services[key], "10.250.0.1"),)})
    proxier.sync(build_plans(new, cfg), {key})
    assert "-S" not in seen[1].splitlines() and fake.listed == 1
    proxier.sync(build_plans(new, cfg), None)
    assert fake.dump() == synced(new)[0].dump()
    # Listing pays when the chains named outweigh the rules read back: a cold start, a full resync at 10k
    # services (110k chains, 420k rules); not one service among 10k, nor a tiny restore.
    assert _list_first_pays(11_000, 0) and _list_first_pays(110_000, 420_000)
    assert not _list_first_pays(11, 420_000) and not _list_first_pays(100, 0)

"""IPv6 and dual-stack in the iptables mode: ip6tables rules through a fake that keeps ip6tables' semantics."""

from __future__ import annotations

import base64
import hashlib
import random
from ipaddress import IPv6Network

import pytest

from cnipy.proxy.dualstack import MetaProxier
from cnipy.proxy.errors import ApplyError, FakeApplyError
from cnipy.proxy.iptables import names
from cnipy.proxy.iptables.backend import IptablesProxier
from cnipy.proxy.iptables.render import nodeports_jumps
from cnipy.proxy.iptables.runner import FakeIptables, Iptables
from cnipy.proxy.model import ClusterState
from cnipy.proxy.plan import AnyNodeConfig, NodeConfig, build_family_plans, build_plans, changed_services
from tests.unit.proxy.builders import endpoints, service, state
from tests.unit.proxy.goldens import check_golden
from tests.unit.proxy.scenarios import feature_state
from tests.unit.proxy.test_dualstack import V4, V6, _mutate, dual_state, v6_feature_state


def synced(st: ClusterState, cfg: AnyNodeConfig = V6) -> tuple[FakeIptables, IptablesProxier]:
    fake = FakeIptables(family=cfg.ip_family)
    proxier = IptablesProxier(fake, cfg)
    proxier.sync(build_plans(st, cfg), None)
    return fake, proxier


def sticky6() -> ClusterState:
    s = service("sticky", "fd00:96::16", affinity=300, type="NodePort", node_port=30084)
    return state((s, endpoints(s, "fd00:244:1::6", "fd00:244:2::6", nodes={"fd00:244:2::6": "node2"})))


def test_golden_ipv6_features() -> None:
    fake, _ = synced(ClusterState({**v6_feature_state().services, **sticky6().services},
                                  {**v6_feature_state().slices, **sticky6().slices}))
    text = fake.dump()
    check_golden("iptables_ipv6_features.txt", text)
    assert "10.244." not in text and "127.0.0.0/8" not in text and "255.255.255.255" not in text


def test_ipv6_endpoint_chains_hash_the_bracketed_endpoint_as_kube_proxy() -> None:
    # kube-proxy: servicePortEndpointChainName(name, protocol, endpoint.String()) with String() =
    # net.JoinHostPort(ip, port), "[fd00::1]:80" for IPv6; the chain name is base32(sha256(...))[:16].
    expected = "KUBE-SEP-" + base64.b32encode(hashlib.sha256(b"ns1/svc1:p80tcp[fd00::1]:80").digest()).decode()[:16]
    assert names.sep_chain("ns1/svc1:p80", "TCP", "[fd00::1]:80") == expected
    s = service("web", "fd00:96::10", port_name="http")
    fake, _ = synced(state((s, endpoints(s, "fd00:244:1::2"))))
    sep = names.sep_chain("default/web:http", "tcp", "[fd00:244:1::2]:8080")
    assert fake.tables["nat"][sep] == [
        ("-m", "comment", "--comment", "default/web:http", "-s", "fd00:244:1::2/128", "-j", "KUBE-MARK-MASQ"),
        ("-m", "comment", "--comment", "default/web:http", "-m", "tcp", "-p", "tcp", "-j", "DNAT",
         "--to-destination", "[fd00:244:1::2]:8080")]
    svc = names.svc_chain("default/web:http", "tcp")
    assert ("-m", "comment", "--comment", "default/web:http -> [fd00:244:1::2]:8080", "-j", sep) \
        in fake.tables["nat"][svc]


def test_ipv6_affinity_remembers_the_whole_source_address() -> None:
    fake, _ = synced(sticky6())
    seps = [names.sep_chain("default/sticky", "tcp", f"[{ip}]:8080") for ip in ("fd00:244:1::6", "fd00:244:2::6")]
    chain = fake.tables["nat"][names.svc_chain("default/sticky", "tcp")]
    mask = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    checks = [r for r in chain if "--rcheck" in r]
    assert [r[r.index("--name") + 1] for r in checks] == seps
    assert all(r[r.index("--mask") + 1] == mask and "--rsource" in r for r in checks)
    for sep in seps:
        (dnat,) = [r for r in fake.tables["nat"][sep] if "DNAT" in r]
        assert dnat[dnat.index("--name") + 1] == sep and dnat[dnat.index("--mask") + 1] == mask and "--set" in dnat


def test_ipv6_rejects_with_icmp6_and_masquerades_off_cluster_traffic() -> None:
    # TCP gets a reset (as over IPv4), UDP the ICMPv6 port unreachable (ip6tables' default, as kube-proxy)
    empty = service("empty", "fd00:96::53", 53, protocol="UDP", target=53)
    fake, _ = synced(state((empty, None)))
    (rule,) = fake.tables["filter"]["KUBE-SERVICES"]
    assert rule[-4:] == ("-j", "REJECT", "--reject-with", "icmp6-port-unreachable")
    assert rule[rule.index("-d"):rule.index("-d") + 2] == ("-d", "fd00:96::53/128")
    fake, _ = synced(v6_feature_state())
    web = fake.tables["nat"][names.svc_chain("default/web", "tcp")]
    assert web[0] == ("-m", "comment", "--comment", "default/web cluster IP", "-m", "tcp", "-p", "tcp", "-d",
                      "fd00:96::10/128", "--dport", "80", "!", "-s", "fd00:244::/48", "-j", "KUBE-MARK-MASQ")


def test_ipv6_has_no_localhost_node_ports() -> None:
    assert nodeports_jumps(V6) == [
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        'this chain" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS']
    cfg = NodeConfig("node1", ip_family=6, node_port_addresses=(
        IPv6Network("::1/128"), IPv6Network("fd00:100::/64"), IPv6Network("::/0")))
    jumps = nodeports_jumps(cfg)
    assert [j.split('chain" ')[1] for j in jumps] == [
        "-d fd00:100::/64 -j KUBE-NODEPORTS", "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"]
    fake, _ = synced(v6_feature_state())
    assert fake.tables["filter"]["KUBE-FIREWALL"] == []  # no 127/8 protection: nothing to protect


def test_fake_ip6tables_refuses_what_ip6tables_refuses() -> None:
    fake6, fake4 = FakeIptables(family=6), FakeIptables()
    ipv4 = ["-A F -s 10.0.0.1/32 -j DROP", "-A F -p udp -j REJECT --reject-with icmp-port-unreachable",
            "-A F -p tcp -j DNAT --to-destination 10.0.0.1:80",
            "-A F -m recent --name X --mask 255.255.255.255 --rsource --set -j DROP", "-A F ! -d 127.0.0.0/8 -j DROP"]
    for rule in [*ipv4, "-A F -d fd00::/129 -j DROP", "-A F -p tcp -j DNAT --to-destination fd00::1]:80"]:
        with pytest.raises(FakeApplyError):
            fake6.restore(f"*nat\n:F - [0:0]\n{rule}\nCOMMIT\n")
    for rule in ipv4:
        fake4.restore(f"*nat\n:F - [0:0]\n{rule}\nCOMMIT\n")
    for rule in ["-A F -d fd00::1/128 -j DROP", "-A F -p tcp -j DNAT --to-destination [fd00::1]:80",
                 "-A F -p udp -j REJECT --reject-with icmp6-port-unreachable"]:
        fake6.restore(f"*nat\n:F - [0:0]\n{rule}\nCOMMIT\n")
        with pytest.raises(FakeApplyError):
            fake4.restore(f"*nat\n:F - [0:0]\n{rule}\nCOMMIT\n")
    # the IPv4 rendering cannot be applied by ip6tables, nor the IPv6 one by iptables
    cfg4 = NodeConfig("node1")
    with pytest.raises(FakeApplyError, match="host/network"):
        IptablesProxier(FakeIptables(family=6), cfg4).sync(build_plans(feature_state(), cfg4), None)
    with pytest.raises(FakeApplyError, match="host/network"):
        IptablesProxier(FakeIptables(), V6).sync(build_plans(v6_feature_state(), V6), None)


def meta() -> tuple[FakeIptables, FakeIptables, MetaProxier]:
    f4, f6 = FakeIptables(), FakeIptables(family=6)
    return f4, f6, MetaProxier({6: IptablesProxier(f6, V6), 4: IptablesProxier(f4, V4)})


def test_dual_stack_runs_iptables_and_ip6tables_side_by_side() -> None:
    f4, f6, proxier = meta()
    result = proxier.sync(build_family_plans(dual_state(), (V4, V6)), None)
    assert result.full and proxier.mode == "iptables"
    assert "fd00" not in f4.dump() and "10.244" not in f6.dump() and "10.96" not in f6.dump()
    # each family's tables equal what a single-family proxier of that family makes of the same state
    assert f4.dump() == synced(dual_state(), V4)[0].dump()
    assert f6.dump() == synced(dual_state(), V6)[0].dump()
    assert result.rules == sum(len(r) for f in (f4, f6) for t in ("nat", "filter")
                               for c, r in f.tables[t].items() if c.startswith("KUBE-"))


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
        assert f4.dump() == synced(st, V4)[0].dump()
        assert f6.dump() == synced(st, V6)[0].dump()


def test_one_family_failing_keeps_its_rules_and_cleanup_removes_both() -> None:
    f4, f6, proxier = meta()
    proxier.sync(build_family_plans(dual_state(), (V4, V6)), None)
    before6 = f6.dump()
    f6.fail_next = "ip6tables-restore crashed"
    with pytest.raises(ApplyError, match="IPv6: .*ip6tables-restore crashed"):
        proxier.sync(build_family_plans(ClusterState(), (V4, V6)), None)
    assert f6.dump() == before6 and f4.dump() == synced(ClusterState(), V4)[0].dump()
    assert not proxier.needs_repair()
    f6.flush_all("nat")
    assert proxier.needs_repair()
    proxier.cleanup()
    for f in (f4, f6):
        assert not [c for t in f.tables.values() for c in t if c.startswith("KUBE-")], f.dump(("filter", "nat"))


def test_make_proxier_gives_iptables_an_ip6tables_proxier() -> None:
    from cnipy.proxy.command import make_proxier
    for backend, tools in (("nft", ("iptables-nft-restore", "ip6tables-nft-restore")),
                           ("legacy", ("iptables-legacy-restore", "ip6tables-legacy-restore"))):
        proxier = make_proxier("iptables", [V4, V6], backend)
        assert isinstance(proxier, MetaProxier)
        runners = {f: p.ipt for f, p in proxier.proxiers.items()}  # type: ignore[attr-defined]
        assert all(isinstance(r, Iptables) for r in runners.values())
        assert (runners[4].restore_bin, runners[6].restore_bin) == tools
        assert runners[6].iptables == tools[1].removesuffix("-restore")
    single = make_proxier("iptables", V6)
    assert isinstance(single, IptablesProxier) and single.config is V6
    assert single.ipt.restore_bin == "ip6tables-nft-restore"  # type: ignore[attr-defined]


@pytest.mark.parametrize("cfg", [V4, V6], ids=["ipv4", "ipv6"])
def test_cleanup_by_a_fresh_process_removes_the_chains_a_daemon_left(cfg: AnyNodeConfig) -> None:
    fake, _ = synced(dual_state(), cfg)  # a daemon synced, then stopped
    IptablesProxier(fake, cfg).cleanup()  # cnipy proxy --cleanup: a new proxier that applied nothing
    assert not [c for t in fake.tables.values() for c in t if c.startswith("KUBE-")], fake.dump(("filter", "nat"))

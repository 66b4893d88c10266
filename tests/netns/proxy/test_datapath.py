"""Traffic through real rules in namespaces: both back ends, the same expectations."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from cnipy.proxy.errors import ApplyError
from cnipy.proxy.model import ClusterState
from cnipy.proxy.plan import build_plans
from cnipy.proxy.sync import Proxier
from tests.netns.proxy.conftest import make_proxier
from tests.netns.proxy.topology import Topology, _veth
from tests.support.netns import Netns
from tests.unit.proxy.builders import config, endpoints, service, state

CHI2_DF3_P001 = 16.27  # chi-square critical value, 3 degrees of freedom, p = 0.001


def sync(mode: str, topo: Topology, st: ClusterState, **cfg: Any) -> Proxier:
    c = config(**cfg)
    p = make_proxier(mode, topo.node, c)
    p.sync(build_plans(st, c), None)
    return p


def test_cluster_ip_spreads_connections_equally(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(4)
    s = service("web", "10.96.0.10")
    sync(mode, topo, state((s, endpoints(s, *topo.endpoint_ips))))
    r = topo.probe("tcp", "10.96.0.10", "80", "1000")
    counts = r["ok"]
    assert isinstance(counts, dict)
    assert r["fail"] == 0 and sum(counts.values()) == 1000 and len(counts) == 4
    chi2 = sum((n - 250) ** 2 / 250 for n in counts.values())
    assert chi2 < CHI2_DF3_P001, f"shares not equal: {counts} (chi2={chi2:.1f})"


def test_node_port_and_output_path(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2)
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    sync(mode, topo, state((s, endpoints(s, *topo.endpoint_ips))))
    r = topo.probe("tcp", "192.168.100.1", "30080", "20")
    assert r["fail"] == 0
    assert r["peers"] == {"10.244.1.1": 20}  # externalTrafficPolicy Cluster: masqueraded
    r = topo.probe("tcp", "10.96.0.10", "80", "10", ns=topo.node)  # from the node itself (output hook)
    assert r["fail"] == 0
    r = topo.probe("tcp", "127.0.0.1", "30080", "1", "1", ns=topo.node)  # localhost NodePorts are off
    assert r["fail"] == 1


def test_external_traffic_policy_local(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2, two_nodes=True)
    assert topo.node2 is not None
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080, etp="Local")
    st = state((s, endpoints(s, *topo.endpoint_ips, node="node1")))
    sync(mode, topo, st)
    c2 = config(node_name="node2")
    make_proxier(mode, topo.node2, c2).sync(build_plans(st, c2), None)
    r = topo.probe("tcp", "192.168.100.1", "30080", "20")
    assert r["fail"] == 0 and r["peers"] == {"192.168.100.2": 20}  # the server sees the client's address
    start = time.monotonic()
    r = topo.probe("tcp", "192.168.101.1", "30080", "2", "0.5")  # node2 has no local endpoint: dropped
    assert r["fail"] == 2 and r["errors"] == {"TimeoutError": 2}
    assert time.monotonic() - start < 10


def test_client_ip_affinity_sticks(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(3)
    s = service("web", "10.96.0.10", affinity=60)
    sync(mode, topo, state((s, endpoints(s, *topo.endpoint_ips))))
    r = topo.probe("tcp", "10.96.0.10", "80", "60")
    counts = r["ok"]
    assert isinstance(counts, dict)
    assert r["fail"] == 0 and len(counts) == 1, counts
    if mode == "nftables":  # the endpoint is remembered with the service's timeout
        (ep,) = counts
        assert _affinity_entries(topo.node) == {("192.168.100.2", "10.96.0.10 . 80"): topo.endpoint_ips[int(ep[2:])]}


def _affinity_entries(node: Netns) -> dict[tuple[str, str], str]:
    """(client, service address . port) -> endpoint address, from the nftables back end's affinity map."""
    from cnipy.proxy.nftables.runner import Nft
    entries = Nft(prefix=("ip", "netns", "exec", node.name)).list_map("affinity-tcp")
    assert entries is not None
    assert all(e.timeout == 60 and e.expires is not None and 0 < e.expires <= 60 for e in entries), entries
    return {(e.key.split(" . ", 1)[0], e.key.split(" . ", 1)[1]): e.value.split(" . ")[0] for e in entries}


def _second_client(topo: Topology, make: Callable[[], Netns]) -> Netns:
    """Another client namespace on its own link to the node: 192.168.102.2."""
    client = make()
    c, n = _veth(client, topo.node)
    client.run("ip", "addr", "add", "192.168.102.2/24", "dev", c)
    client.run("ip", "route", "add", "default", "via", "192.168.102.1")
    topo.node.run("ip", "addr", "add", "192.168.102.1/24", "dev", n)
    return client


def _one_endpoint(topo: Topology, client: Netns, host: str, port: str, count: int = 25) -> str:
    r = topo.probe("tcp", host, port, str(count), ns=client)
    counts = r["ok"]
    assert isinstance(counts, dict)
    assert r["fail"] == 0 and len(counts) == 1 and sum(counts.values()) == count, r
    (ep,) = counts
    return str(ep)


def test_client_ip_affinity_is_per_endpoint(mode: str, topo_factory: Callable[..., Topology],
                                           netns_factory: Callable[[], Netns]) -> None:
    """Clients stay on their endpoint while endpoints come (slots shift: ep0..ep3 sort before the first
    two), move only when theirs goes (without a failed connection), and stay through a full resync and a
    restarted proxy. Two clients, each on its own, and a NodePort (keyed by node address) too."""
    topo = topo_factory(6)
    ips = topo.endpoint_ips
    other = _second_client(topo, netns_factory)
    clients = {"a": topo.client, "b": other}
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080, affinity=60)
    c = config()
    p = sync(mode, topo, state((s, endpoints(s, ips[4], ips[5]))))
    targets = [("a", "10.96.0.10", "80"), ("b", "10.96.0.10", "80"), ("a", "192.168.100.1", "30080")]
    chosen = {t: _one_endpoint(topo, clients[t[0]], t[1], t[2]) for t in targets}
    assert set(chosen.values()) <= {"ep4", "ep5"}

    p.sync(build_plans(state((s, endpoints(s, *ips))), c), {s.key})  # ep0..ep3 take slots 0..3
    assert {t: _one_endpoint(topo, clients[t[0]], t[1], t[2]) for t in targets} == chosen

    gone = chosen[targets[0]]  # client a's endpoint leaves, and its server with it
    topo.servers[int(gone[2:])].kill()
    left = [ip for i, ip in enumerate(ips) if f"ep{i}" != gone]
    plans = build_plans(state((s, endpoints(s, *left))), c)
    p.sync(plans, {s.key})
    moved = {t: _one_endpoint(topo, clients[t[0]], t[1], t[2]) for t in targets}
    assert gone not in moved.values()
    assert all(moved[t] == chosen[t] for t in targets if chosen[t] != gone), (chosen, moved)

    p.sync(plans, None)  # a full resync replaces the rules
    assert {t: _one_endpoint(topo, clients[t[0]], t[1], t[2]) for t in targets} == moved
    make_proxier(mode, topo.node, c).sync(plans, None)  # a restarted proxy
    assert {t: _one_endpoint(topo, clients[t[0]], t[1], t[2]) for t in targets} == moved
    if mode == "nftables":
        want = {("192.168.100.2", "10.96.0.10 . 80"), ("192.168.102.2", "10.96.0.10 . 80"),
                ("192.168.100.2", "192.168.100.1 . 30080")}
        entries = _affinity_entries(topo.node)
        assert set(entries) == want, entries
        assert ips[int(gone[2:])] not in entries.values()


def test_nftables_affinity_entries_of_a_port_shared_with_a_node_port(topo_factory: Callable[..., Topology]) -> None:
    """A cluster IP port equal to an affinity NodePort gets recorded too (nothing tells them apart after DNAT);
    when that service gains affinity, entries that do not point to its endpoints are dropped first."""
    from tests.conftest import need
    need("nft")
    topo = topo_factory(3)
    ep0, ep1, ep2 = topo.endpoint_ips
    x = service("x", "10.96.0.20", 30080)
    y = service("y", "10.96.0.21", type="NodePort", node_port=30080, affinity=60)
    z = service("z", "10.96.0.22")
    p = sync("nftables", topo, state((x, endpoints(x, ep0)), (y, endpoints(y, ep1)), (z, endpoints(z, ep0))))
    assert _one_endpoint(topo, topo.client, "10.96.0.20", "30080", 3) == "ep0"
    assert _one_endpoint(topo, topo.client, "10.96.0.22", "80", 3) == "ep0"
    assert _one_endpoint(topo, topo.client, "192.168.100.1", "30080", 3) == "ep1"
    assert _affinity_entries(topo.node) == {("192.168.100.2", "192.168.100.1 . 30080"): ep1,
                                            ("192.168.100.2", "10.96.0.20 . 30080"): ep0}
    topo.servers[0].kill()  # x moves to ep1 and ep2 and gains affinity: its old entry must not be used
    sticky_x = dataclasses.replace(x, affinity_timeout=60)
    p.sync(build_plans(state((sticky_x, endpoints(x, ep1, ep2)), (y, endpoints(y, ep1))), config()), {x.key, z.key})
    assert _one_endpoint(topo, topo.client, "10.96.0.20", "30080", 10) in ("ep1", "ep2")


def test_service_without_endpoints_rejects_at_once(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    s = service("empty", "10.96.0.14", type="NodePort", node_port=30083)
    sync(mode, topo, state((s, None)))
    start = time.monotonic()
    r = topo.probe("tcp", "10.96.0.14", "80", "3", "5")
    assert r["errors"] == {"ConnectionRefusedError": 3}
    r = topo.probe("tcp", "192.168.100.1", "30083", "3", "5")
    assert r["errors"] == {"ConnectionRefusedError": 3}
    assert time.monotonic() - start < 4  # refused, not timed out


def test_hairpin(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    s = service("web", "10.96.0.10")
    sync(mode, topo, state((s, endpoints(s, topo.endpoint_ips[0]))))
    r = topo.probe("tcp", "10.96.0.10", "80", "5", ns=topo.endpoints[0])  # the endpoint reaches itself
    assert r["fail"] == 0 and r["ok"] == {"ep0": 5}
    assert r["peers"] == {"10.244.1.1": 5}  # masqueraded, so the reply comes back through the node


def test_internal_traffic_policy_local_and_lb_source_ranges(mode: str,
                                                           topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2)
    ips = topo.endpoint_ips
    itp = service("itp", "10.96.0.15", itp="Local")
    lb = service("lb", "10.96.0.12", type="LoadBalancer", node_port=30081, lb_ips=("192.0.2.12",),
                 source_ranges=("198.51.100.0/24",))
    ext = service("ext", "10.96.0.16", external_ips=("192.0.2.16",))
    st = state((itp, endpoints(itp, ips[0], ips[1], nodes={ips[1]: "node2"})),
               (lb, endpoints(lb, *ips)), (ext, endpoints(ext, ips[1])))
    sync(mode, topo, st)
    r = topo.probe("tcp", "10.96.0.15", "80", "20")
    assert r["ok"] == {"ep0": 20}  # only the endpoint on this node
    r = topo.probe("tcp", "192.0.2.12", "80", "2", "0.5")  # client is outside the source ranges
    assert r["fail"] == 2
    r = topo.probe("tcp", "192.0.2.16", "80", "5")  # external IP
    assert r["ok"] == {"ep1": 5}


def test_iptables_legacy_back_end(topo_factory: Callable[..., Topology]) -> None:
    from tests.conftest import need
    need("iptables-legacy-restore")
    topo = topo_factory(2)
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    p = sync("iptables-legacy", topo, state((s, endpoints(s, *topo.endpoint_ips))))
    r = topo.probe("tcp", "10.96.0.10", "80", "20")
    assert r["fail"] == 0 and len(r["ok"]) == 2  # type: ignore[arg-type]
    p.cleanup()
    assert "KUBE-" not in topo.node.run("iptables-legacy-save").stdout


def test_udp_stale_conntrack_blackholes_without_cleanup(mode: str, topo_factory: Callable[..., Topology]) -> None:
    """The control for the daemon's UDP test: change endpoints without deleting conntrack entries and a
    client that keeps its source port keeps going to the dead endpoint."""
    topo = topo_factory(2)
    ep0, ep1 = topo.endpoint_ips
    s = service("dns", "10.96.0.53", 53, protocol="UDP", target=8080)
    p = sync(mode, topo, state((s, endpoints(s, ep0))))
    assert topo.probe("udp", "10.96.0.53", "53", "1", "40000", "0.5")["ok"] == {"ep0": 1}
    topo.servers[0].kill()
    c = config()
    p.sync(build_plans(state((s, endpoints(s, ep1))), c), {s.key})
    r = topo.probe("udp", "10.96.0.53", "53", "3", "40000", "0.3")
    assert r["ok"] == {} and r["fail"] == 3
    topo.node.run("conntrack", "-D", "-p", "udp", "--reply-src", ep0, check=False)
    assert topo.probe("udp", "10.96.0.53", "53", "1", "40000", "0.5")["ok"] == {"ep1": 1}


def _without_comments(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))


def test_failed_apply_leaves_previous_rules(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2)
    ep0, ep1 = topo.endpoint_ips
    s = service("web", "10.96.0.10")
    p = sync(mode, topo, state((s, endpoints(s, ep0))))
    dump = ["nft", "list", "ruleset"] if mode == "nftables" else ["iptables-save"]
    before = topo.node.run(*dump).stdout
    # Break the next load the way a kernel or tool refusal would: one bad line inside the transaction.
    runner: Any = p.nft if mode == "nftables" else p.ipt  # type: ignore[attr-defined]
    attr = "run_lines" if mode == "nftables" else "restore"
    real = getattr(runner, attr)

    def broken(text: Any) -> None:
        if mode == "nftables":
            real([*text, "add rule ip cnipy services bogus\n"])
        else:
            real(text.replace("COMMIT", "-A KUBE-SERVICES --bogus\nCOMMIT", 1))

    setattr(runner, attr, broken)
    with pytest.raises(ApplyError):
        p.sync(build_plans(state((s, endpoints(s, ep1))), config()), {s.key})
    assert _without_comments(topo.node.run(*dump).stdout) == _without_comments(before)
    assert topo.probe("tcp", "10.96.0.10", "80", "5")["ok"] == {"ep0": 5}
    setattr(runner, attr, real)
    p.sync(build_plans(state((s, endpoints(s, ep1))), config()), None)  # the retry
    assert topo.probe("tcp", "10.96.0.10", "80", "5")["ok"] == {"ep1": 5}


def test_localhost_node_ports_when_enabled(mode: str, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    topo.node.run("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")  # what the daemon does for this flag
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    sync(mode, topo, state((s, endpoints(s, *topo.endpoint_ips))), localhost_nodeports=True)
    r = topo.probe("tcp", "127.0.0.1", "30080", "5", ns=topo.node)
    assert r["fail"] == 0 and r["peers"] == {"10.244.1.1": 5}  # masqueraded: 127/8 may not leave the node


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy"])
def test_iptables_full_resync_and_restart_keep_one_jump_each(variant: str, netns_factory: Callable[[], Any]) -> None:
    node = netns_factory()
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080)
    c = config()
    plans = build_plans(state((s, endpoints(s, "10.244.1.2"))), c)
    make_proxier(variant, node, c).sync(plans, None)
    again = make_proxier(variant, node, c)  # a restarted proxy: learns what exists from iptables-save
    again.sync(plans, None)
    again.sync(plans, None)
    assert not again.needs_repair()
    save = node.run("iptables-legacy-save" if variant == "iptables-legacy" else "iptables-save").stdout
    jumps = [ln for ln in save.splitlines() if ln.startswith("-A ") and ln.split()[1] in
             ("PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", "FORWARD")]
    assert len(jumps) == len(set(jumps)) == 14, jumps
    assert ":KUBE-PROXY-CANARY" in save


def _normalized(text: str) -> list[str]:
    # Element order and line wrapping of `nft list` depend on insertion history; compare the content.
    body = text.replace("\n", " ").replace("\t", " ")
    # A rule added later against a per-protocol map reads back as "tcp dport" (nft adds the protocol
    # dependency, which the map's protocol implies anyway), one loaded with its map as "th dport".
    for proto in ("tcp", "udp", "sctp"):
        body = body.replace(f" {proto} dport", " th dport")
    for sep in ("{", "}", ","):
        body = body.replace(sep, "\n")
    return sorted(" ".join(part.split()) for part in body.splitlines() if part.strip())


@pytest.mark.parametrize("kernel", ["nftables", "iptables", "iptables-legacy"])
def test_real_kernel_accepts_random_partial_syncs(kernel: str, netns_factory: Callable[[], Any]) -> None:
    """The fakes' semantics hold for the real tools: 30 random partial syncs apply, and end where a fresh full
    sync of the final state does."""
    import random

    from cnipy.proxy.plan import changed_services
    from tests.unit.proxy.scenarios import feature_state
    from tests.unit.proxy.test_nftables import _mutate

    a, b = netns_factory(), netns_factory()
    c = config()
    rng = random.Random(7)
    st = feature_state()
    p = make_proxier(kernel, a, c)
    p.sync(build_plans(st, c), None)
    for _ in range(30):
        new = _mutate(st, rng)
        p.sync(build_plans(new, c), changed_services(st, new))
        st = new
    make_proxier(kernel, b, c).sync(build_plans(st, c), None)
    dump = ["nft", "list", "ruleset"] if kernel == "nftables" else \
        ["iptables-legacy-save" if kernel == "iptables-legacy" else "iptables-save"]
    got, want = (_normalized(_without_comments(ns.run(*dump).stdout)) for ns in (a, b))
    if kernel != "nftables":  # counters differ; rule order within a chain does not
        got, want = ([ln for ln in x if not ln.startswith(":")] for x in (got, want))
    assert got == want


def test_iptables_nft_restore_that_lists_first_loads_a_fresh_namespace(topo_factory: Callable[..., Topology],
                                                                       netns_factory: Callable[[], Any]) -> None:
    """A cold sync of 300 services names enough chains for the "-S" that spares iptables-nft its quadratic
    chain list; in a namespace without a nat table yet, the jumps from the built-in chains must still be
    created (they come before the "-S"), and the rules are those loaded without the "-S"."""
    from cnipy.proxy.iptables.backend import IptablesProxier
    from cnipy.proxy.iptables.runner import Iptables
    from tests.unit.proxy.builders import scale_state

    topo = topo_factory(2)
    s = service("web", "10.95.0.1")
    big = scale_state(300, 1)
    st = ClusterState(services={**big.services, s.key: s},
                      slices={**big.slices, s.key: (endpoints(s, *topo.endpoint_ips),)})
    c = config()
    texts: list[str] = []
    ipt = Iptables("nft", prefix=("ip", "netns", "exec", topo.node.name))
    real = ipt.restore_lines

    def restore_lines(chunks: Iterable[str]) -> None:
        texts.append("".join(chunks))
        real(texts[-1:])
    ipt.restore_lines = restore_lines  # type: ignore[method-assign]
    IptablesProxier(ipt, c).sync(build_plans(st, c), None)
    assert "-S" in texts[0].splitlines()
    r = topo.probe("tcp", "10.95.0.1", "80", "40")
    assert r["fail"] == 0 and len(r["ok"]) == 2  # type: ignore[arg-type]
    plain = netns_factory()
    reference = Iptables("nft", prefix=("ip", "netns", "exec", plain.name))
    reference.quadratic_chain_names = False
    IptablesProxier(reference, c).sync(build_plans(st, c), None)
    got, want = (sorted(ln for ln in ns.run("iptables-save").stdout.splitlines() if not ln.startswith(("#", ":")))
                 for ns in (topo.node, plain))
    assert got == want


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy"])
def test_streamed_full_sync_that_fails_commits_nothing(variant: str, netns_factory: Callable[[], Any]) -> None:
    """A full sync streams its text into iptables-restore while rendering: a line the tool refuses, or an
    error of ours half-way (the tool is killed before it reads an end of file), leaves the rules as they were."""
    node = netns_factory()
    c = config()
    a, b = service("a", "10.96.0.10"), service("b", "10.96.0.11")
    p: Any = make_proxier(variant, node, c)
    p.sync(build_plans(state((a, endpoints(a, "10.244.1.2"))), c), None)
    dump = "iptables-legacy-save" if variant == "iptables-legacy" else "iptables-save"
    before = _without_comments(node.run(dump).stdout)
    real = p.ipt.restore_lines

    def refused(chunks: Iterable[str]) -> None:
        real(chunk.replace("COMMIT", "-A KUBE-SERVICES --bogus\nCOMMIT", 1) for chunk in chunks)

    def ours_fails(chunks: Iterable[str]) -> None:
        def half() -> Iterable[str]:
            for i, chunk in enumerate(chunks):
                if i == 250:  # 300 services: some 64 kB of the nat table already written
                    raise RuntimeError("rendering failed")
                yield chunk
        real(half())

    from tests.unit.proxy.builders import scale_state

    big = scale_state(300, 2)
    new = build_plans(ClusterState(services={**big.services, a.key: a, b.key: b},
                                   slices={**big.slices, a.key: (endpoints(a, "10.244.1.3"),),
                                           b.key: (endpoints(b, "10.244.1.4"),)}), c)
    for broken, error in ((refused, ApplyError), (ours_fails, RuntimeError)):
        p.ipt.restore_lines = broken
        with pytest.raises(error):
            p.sync(new, None)
        assert _without_comments(node.run(dump).stdout) == before
    p.ipt.restore_lines = real
    p.sync(new, None)
    assert "10.244.1.4:8080" in node.run(dump).stdout


@pytest.mark.parametrize("variant", ["iptables", "iptables-legacy"])
def test_iptables_resync_restores_a_deleted_jump_and_canary(variant: str, netns_factory: Callable[[], Any]) -> None:
    """A resync of a running proxy reads only the built-in chains (iptables -S each) and the canary, not the whole
    rule set: what it reads must be in the format it compares with, so a deleted jump comes back once."""
    node = netns_factory()
    c = config()
    s = service("web", "10.96.0.10")
    plans = build_plans(state((s, endpoints(s, "10.244.1.2"))), c)
    p = make_proxier(variant, node, c)
    p.sync(plans, None)
    ipt = "iptables-legacy" if variant == "iptables-legacy" else "iptables"
    node.run(ipt, "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
             "-j", "KUBE-SERVICES")
    node.run(ipt, "-t", "mangle", "-X", "KUBE-PROXY-CANARY")
    assert p.needs_repair()
    p.sync(plans, None)
    assert not p.needs_repair()
    save = node.run(f"{ipt}-save").stdout
    jumps = [ln for ln in save.splitlines() if ln.startswith(("-A PREROUTING", "-A OUTPUT", "-A POSTROUTING",
                                                              "-A INPUT", "-A FORWARD"))]
    assert len(jumps) == len(set(jumps)) == 14, jumps
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in jumps

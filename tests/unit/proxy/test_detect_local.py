"""--detect-local-mode: how pod ("local") traffic is told from the rest, in both back ends and both families.

Goldens through the fakes (which refuse what nft and iptables refuse, e.g. interface names over 15 characters),
the NodeConfig checks, and the command's options. The data path: tests/netns/proxy/test_detect_local.py.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import pytest
from click.testing import CliRunner

from cnipy.proxy.command import _config, proxy_command
from cnipy.proxy.errors import FakeApplyError
from cnipy.proxy.iptables.backend import IptablesProxier
from cnipy.proxy.iptables.runner import FakeIptables
from cnipy.proxy.model import ClusterState
from cnipy.proxy.nftables.backend import NftablesProxier
from cnipy.proxy.nftables.render import family_of
from cnipy.proxy.nftables.runner import FakeNft
from cnipy.proxy.plan import AnyNodeConfig, NodeConfig, build_plans
from tests.unit.proxy.builders import endpoints, service, state
from tests.unit.proxy.goldens import check_golden

CLUSTER = {4: IPv4Network("10.244.0.0/16"), 6: IPv6Network("fd00:244::/48")}
NODE = {4: IPv4Network("10.244.1.0/24"), 6: IPv6Network("fd00:244:1::/64")}
MODES: dict[str, dict[str, Any]] = {
    "NodeCIDR": {},  # node_cidrs: NODE of the family
    "BridgeInterface": {"pod_interface": "cni0"},
    "InterfaceNamePrefix": {"pod_interface": "veth"},
}


def cfg_of(mode: str, family: int, **kw: Any) -> AnyNodeConfig:
    extra = {"node_cidrs": (NODE[family],)} if mode == "NodeCIDR" else {}
    return NodeConfig("node1", cluster_cidrs=(CLUSTER[family],), ip_family=family, detect_local=mode,  # type: ignore[misc]
                      **{**extra, **MODES.get(mode, {}), **kw})


def local_state(family: int) -> ClusterState:
    """A ClusterIP service (masquerade of non-local traffic), an externalTrafficPolicy Local NodePort with a local
    endpoint (local traffic reaches every endpoint) and one without (drop of external traffic, not of local)."""
    web = service("web", "10.96.0.10" if family == 4 else "fd00:96::10")
    etp = service("etp", "10.96.0.11" if family == 4 else "fd00:96::11", type="NodePort", node_port=30081,
                  etp="Local")
    remote = service("remote", "10.96.0.12" if family == 4 else "fd00:96::12", type="NodePort", node_port=30082,
                     etp="Local")
    ep = {4: ("10.244.1.2", "10.244.2.2", "10.244.2.3"), 6: ("fd00:244:1::2", "fd00:244:2::2", "fd00:244:2::3")}
    local, far, far2 = ep[family]
    return state((web, endpoints(web, local)),
                 (etp, endpoints(etp, local, far, nodes={far: "node2"})),
                 (remote, endpoints(remote, far2, node="node2")))


def nft_synced(cfg: AnyNodeConfig, st: ClusterState) -> FakeNft:
    fake = FakeNft(family_of(cfg).table_family)
    NftablesProxier(fake, cfg).sync(build_plans(st, cfg), None)
    return fake


def ipt_synced(cfg: AnyNodeConfig, st: ClusterState) -> FakeIptables:
    fake = FakeIptables(family=cfg.ip_family)
    IptablesProxier(fake, cfg).sync(build_plans(st, cfg), None)
    return fake


def nft_local_chains(fake: FakeNft) -> str:
    """The chains that match local traffic (dispatch chains, drop-external): other engineers' chains stay out."""
    out, keep = [], False
    for line in fake.dump().splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            keep = bool(re.match(r"  chain ((ip|np)-\S+|drop-external)\b", line))
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_golden_nftables(mode: str, family: int) -> None:
    text = nft_local_chains(nft_synced(cfg_of(mode, family), local_state(family)))
    check_golden(f"nftables_detect_local_{mode}_v{family}.txt", text)
    assert str(CLUSTER[family]) not in text  # the cluster CIDR no longer tells local traffic


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_golden_iptables(mode: str, family: int) -> None:
    text = ipt_synced(cfg_of(mode, family), local_state(family)).dump()
    check_golden(f"iptables_detect_local_{mode}_v{family}.txt", text)
    assert str(CLUSTER[family]) not in text


@pytest.mark.parametrize("family", [4, 6])
def test_each_mode_matches_its_own_way(family: int) -> None:
    st = local_state(family)
    ip = "ip" if family == 4 else "ip6"
    expect_nft = {"ClusterCIDR": (f"{ip} saddr != {CLUSTER[family]}", f"{ip} saddr {CLUSTER[family]}"),
                  "NodeCIDR": (f"{ip} saddr != {NODE[family]}", f"{ip} saddr {NODE[family]}"),
                  "BridgeInterface": ('iifname != "cni0"', 'iifname "cni0"'),
                  "InterfaceNamePrefix": ('iifname != "veth*"', 'iifname "veth*"')}
    expect_ipt = {"ClusterCIDR": (f"'!' -s {CLUSTER[family]}", f"-s {CLUSTER[family]}"),  # the dump quotes "!"
                  "NodeCIDR": (f"'!' -s {NODE[family]}", f"-s {NODE[family]}"),
                  "BridgeInterface": ("'!' -i cni0", "-i cni0"),
                  "InterfaceNamePrefix": ("'!' -i veth+", "-i veth+")}
    for mode, (not_local, local) in expect_nft.items():
        fake = nft_synced(cfg_of(mode, family), st)
        masq = [r for r in fake.list_rules("ip-tcp-c-1") or [] if "meta mark set" in r]
        assert masq == [f"{not_local} meta mark set meta mark | 0x4000"], (mode, masq)
        assert (fake.list_rules("drop-external") or [])[0] == f"{local} return", mode
        etp = fake.list_rules("np-tcp-l-1-2") or []
        assert etp[0].startswith(f"{local} dnat {ip} to"), (mode, etp)
    for mode, (not_local, local) in expect_ipt.items():
        text = ipt_synced(cfg_of(mode, family), st).dump()
        assert f"{not_local} -j KUBE-MARK-MASQ" in text, mode
        assert re.search(f"'pod traffic for default/etp external destinations' {re.escape(local)} -j KUBE-SVC-",
                         text), mode


def test_without_a_cluster_cidr_cluster_cidr_mode_tells_nothing_apart() -> None:
    # As before (and as kube-proxy's no-op detector): nothing is masqueraded for its source, no pod shortcut.
    cfg = NodeConfig("node1")
    fake = nft_synced(cfg, local_state(4))
    assert [r for r in fake.list_rules("ip-tcp-c-1") or [] if "mark" in r] == []
    assert fake.list_rules("drop-external") == ["fib saddr type local return", "drop"]
    assert "pod traffic" not in ipt_synced(cfg, local_state(4)).dump()


def test_a_15_character_prefix_matches_the_name_itself() -> None:
    # Both tools refuse a 16-character wildcard ("...*", "...+"); no longer name than 15 exists anyway.
    prefix = "abcdefghijklmno"
    for family in (4, 6):
        cfg = cfg_of("InterfaceNamePrefix", family, pod_interface=prefix)
        assert cfg.local_interface == (prefix, False)
        nft = nft_synced(cfg, local_state(family))
        assert (nft.list_rules("drop-external") or [])[0] == f'iifname "{prefix}" return'
        assert f"'!' -i {prefix} -j KUBE-MARK-MASQ" in ipt_synced(cfg, local_state(family)).dump()
    assert cfg_of("InterfaceNamePrefix", 4, pod_interface=prefix[:-1]).local_interface == (prefix[:-1], True)
    assert cfg_of("BridgeInterface", 4, pod_interface=prefix).local_interface == (prefix, False)


def test_the_fakes_refuse_interface_names_over_15_characters_as_the_tools_do() -> None:
    # The fakes must keep the tools' limit, or a renderer writing "abcdefghijklmno+" would pass here only.
    ipt = FakeIptables()
    ipt.restore("*nat\n:X - [0:0]\n-A X -i abcdefghijklmn+ -j RETURN\n-A X ! -i abcdefghijklmno -j RETURN\nCOMMIT\n")
    with pytest.raises(FakeApplyError, match="must be shorter than IFNAMSIZ"):
        ipt.restore("*nat\n:X - [0:0]\n-A X -i abcdefghijklmno+ -j RETURN\nCOMMIT\n")
    from cnipy.proxy.nftables.transaction import Chain, Rule, Table, Transaction
    nft = FakeNft()
    ok = Transaction("ip", "cnipy")
    ok.add(Table())
    ok.add(Chain("c"))
    ok.add(Rule("c", 'iifname "abcdefghijklmn*" return'))
    nft.run(ok)
    bad = Transaction("ip", "cnipy")
    bad.add(Rule("c", 'iifname != "abcdefghijklmno*" return'))
    with pytest.raises(FakeApplyError, match="String exceeds maximum length of 16"):
        nft.run(bad)


def test_node_config_checks_the_mode_and_its_values() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"detect_local": "PodCIDR"}, "detect_local must be one of"),
        ({"detect_local": "NodeCIDR"}, "NodeCIDR needs node_cidrs"),
        ({"node_cidrs": (NODE[4],)}, "only it takes them"),
        ({"detect_local": "NodeCIDR", "node_cidrs": (NODE[6],)}, "node_cidrs of an IPv4 NodeConfig must be IPv4"),
        ({"detect_local": "BridgeInterface"}, "need pod_interface"),
        ({"pod_interface": "cni0"}, "only they take it"),
        ({"detect_local": "BridgeInterface", "pod_interface": "a" * 16}, "longer than 15 characters"),
        ({"detect_local": "InterfaceNamePrefix", "pod_interface": "veth+"}, "wildcards or quotes"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            NodeConfig("n1", **kw)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(proxy_command, ["--manifests", "/", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_the_command_refuses_missing_contradictory_or_invalid_options() -> None:
    cases = [
        (["--detect-local-mode", "PodCIDR"], "'PodCIDR' is not one of"),
        (["--detect-local-mode", "NodeCIDR"], "--detect-local-mode NodeCIDR needs --pod-cidr"),
        (["--detect-local-mode", "BridgeInterface"],
         "--detect-local-mode BridgeInterface needs --pod-bridge-interface"),
        (["--detect-local-mode", "InterfaceNamePrefix"],
         "--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix"),
        (["--pod-bridge-interface", "cni0"], "--pod-bridge-interface goes with --detect-local-mode BridgeInterface, "
                                             "not ClusterCIDR"),
        (["--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cni0",
          "--pod-interface-name-prefix", "veth"], "--pod-interface-name-prefix goes with --detect-local-mode "
                                                  "InterfaceNamePrefix, not BridgeInterface"),
        (["--pod-cidr", "10.244.1.0/24"], "--pod-cidr goes with --detect-local-mode NodeCIDR, not ClusterCIDR"),
        (["--detect-local-mode", "NodeCIDR", "--pod-cidr", "fd00:244:1::/64"],
         "--pod-cidr fd00:244:1::/64: this proxy serves IPv4 only"),
        (["--detect-local-mode", "NodeCIDR", "--ip-family", "dual", "--pod-cidr", "10.244.1.0/24"],
         "needs one --pod-cidr of each family served: 0 of IPv6"),
        (["--detect-local-mode", "NodeCIDR", "--pod-cidr", "10.244.1.0/24", "--pod-cidr", "10.244.2.0/24"],
         "needs one --pod-cidr of each family served: 2 of IPv4"),
        (["--detect-local-mode", "NodeCIDR", "--pod-cidr", "10.244.1.1/24"], "has host bits set"),
        (["--pod-bridge-interface", "a" * 16], "is longer than 15 characters"),
        (["--pod-bridge-interface", ""], "is empty"),
        (["--pod-bridge-interface", ".."], "Linux refuses '.' and '..'"),
        (["--pod-bridge-interface", "br/0"], "contains '/', which Linux refuses"),
        (["--pod-bridge-interface", "br 0"], "contains ' ', which Linux refuses"),
        (["--pod-interface-name-prefix", "veth+"], "wildcards or quotes"),
        (["--pod-interface-name-prefix", 'v"; drop'], "which Linux refuses"),
    ]
    for args, message in cases:
        code, out = _run(*args)
        assert code == 2 and message in out, (args, out)


def test_the_command_builds_the_config_of_each_family() -> None:
    ctx = proxy_command.make_context("proxy", ["--detect-local-mode", "NodeCIDR", "--ip-family", "dual",
                                               "--pod-cidr", "fd00:244:1::/64", "--pod-cidr", "10.244.1.0/24"])
    v4, v6 = _config(ctx.params, 4), _config(ctx.params, 6)
    assert (v4.detect_local, v4.local_cidrs, v4.local_interface) == ("NodeCIDR", (NODE[4],), None)
    assert (v6.detect_local, v6.local_cidrs) == ("NodeCIDR", (NODE[6],))
    ctx = proxy_command.make_context("proxy", ["--detect-local-mode", "InterfaceNamePrefix",
                                               "--pod-interface-name-prefix", "veth", "--cluster-cidr", "10.0.0.0/8"])
    cfg = _config(ctx.params, 4)
    assert (cfg.local_cidrs, cfg.local_interface) == ((), ("veth", True))
    ctx = proxy_command.make_context("proxy", ["--cluster-cidr", "10.0.0.0/8"])  # the default: as before
    cfg = _config(ctx.params, 4)
    assert (cfg.detect_local, cfg.local_cidrs, cfg.pod_interface) == ("ClusterCIDR", (IPv4Network("10.0.0.0/8"),), "")

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnipy.proxy.command import proxy_command


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(proxy_command, ["--help"])
    assert result.exit_code == 0
    for opt in ("--mode", "--manifests", "--kubeconfig", "--cluster-cidr", "--nodeport-address",
                "--localhost-nodeports", "--min-sync-period", "--full-sync-period", "--healthz-address"):
        assert opt in result.output


def test_needs_a_source() -> None:
    result = CliRunner().invoke(proxy_command, ["--mode", "nftables"])
    assert result.exit_code != 0 and "--manifests" in result.output


def test_importing_the_proxy_does_not_load_pyroute2() -> None:
    # pyroute2 (300+ ms to import) loads only when the first UDP conntrack cleanup runs.
    code = ("import sys, cnipy.proxy.command, cnipy.proxy.daemon, cnipy.proxy.nftables.backend, "
            "cnipy.proxy.iptables.backend, cnipy.proxy.kubeapi; print('pyroute2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(proxy_command, ["--manifests", "/", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_bad_options_are_refused_with_the_value_named() -> None:
    cases = [
        (["--cluster-cidr", "10.244.0.0/33"], "'10.244.0.0/33' is not a CIDR"),
        (["--cluster-cidr", "10.244.0.1/16"], "has host bits set"),
        (["--ip-family", "ipv4", "--cluster-cidr", "fd00::/64"], "--cluster-cidr fd00::/64 is not of --ip-family ipv4"),
        (["--ip-family", "ipv6", "--cluster-cidr", "10.244.0.0/16", "--cluster-cidr", "fd00::/64"],
         "--cluster-cidr 10.244.0.0/16 is not of --ip-family ipv6"),
        (["--cluster-cidr", "10.244.0.0/16", "--nodeport-address", "fd00::/64"],
         "--nodeport-address fd00::/64: this proxy serves IPv4 only"),
        (["--ip-family", "ipv6", "--nodeport-address", "192.168.0.0/24"],
         "--nodeport-address 192.168.0.0/24: this proxy serves IPv6 only"),
        (["--ip-family", "ipv6", "--localhost-nodeports"], "--localhost-nodeports is IPv4 only"),
        (["--cluster-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/16", "--service-cidr", "fd00:96::/112"],
         "--service-cidr fd00:96::/112: this proxy serves IPv4 only"),
        (["--ip-family", "ipv6", "--service-cidr", "10.96.0.0/16"], "--service-cidr 10.96.0.0/16: this proxy serves"),
        (["--service-cidr", "10.96.0.1/16"], "has host bits set"),
        (["--ip-family", "ipv5"], "'ipv5' is not one of"),
        (["--nodeport-address", "bogus"], "'bogus' is not a CIDR"),
        (["--healthz-address", "0.0.0.0:99999"], "port of 0-65535"),
        (["--metrics-address", "localhost:10249"], "'localhost:10249'"),
        (["--healthz-address", "10256"], "expected HOST:PORT"),
        (["--node-name", "Node_1"], "is not a Kubernetes node name"),
        (["--node-name", "../../etc"], "is not a Kubernetes node name"),
        (["--min-sync-period", "0"], "--min-sync-period"),
        (["--full-sync-period", "-5"], "--full-sync-period"),
    ]
    for args, message in cases:
        code, out = _run(*args)
        assert code == 2 and message in out, (args, out)


def test_missing_back_end_tool_is_a_clear_error(monkeypatch: object) -> None:
    import cnipy.proxy.command as cmd
    monkeypatch.setattr(cmd.shutil, "which", lambda name: None)  # type: ignore[attr-defined]
    code, out = _run("--mode", "iptables", "--iptables-backend", "legacy", "--node-name", "n1")
    assert code == 1 and "iptables-legacy-restore is not installed (needed by --mode iptables)" in out
    # IPv6 needs ip6tables-restore of the back end asked for, IPv4 alone does not
    monkeypatch.setattr(cmd.shutil, "which", lambda name: None if name.startswith("ip6") else name)  # type: ignore[attr-defined]
    code, out = _run("--mode", "iptables", "--ip-family", "dual", "--node-name", "n1")
    assert code == 1 and "ip6tables-nft-restore is not installed (needed by --mode iptables)" in out


def test_runtime_errors_become_messages_not_tracebacks(tmp_path: object) -> None:
    from pathlib import Path
    bad = Path(str(tmp_path)) / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    result = CliRunner().invoke(proxy_command, ["--kubeconfig", str(bad), "--node-name", "n1", "--once"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: ") and "kubeconfig" in result.output, result.output


def test_conntrack_liberal_follows_the_sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnipy.proxy import command
    sysctl = tmp_path / "nf_conntrack_tcp_be_liberal"
    monkeypatch.setattr(command, "Path", lambda _p: sysctl)
    assert command._conntrack_tcp_liberal() is False  # no conntrack sysctl: not liberal
    for text, liberal in (("0\n", False), ("1\n", True)):
        sysctl.write_text(text)
        assert command._conntrack_tcp_liberal() is liberal


def test_families_follow_the_cluster_cidrs_then_ip_family() -> None:
    from ipaddress import ip_network

    from cnipy.proxy.command import families
    v4, v6 = ip_network("10.244.0.0/16"), ip_network("fd00:244::/48")
    assert families(None, (), ()) == (4,)
    assert families(None, (v6,), ()) == (6,)
    assert families(None, (v6, v4), ()) == (4, 6)
    assert families("dual", (), ()) == (4, 6)
    assert families("dual", (v4,), (v6,)) == (4, 6)
    assert families("ipv6", (), ()) == (6,)
    assert families(None, (v4,), ()) == (4,)
    assert families(None, (v6, v4), ()) == (4, 6)
    assert families("ipv6", (), ()) == (6,)


def test_service_cidrs_go_to_the_config_of_their_family(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnipy.proxy.command as cmd
    made: list[object] = []

    class Stop(Exception):
        pass

    def fake_make(mode: str, configs: object, backend: str = "nft") -> None:
        made.extend(configs)  # type: ignore[call-overload]
        raise Stop

    monkeypatch.setattr(cmd.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(cmd, "make_proxier", fake_make)
    result = CliRunner().invoke(proxy_command, [
        "--manifests", "/", "--node-name", "n1", "--ip-family", "dual", "--service-cidr", "10.96.0.0/16",
        "--service-cidr", "fd00:96::/112", "--service-cidr", "10.97.0.0/16"])
    assert isinstance(result.exception, Stop), result.output
    assert [(c.ip_family, tuple(map(str, c.service_cidrs))) for c in made] == [  # type: ignore[attr-defined]
        (4, ("10.96.0.0/16", "10.97.0.0/16")), (6, ("fd00:96::/112",))]


def test_dual_stack_makes_one_nftables_proxier_per_family() -> None:
    from ipaddress import IPv6Network

    from cnipy.proxy.command import make_proxier
    from cnipy.proxy.dualstack import MetaProxier
    from cnipy.proxy.nftables.backend import NftablesProxier
    from cnipy.proxy.plan import NodeConfig
    v6 = NodeConfig("n1", cluster_cidrs=(IPv6Network("fd00::/64"),), ip_family=6)
    proxier = make_proxier("nftables", [NodeConfig("n1"), v6])
    assert isinstance(proxier, MetaProxier)
    tables = {f: (p.nft.family, p.nft.table) for f, p in proxier.proxiers.items()}  # type: ignore[attr-defined]
    assert tables == {4: ("ip", "cnipy"), 6: ("ip6", "cnipy")}
    single = make_proxier("nftables", v6)
    assert isinstance(single, NftablesProxier) and single.nft.family == "ip6"  # type: ignore[attr-defined]
    from cnipy.proxy.iptables.backend import IptablesProxier
    assert isinstance(make_proxier("iptables", v6), IptablesProxier)  # ip6tables: see test_iptables_ipv6


def test_cleanup_removes_the_tables_of_both_families(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnipy.proxy.command as cmd
    made: list[list[int]] = []

    class Cleaner:
        mode = "nftables"

        def cleanup(self) -> None:
            made[-1].append(0)

    def fake_make(mode: str, configs: object, backend: str = "nft") -> Cleaner:
        made.append([c.ip_family for c in configs])  # type: ignore[attr-defined]
        return Cleaner()

    monkeypatch.setattr(cmd.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(cmd, "make_proxier", fake_make)
    code, out = _run("--cleanup", "--node-name", "n1")  # no family options: IPv4 served, both cleaned
    assert code == 0, out
    assert made == [[4, 6, 0]]
    made.clear()
    code, out = _run("--cleanup", "--node-name", "n1", "--mode", "iptables")
    assert code == 0 and made == [[4, 6, 0]], out

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cnipy.cli.agent import agent_command


def test_help_names_the_modes() -> None:
    out = CliRunner().invoke(agent_command, ["--help"])
    assert out.exit_code == 0
    for option in ("--etcd", "--network-config", "--static-store", "--subnet-file", "--listen", "--release-on-exit",
                   "--remove-node", "--lease-ttl"):
        assert option in out.output


def test_remove_node_in_static_mode(tmp_path: Path) -> None:
    from cnipy.overlay import config as C
    from cnipy.overlay.etcd import FileEtcd
    from cnipy.overlay.leases import Lease, LeaseStore

    store = tmp_path / "leases.json"
    import ipaddress
    LeaseStore(FileEtcd(str(store))).acquire(C.default(), Lease(ipaddress.IPv4Network("0.0.0.0/32"), "gone",
                                                                ipaddress.ip_address("192.0.2.9"), "vxlan"))
    out = CliRunner().invoke(agent_command, ["--remove-node", "--node", "gone", "--static-store", str(store)])
    assert out.exit_code == 0 and "released 10.244." in out.output
    assert LeaseStore(FileEtcd(str(store))).snapshot()[0] == []


def test_bad_public_ip_is_a_usage_error() -> None:
    out = CliRunner().invoke(agent_command, ["--public-ip", "nope"])
    assert out.exit_code == 2 and "--public-ip" in out.output

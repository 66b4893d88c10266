from __future__ import annotations

import sys

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
    # pyroute2 is loaded only when UDP conntrack cleanup first runs.
    import cnipy.proxy.command  # noqa: F401
    import cnipy.proxy.daemon  # noqa: F401
    assert "pyroute2" not in sys.modules or "cnipy.netlink.conntrack" not in sys.modules

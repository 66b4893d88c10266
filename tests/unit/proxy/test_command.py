from __future__ import annotations

import subprocess
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
    # pyroute2 (300+ ms to import) loads only when the first UDP conntrack cleanup runs.
    code = ("import sys, cnipy.proxy.command, cnipy.proxy.daemon, cnipy.proxy.nftables.backend, "
            "cnipy.proxy.iptables.backend, cnipy.proxy.kubeapi; print('pyroute2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

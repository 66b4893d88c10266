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
        (["--cluster-cidr", "fd00::/64"], "IPv6 is not supported yet"),
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

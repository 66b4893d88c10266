"""Delegation to a plugin on CNI_PATH: in-process for cnipy's own, exec for others; errors passed through."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cnipy.cni import invoke
from cnipy.cni.errors import CniError, DelegateError, InvalidConfig
from cnipy.cni.request import Request, parse_request
from tests.support.cni import GO_CNI, PLUGINS, env, hostlocal_conf


def request(tmp_path: Path, path: str, ptype: str = "cnipy-host-local", **extra: str) -> Request:
    conf = hostlocal_conf(tmp_path / "data", ptype=ptype)
    return parse_request(env("ADD", CNI_PATH=path, **extra), json.dumps(conf).encode())


def script(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / "bin" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def test_own_plugin_runs_in_process_and_by_exec_alike(tmp_path: Path) -> None:
    assert invoke.own_plugin_name(PLUGINS / "cnipy-host-local") == "cnipy-host-local"
    req = request(tmp_path, str(PLUGINS))
    inproc = invoke.add("cnipy-host-local", req)
    req2 = request(tmp_path, str(PLUGINS), CNI_CONTAINERID="other", CNIPY_DELEGATE_EXEC="1")
    execd = invoke.add("cnipy-host-local", req2)
    assert [str(i.address) for i in inproc.ips] == ["10.77.0.2/24"]
    assert [str(i.address) for i in execd.ips] == ["10.77.0.3/24"]
    invoke.delete("cnipy-host-local", req)
    invoke.delete("cnipy-host-local", req2)
    assert sorted(p.name for p in (tmp_path / "data" / "cnhnet").iterdir()) == ["last_reserved_ip.0", "lock"]


def test_delegate_error_code_passed_through(tmp_path: Path) -> None:
    script(tmp_path, "failing", 'echo \'{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"later"}\'; exit 1\n')
    with pytest.raises(CniError) as info:
        invoke.add("failing", request(tmp_path, str(tmp_path / "bin")))
    assert (info.value.code, info.value.msg, info.value.details) == (11, "busy", "later")


@pytest.mark.parametrize("body", ["echo garbage; exit 3\n", 'echo \'{"code":0,"msg":"x"}\'; exit 1\n',
                                  "kill -9 $$\n"])
def test_broken_delegates_are_delegate_errors(tmp_path: Path, body: str) -> None:
    script(tmp_path, "broken", body)
    with pytest.raises(DelegateError):
        invoke.add("broken", request(tmp_path, str(tmp_path / "bin")))


def test_delegate_sees_our_env_and_stdin_and_its_stderr_reaches_ours(tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    script(tmp_path, "echoer", 'echo "delegate says hi to $CNI_CONTAINERID/$CNI_COMMAND" >&2\n'
                               'printf \'{"cniVersion":"1.0.0","ips":[{"address":"10.1.1.1/24"}]}\'\n')
    res = invoke.add("echoer", request(tmp_path, str(tmp_path / "bin")))
    assert str(res.ips[0].address) == "10.1.1.1/24"
    assert "delegate says hi to ctr1/ADD" in capfd.readouterr().err


def test_not_found_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="failed to find"):
        invoke.find("nope", (str(tmp_path),))
    for bad in ("../host-local", "a/b", ""):
        with pytest.raises(InvalidConfig):
            invoke.find(bad, (str(GO_CNI),))
    os.chmod(script(tmp_path, "noexec", "exit 0\n"), 0o644)
    with pytest.raises(InvalidConfig):
        invoke.find("noexec", (str(tmp_path / "bin"),))

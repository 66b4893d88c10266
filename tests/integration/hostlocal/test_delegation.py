"""Delegation to a foreign (Go) plugin found on CNI_PATH, by exec; its own errors pass through unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnipy.cni import invoke
from cnipy.cni.errors import CniError
from cnipy.cni.request import Request, parse_request
from tests.support.cni import GO_CNI, env, hostlocal_conf


def request(tmp_path: Path, path: str) -> Request:
    conf = hostlocal_conf(tmp_path / "data", ptype="host-local")
    return parse_request(env("ADD", CNI_PATH=path), json.dumps(conf).encode())


@pytest.mark.skipif(not (GO_CNI / "host-local").exists(), reason="reference plugins missing")
def test_foreign_plugin_by_exec(tmp_path: Path) -> None:
    req = request(tmp_path, f"/nonexistent:{GO_CNI}")
    res = invoke.add("host-local", req)
    assert [str(i.address) for i in res.ips] == ["10.77.0.2/24"]
    with pytest.raises(CniError) as info:  # the reference's own error, code passed through (999)
        invoke.add("host-local", req)
    assert info.value.code == 999 and "duplicate" in info.value.msg
    invoke.delete("host-local", req)

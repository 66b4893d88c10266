"""The protocol boundary (skel.execute): every version x every verb, negotiation, errors, the about text."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from cnipy.cni import Interface, Request, Result
from cnipy.cni import version as V
from cnipy.cni.errors import AddressExhausted
from cnipy.cni.skel import execute
from cnipy.plugins import hostlocal
from tests.support.cni import env, hostlocal_conf

VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")


class Recorder:
    """A plugin with every verb that records what it was asked; ADD chains onto prevResult."""

    ABOUT = "CNI recorder plugin"

    def __init__(self) -> None:
        self.calls: list[Request] = []

    def _record(self, req: Request) -> None:
        self.calls.append(req)

    def cmd_add(self, req: Request) -> Result:
        self._record(req)
        prev = req.config.prev_result or Result()
        return Result(req.config.cni_version, prev.interfaces + (Interface("eth9", "aa:bb:cc:dd:ee:ff", req.netns),),
                      prev.ips, prev.routes, prev.dns)

    cmd_del = cmd_check = cmd_gc = cmd_status = _record


def conf(version: str, **extra: Any) -> bytes:
    return json.dumps({"cniVersion": version, "name": "net", "type": "recorder", **extra}).encode()


def call(plugin: Any, verb: str, stdin: bytes, **env_extra: str) -> tuple[int, Any]:
    out = execute(plugin, env(verb, **env_extra), stdin)
    assert b"Traceback" not in out.stdout + out.stderr
    return out.exit_code, (json.loads(out.stdout) if out.stdout.strip() else None)


@pytest.mark.parametrize("version", V.SUPPORTED)
@pytest.mark.parametrize("verb", VERBS)
def test_every_version_every_verb(version: str, verb: str) -> None:
    plugin = Recorder()
    code, out = call(plugin, verb, conf(version))
    if verb == "VERSION":
        assert code == 0 and out == {"cniVersion": version, "supportedVersions": list(V.SUPPORTED)}
    elif V.at_least(version, V.VERB_SINCE[verb]):
        assert code == 0, out
        assert len(plugin.calls) == 1 and plugin.calls[0].command == verb
        if verb == "ADD":
            assert out["cniVersion"] == version
            key = "ip4" if V.parse(version) < (0, 3, 0) else "interfaces"
            assert key in out or V.parse(version) < (0, 3, 0)
        else:
            assert out is None
    else:
        assert code == 1 and out["code"] == 1 and plugin.calls == []
        assert verb in out["msg"]


@pytest.mark.parametrize("version", V.SUPPORTED)
def test_hostlocal_every_version(version: str, tmp_path: Path) -> None:
    """The real IPAM plugin across every version and verb it supports, in-process."""
    c = hostlocal_conf(tmp_path, version=version, routes=[{"dst": "0.0.0.0/0"}])
    c["cni.dev/valid-attachments"] = [{"containerID": "ctr1", "ifname": "eth0"}]
    stdin = json.dumps(c).encode()
    code, out = call(hostlocal, "ADD", stdin)
    assert code == 0, out
    if V.parse(version) < (0, 3, 0):
        assert out == {"cniVersion": version, "ip4": {"ip": "10.77.0.2/24", "gateway": "10.77.0.1",
                                                      "routes": [{"dst": "0.0.0.0/0"}]}, "dns": {}}
    else:
        ip = {"address": "10.77.0.2/24", "gateway": "10.77.0.1"}
        if V.parse(version) < (1, 0, 0):
            ip = {"version": "4", **ip}
        assert out == {"cniVersion": version, "ips": [ip], "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    for verb in ("CHECK", "GC", "STATUS"):
        code, out = call(hostlocal, verb, stdin)
        assert code == (0 if V.at_least(version, V.VERB_SINCE[verb]) else 1), (verb, out)
    assert (tmp_path / "cnhnet" / "10.77.0.2").read_bytes() == b"ctr1\r\neth0"  # GC kept the valid one
    assert call(hostlocal, "DEL", stdin) == (0, None)
    assert call(hostlocal, "DEL", stdin) == (0, None)
    assert not (tmp_path / "cnhnet" / "10.77.0.2").exists()


@pytest.mark.parametrize("bad", ["2.0.0", "0.5.0", "1.0", "abc", "1.0.0-rc1", "0.0.1"])
def test_unknown_versions_are_code_1(bad: str) -> None:
    for verb in ("ADD", "DEL"):
        code, out = call(Recorder(), verb, conf(bad))
        assert (code, out["code"]) == (1, 1)


def test_missing_version_means_0_1_0() -> None:
    plugin = Recorder()
    code, out = call(plugin, "ADD", json.dumps({"name": "n", "type": "t"}).encode())
    assert code == 0 and out["cniVersion"] == "0.1.0"


def test_cni_versions_negotiation() -> None:
    plugin = Recorder()
    stdin = json.dumps({"cniVersions": ["0.3.1", "1.0.0", "9.9.9"], "name": "n", "type": "t"}).encode()
    code, out = call(plugin, "ADD", stdin)
    assert code == 0 and out["cniVersion"] == "1.0.0"
    # An explicit cniVersion is what the runtime expects back: it wins.
    code, out = call(plugin, "ADD", conf("0.4.0", cniVersions=["1.0.0", "1.1.0"]))
    assert out["cniVersion"] == "0.4.0"
    code, out = call(plugin, "ADD", json.dumps({"cniVersions": ["9.0.0"], "name": "n", "type": "t"}).encode())
    assert (code, out["code"]) == (1, 1)
    code, out = call(plugin, "ADD", json.dumps({"cniVersions": "1.0.0", "name": "n", "type": "t"}).encode())
    assert out["code"] == 7


def test_prev_result_upgraded_and_chained() -> None:
    prev = {"cniVersion": "0.3.1", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"version": "4", "interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}], "dns": {"nameservers": ["10.0.0.10"]}}
    plugin = Recorder()
    code, out = call(plugin, "ADD", conf("1.0.0", prevResult=prev))
    assert code == 0
    assert out == {"cniVersion": "1.0.0",
                   "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"},
                                  {"name": "eth9", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/none"}],
                   "ips": [{"interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}], "dns": {"nameservers": ["10.0.0.10"]}}
    assert plugin.calls[0].config.prev_result is not None


def test_1_1_0_fields_kept_and_dropped_for_older_callers() -> None:
    prev: dict[str, Any] = {"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1400, "sandbox": "/n",
                            "socketPath": "/run/x.sock", "pciID": "0000:00:1f.6"}],
            "ips": [{"interface": 0, "address": "2001:db8::5/64"}],
            "routes": [{"dst": "10.0.0.0/8", "gw": "10.1.0.1", "mtu": 1300, "advmss": 1260, "priority": 5,
                        "table": 100, "scope": 0}],
            "dns": {}}
    code, out = call(Recorder(), "ADD", conf("1.1.0", prevResult=prev))
    assert out["interfaces"][0] == prev["interfaces"][0] and out["routes"] == prev["routes"]
    code, out = call(Recorder(), "ADD", conf("1.0.0", prevResult=prev))
    assert out["interfaces"][0] == {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/n"}
    assert out["routes"] == [{"dst": "10.0.0.0/8", "gw": "10.1.0.1"}]
    code, out = call(Recorder(), "ADD", conf("0.4.0", prevResult=prev))
    assert out["ips"] == [{"version": "6", "interface": 0, "address": "2001:db8::5/64"}]


def test_result_round_trips_through_every_version() -> None:
    res = Result("1.1.0", ips=(hostlocal_ip("10.2.0.9/16", "10.2.0.1"), hostlocal_ip("2001:db8::9/64", None)))
    for v in V.SUPPORTED:
        back = Result.from_json(json.loads(json.dumps(res.to_json(v))))
        assert back.cni_version == v
        assert [str(i.address) for i in back.ips] == ["10.2.0.9/16", "2001:db8::9/64"]
        assert back.ips[0].gateway == ipaddress.ip_address("10.2.0.1")


def hostlocal_ip(addr: str, gw: str | None) -> Any:
    from cnipy.cni.types import IPConfig

    return IPConfig(ipaddress.ip_interface(addr), ipaddress.ip_address(gw) if gw else None)


def test_ipam_result_answered_to_a_1_1_0_caller(tmp_path: Path) -> None:
    stdin = json.dumps(hostlocal_conf(tmp_path, version="1.1.0", ranges=[[{"subnet": "10.3.0.0/24"}],
                                                                          [{"subnet": "2001:db8::/64"}]],
                                      routes=[{"dst": "0.0.0.0/0", "gw": "10.3.0.1"}])).encode()
    code, out = call(hostlocal, "ADD", stdin)
    assert out == {"cniVersion": "1.1.0", "ips": [{"address": "10.3.0.2/24", "gateway": "10.3.0.1"},
                                                  {"address": "2001:db8::2/64", "gateway": "2001:db8::1"}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "10.3.0.1"}], "dns": {}}


def test_no_command_prints_the_about_text() -> None:
    out = execute(Recorder(), {"PATH": "/bin"}, b"")
    assert out.exit_code == 0 and out.stdout == b""
    assert out.stderr.decode().startswith("CNI recorder plugin v")
    assert "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in out.stderr.decode()


def test_version_without_stdin_and_with_an_unknown_version() -> None:
    assert call(Recorder(), "VERSION", b"")[1]["cniVersion"] == V.LATEST
    assert call(Recorder(), "VERSION", b'{"cniVersion":"7.0.0"}')[1]["cniVersion"] == V.LATEST
    assert call(Recorder(), "VERSION", b"{nope")[1]["code"] == 6


def test_plugin_errors_and_bugs_become_cni_errors() -> None:
    class Failing:
        ABOUT = "x"

        def cmd_add(self, req: Request) -> Result:
            raise AddressExhausted("pool empty", "10.0.0.0/24")

        def cmd_del(self, req: Request) -> None:
            raise KeyError("oops")

    code, out = call(Failing(), "ADD", conf("1.0.0"))
    assert (code, out) == (1, {"cniVersion": "1.0.0", "code": 101, "msg": "pool empty", "details": "10.0.0.0/24"})
    code, out = call(Failing(), "DEL", conf("0.4.0"))
    assert code == 1 and out["code"] == 100 and out["cniVersion"] == "0.4.0"
    code, out = call(Failing(), "CHECK", conf("1.0.0"))
    assert out["code"] == 2  # a verb the plugin lacks
    assert call(Failing(), "GC", conf("1.1.0")) == (0, None)  # GC and STATUS default to success


def test_environment_requirements_per_verb() -> None:
    stdin = conf("1.1.0")
    base = {"CNI_PATH": "/x"}
    assert execute(Recorder(), {**base, "CNI_COMMAND": "GC"}, stdin).exit_code == 0
    assert execute(Recorder(), {**base, "CNI_COMMAND": "STATUS"}, stdin).exit_code == 0
    out = execute(Recorder(), {**base, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}, stdin)
    assert out.exit_code == 0  # DEL without CNI_NETNS is allowed
    out = execute(Recorder(), {**base, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}, stdin)
    assert json.loads(out.stdout)["code"] == 4 and "CNI_NETNS" in json.loads(out.stdout)["msg"]

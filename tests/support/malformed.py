"""A corpus of malformed CNI requests and the error code each must get (shared by unit and integration tests).

Every case is run with a fresh temporary dataDir; the network configuration is a valid host-local one unless the
case breaks it. The expected code follows cnipy.cni.errors: 1 version, 4 environment, 6 undecodable JSON,
7 well-formed JSON with a bad value or type.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Conf = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    code: int
    command: str = "ADD"
    env: dict[str, str | None] = field(default_factory=dict)   # None removes the variable
    stdin: bytes | None = None                                  # raw bytes instead of the (edited) config
    edit: Callable[[Conf], None] | None = None


def _set(path: str, value: Any) -> Callable[[Conf], None]:
    def edit(conf: Conf) -> None:
        keys = path.split(".")
        node = conf
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return edit


def _update(values: Conf) -> Callable[[Conf], None]:
    def edit(conf: Conf) -> None:
        conf.update(values)
    return edit


def _delete(path: str) -> Callable[[Conf], None]:
    def edit(conf: Conf) -> None:
        keys = path.split(".")
        node = conf
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return edit


def _cases() -> list[Case]:
    c: list[Case] = []
    # -- undecodable input (6) ------------------------------------------------------------------------------------
    for i, raw in enumerate([b"", b"{", b"not json", b"[1, 2", b"\xff\xfe\x00", b"{\"cniVersion\": \"1.0.0\"}}",
                             b"[" * 200_000 + b"]" * 200_000, b"{\"a\": NaN}", b"{\"a\": Infinity}",
                             b"{'single': 'quotes'}", b"{\"a\": 1,}", b"\x00",
                             b"{\"name\": \"" + b"x" * (5 * 1024 * 1024) + b"\"}",
                             b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"prevResult\":[]}"]):
        c.append(Case(f"undecodable-{i}", 6, stdin=raw))
    for verb in ("DEL", "CHECK"):
        c.append(Case(f"undecodable-{verb}", 6, command=verb, stdin=b"{oops"))
    # A prevResult that is not a valid result of its version cannot be decoded (6).
    prev_results: list[Any] = [
        "x", {"cniVersion": "1.0.0", "dns": {"domain": 5}}, {"cniVersion": "0.2.0", "ip4": {"ip": "::1/64"}},
        {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/24", "gateway": 5}},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "gateway": 0}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/33"}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": 3}], "interfaces": [{"name": "a"}]},
        {"cniVersion": "1.0.0", "interfaces": [{"name": 5}]}, {"cniVersion": "1.0.0", "routes": [{"dst": "x"}]},
        {"cniVersion": "1.1.0", "routes": [{"dst": "0.0.0.0/0", "mtu": -1}]}, {"cniVersion": 1}]
    for i, prev in enumerate(prev_results):
        c.append(Case(f"prev-result-{i}", 6, command="DEL", edit=_update({"prevResult": prev})))
    # -- wrong shapes and types (7) -------------------------------------------------------------------------------
    for i, raw in enumerate([b"[]", b"null", b"42", b"\"string\"", b"true"]):
        c.append(Case(f"not-an-object-{i}", 7, stdin=raw))
    bad_values: list[tuple[str, Any]] = [
                        ("name", 5), ("name", None), ("name", ""), ("type", []), ("type", "../x"), ("ipam", "x"),
                        ("ipam", []), ("ipam.subnet", 5), ("ipam.subnet", "10.0.0.0"), ("ipam.subnet", "10.0.0.1/24"),
                        ("ipam.subnet", "10.0.0.0/31"), ("ipam.subnet", "300.0.0.0/24"), ("ipam.ranges", {}),
                        ("ipam.ranges", [{}]), ("ipam.ranges", [[{"subnet": "10.9.0.0/24", "rangeStart": "10.8.0.1"}]]),
                        ("ipam.rangeStart", "10.200.0.1"), ("ipam.gateway", 7), ("ipam.routes", "0.0.0.0/0"),
                        ("ipam.routes", [{"dst": "x"}]), ("ipam.routes", [{"gw": "10.0.0.1"}]), ("ipam.dataDir", 5),
                        ("ipam.dataDir", "relative/dir"), ("ipam.dataDir", "../../etc"),
                        ("ipam.dataDir", "/tmp/../../etc"), ("ipam.dataDir", "/tmp/./x"), ("ipam.resolvConf", 3),
                        ("ipam.resolvConf", "etc/resolv.conf"), ("runtimeConfig", []), ("runtimeConfig.ips", "x"),
                        ("runtimeConfig.ips", ["10.0.0.999"]), ("runtimeConfig.ipRanges", [[{"subnet": 1}]]),
                        ("args", "x"), ("args.cni", []), ("args.cni.ips", [None]), ("dns", "x"),
                        ("dns.nameservers", "x"),
                        ("cniVersion", 5), ("cniVersions", "1.0.0"), ("capabilities", 1), ("dns.domain", 5),
                        ("dns.search", [1]), ("dns", {"options": "x"}),
                        ("name", "../../etc"), ("name", "a/b"), ("name", ".."), ("name", "..hidden"),
                        ("name", "x" * 300), ("name", "net\nwork")]
    for path, value in bad_values:
        c.append(Case(f"bad-{path}={json.dumps(value)[:24]}", 7, edit=_set(path, value)))
    attachments: list[Any] = ["x", [{"containerID": 1}], [{"containerID": "c"}], [None]]
    for value in attachments:
        for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            c.append(Case(f"{key}={json.dumps(value)[:24]}", 7, command="GC",
                          edit=_update({key: value, "cniVersion": "1.1.0"})))
    c.append(Case("no-ipam", 7, edit=_delete("ipam")))
    c.append(Case("no-ranges", 7, edit=_delete("ipam.subnet")))
    c.append(Case("gc-without-attachments", 7, command="GC", edit=_set("cniVersion", "1.1.0")))
    # -- versions (1) ---------------------------------------------------------------------------------------------
    for v in ("2.0.0", "0.5.0", "1.0", "abc", "1.0.0.0", "v1.0.0", "99999.0.0"):
        c.append(Case(f"version-{v}", 1, edit=_set("cniVersion", v)))
    c.append(Case("check-at-0.3.1", 1, command="CHECK", edit=_set("cniVersion", "0.3.1")))
    c.append(Case("gc-at-1.0.0", 1, command="GC"))
    c.append(Case("status-at-0.4.0", 1, command="STATUS", edit=_set("cniVersion", "0.4.0")))
    c.append(Case("no-common-version", 1, edit=_update({"cniVersion": "", "cniVersions": ["9.9.9"]})))
    # -- environment (4) ------------------------------------------------------------------------------------------
    for var in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH"):
        c.append(Case(f"missing-{var}", 4, env={var: None}))
    c.append(Case("del-missing-ifname", 4, command="DEL", env={"CNI_IFNAME": None}))
    for verb in ("FOO", "add", "ADD ", "VERSIONS"):
        c.append(Case(f"command-{verb!r}", 4, command=verb))
    for cid in ("../../etc", "a/b", "..", ".x", "-x", "x y", "a..b", "ctr\n1", "x" * 2000, "ä"):
        c.append(Case(f"container-{cid[:20]!r}", 4, env={"CNI_CONTAINERID": cid}))
        c.append(Case(f"del-container-{cid[:20]!r}", 4, command="DEL", env={"CNI_CONTAINERID": cid}))
    for ifname in ("../x", "..", ".", "eth0/1", "a:b", "x" * 16, "e th0", "eth\t"):
        c.append(Case(f"ifname-{ifname!r}", 4, env={"CNI_IFNAME": ifname}))
    for netns in ("relative", "/var/run/../../etc", "/proc/./1/ns/net"):
        c.append(Case(f"netns-{netns!r}", 4, env={"CNI_NETNS": netns}))
    for args in ("novalue", "=x", "IP=10.0.0.5;broken"):
        c.append(Case(f"cni-args-{args!r}", 4, env={"CNI_ARGS": args}))
    for args in ("IP=10.0.0.300", "FOO=bar", "IgnoreUnknown=maybe", "IP=10.0.0.5/99"):  # host-local's own keys
        c.append(Case(f"hostlocal-args-{args!r}", 4, env={"CNI_ARGS": args}))
    return c


CASES = _cases()


def request_for(case: Case, base_env: dict[str, str], base_conf: Conf) -> tuple[dict[str, str], bytes]:
    env = dict(base_env)
    env["CNI_COMMAND"] = case.command
    for k, v in case.env.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    if case.stdin is not None:
        return env, case.stdin
    conf = json.loads(json.dumps(base_conf))
    if case.edit is not None:
        case.edit(conf)
    return env, json.dumps(conf).encode()


def check_error(stdout: bytes, stderr: bytes, exit_code: int, expected: int) -> dict[str, Any]:
    assert exit_code != 0
    assert b"Traceback" not in stdout and b"Traceback" not in stderr
    err = json.loads(stdout)
    assert isinstance(err, dict) and isinstance(err.get("msg"), str) and err["msg"]
    assert err.get("code") == expected, err
    assert isinstance(err.get("cniVersion"), str)
    return err

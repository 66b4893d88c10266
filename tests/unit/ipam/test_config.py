from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from cnipy.cni.errors import CniError, InvalidConfig, InvalidEnvironment
from cnipy.cni.request import parse_netconf
from cnipy.ipam import load
from cnipy.ipam.dns import parse_resolv_conf

ip = ipaddress.ip_address


def conf(ipam: dict[str, Any], version: str = "1.0.0", **top: Any) -> Any:
    return parse_netconf(json.dumps({"cniVersion": version, "name": "n", "type": "x", "ipam": ipam, **top}).encode())


def test_every_source_of_ranges_in_reference_order() -> None:
    c = load(conf({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "gateway": "10.1.0.254",
                   "ranges": [[{"subnet": "2001:db8::/64"}]]},
                  runtimeConfig={"ipRanges": [[{"subnet": "10.9.0.0/24"}]]}), {})
    assert [str(rs) for rs in c.range_sets] == ["10.9.0.1-10.9.0.254", "10.1.0.10-10.1.0.254",
                                                "2001:db8::1-2001:db8::ffff:ffff:ffff:ffff"]
    assert c.range_sets[1].ranges[0].gateway == ip("10.1.0.254")
    assert c.data_dir == "/var/lib/cni/networks"


def test_requested_ips_from_env_args_and_runtime_config() -> None:
    c = load(conf({"subnet": "10.1.0.0/24"}, args={"cni": {"ips": ["10.1.0.7/24", "10.1.0.5"]}},
                  runtimeConfig={"ips": ["10.1.0.8", "10.1.0.5"]}), {"IP": "10.1.0.5", "IgnoreUnknown": "1"})
    assert c.requested == (ip("10.1.0.5"), ip("10.1.0.7"), ip("10.1.0.8"))


def test_routes_dns_and_paths(tmp_path: Path) -> None:
    c = load(conf({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.5.0.0/16", "gw": "10.1.0.9"}],
                   "dataDir": str(tmp_path), "resolvConf": "/etc/resolv.conf"}), {})
    assert [str(r.dst) for r in c.routes] == ["0.0.0.0/0", "10.5.0.0/16"] and str(c.routes[1].gw) == "10.1.0.9"
    assert c.data_dir == str(tmp_path) and c.resolv_conf == "/etc/resolv.conf"


@pytest.mark.parametrize("ipam, top, env, err", [
    ({}, {}, {}, "no IP ranges"),
    ({"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "10.1.0.0/25"}]]}, {}, {}, "overlaps"),
    ({"ranges": "10.1.0.0/24"}, {}, {}, "list"),
    ({"ranges": [{"subnet": "10.1.0.0/24"}]}, {}, {}, "non-empty list"),
    ({"subnet": "10.1.0.0/24", "routes": [{"dst": "nope"}]}, {}, {}, "route"),
    ({"subnet": "10.1.0.0/24", "routes": {"dst": "0.0.0.0/0"}}, {}, {}, "routes"),
    ({"subnet": "10.1.0.0/24", "dataDir": "../../etc"}, {}, {}, "absolute"),
    ({"subnet": "10.1.0.0/24", "dataDir": "/var/lib/../../etc"}, {}, {}, "normalised"),
    ({"subnet": "10.1.0.0/24", "resolvConf": "etc/resolv.conf"}, {}, {}, "absolute"),
    ({"subnet": "10.1.0.0/24"}, {"args": {"cni": {"ips": "10.1.0.5"}}}, {}, "list"),
    ({"subnet": "10.1.0.0/24"}, {"args": {"cni": {"ips": ["10.1.0.500"]}}}, {}, "not an IP"),
    ({"subnet": "10.1.0.0/24"}, {"runtimeConfig": {"ips": [5]}}, {}, "not an IP"),
    ({"subnet": "10.1.0.0/24"}, {"runtimeConfig": {"ipRanges": [[{"subnet": "x"}]]}}, {}, "CIDR"),
    ({"subnet": "10.1.0.0/24"}, {}, {"IP": "10.1.0.300"}, "not an IP"),
    ({"subnet": "10.1.0.0/24"}, {}, {"FOO": "bar"}, "unknown CNI_ARGS"),
    ({"subnet": "10.1.0.0/24"}, {}, {"IgnoreUnknown": "maybe"}, "IgnoreUnknown"),
])
def test_bad_configs(ipam: dict[str, Any], top: dict[str, Any], env: dict[str, str], err: str) -> None:
    with pytest.raises(CniError, match=err) as info:
        load(conf(ipam, **top), env)
    assert isinstance(info.value, InvalidEnvironment if env else InvalidConfig)


def test_legacy_versions_allow_one_address_per_family() -> None:
    two = {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]}
    with pytest.raises(InvalidConfig, match="more than 1 address"):
        load(conf(two, version="0.2.0"), {})
    assert len(load(conf(two, version="0.3.0"), {}).range_sets) == 2
    assert len(load(conf({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "2001:db8::/64"}]]},
                         version="0.2.0"), {}).range_sets) == 2


def test_ignore_unknown_lets_runtime_args_through() -> None:
    c = load(conf({"subnet": "10.1.0.0/24"}), {"IgnoreUnknown": "true", "K8S_POD_NAME": "p", "IP": "10.1.0.9"})
    assert c.requested == (ip("10.1.0.9"),)


def test_resolv_conf() -> None:
    dns = parse_resolv_conf("# c\n; c\nnameserver 10.0.0.1\nnameserver  ::1\ndomain example.com\n"
                            "search a.com b.com\noptions ndots:5 edns0\nbogus\n")
    assert dns.nameservers == ("10.0.0.1", "::1") and dns.domain == "example.com"
    assert dns.search == ("a.com", "b.com") and dns.options == ("ndots:5", "edns0")

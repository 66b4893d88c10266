from __future__ import annotations

import pytest

from cnipy.cni import validate
from cnipy.cni.errors import InvalidConfig, InvalidEnvironment
from cnipy.cni.request import parse_cni_args, parse_netconf


def test_cni_args() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=web-0") == \
        {"IgnoreUnknown": "1", "IP": "10.0.0.5", "K8S_POD_NAME": "web-0"}
    assert parse_cni_args("A=;B=x=y;") == {"A": "", "B": "x=y"}
    for bad in ("novalue", "=x", "A=1;B"):
        with pytest.raises(InvalidEnvironment):
            parse_cni_args(bad)


@pytest.mark.parametrize("cid", ["abc", "a1", "0f" * 32, "a_b.c-d"])
def test_good_container_ids(cid: str) -> None:
    assert validate.container_id(cid) == cid


@pytest.mark.parametrize("cid", ["", "../../etc", "a/b", ".hidden", "-x", "a..b", "a b", "a\nb", "ä", "x" * 1025])
def test_bad_container_ids(cid: str) -> None:
    with pytest.raises(InvalidEnvironment):
        validate.container_id(cid)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a:b", "a b", "x" * 16, "eth\0", "ab\t"])
def test_bad_ifnames(name: str) -> None:
    with pytest.raises(InvalidEnvironment):
        validate.interface_name(name)


def test_ifname_limits() -> None:
    assert validate.interface_name("x" * 15) == "x" * 15


@pytest.mark.parametrize("path", ["relative", "/a/../b", "/a/./b", "/a\0"])
def test_bad_netns(path: str) -> None:
    with pytest.raises(InvalidEnvironment):
        validate.netns_path(path)


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "", ".x", 5, None])
def test_bad_network_names(name: object) -> None:
    with pytest.raises(InvalidConfig):
        validate.network_name(name)


def test_netconf_fields() -> None:
    c = parse_netconf(b'{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"type":"host-local"},'
                      b'"runtimeConfig":{"ips":["10.0.0.1"]},"args":{"cni":{"ips":[]}},'
                      b'"capabilities":{"ips":true},"dns":{"nameservers":["1.1.1.1"]},'
                      b'"cni.dev/attachments":[{"containerID":"c","ifname":"eth0"}]}')
    assert c.ipam_type == "host-local" and c.runtime_config["ips"] == ["10.0.0.1"]
    assert c.capabilities == {"ips": True} and c.dns.nameservers == ("1.1.1.1",)
    assert c.valid_attachments is not None and c.valid_attachments[0].container_id == "c"

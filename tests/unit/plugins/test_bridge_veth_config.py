"""Config parsing and rule rendering of cnipy-bridge / cnipy-veth, without root."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from typing import Any

import pytest

from cnipy.cni.errors import CniError
from cnipy.cni.request import Request, parse_request
from cnipy.plugins import bridge, veth
from cnipy.plugins.common import masq, spoofchk
from cnipy.plugins.common.config import requested_mac


def req(conf: dict[str, Any], cni_args: str = "") -> Request:
    base = {"cniVersion": "1.1.0", "name": "net1", "type": "cnipy-bridge",
            "ipam": {"type": "cnipy-host-local", "subnet": "10.1.0.0/24"}}
    base.update(conf)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nowhere", "CNI_ARGS": cni_args}
    return parse_request(env, json.dumps(base).encode())


def code_of(conf: dict[str, Any]) -> int:
    with pytest.raises(CniError) as info:
        bridge.BridgeConf.parse(req(conf))
    return info.value.code


def test_defaults_follow_the_reference() -> None:
    c = bridge.BridgeConf.parse(req({}))
    assert (c.bridge, c.is_gw, c.ip_masq, c.mtu, c.vlan, c.vlans, c.vlan_filtering, c.layer3) == \
        ("cni0", False, False, 0, 0, (), False, True)


def test_default_gateway_implies_gateway() -> None:
    c = bridge.BridgeConf.parse(req({"isDefaultGateway": True}))
    assert c.is_gw and c.is_default_gw


def test_vlan_trunk() -> None:
    assert bridge.vlan_trunk([{"minID": 10, "maxID": 12}, {"id": 5}, {"id": 11}]) == (5, 10, 11, 12)
    assert bridge.vlan_trunk(None) == ()
    c = bridge.BridgeConf.parse(req({"vlanTrunk": []}))
    assert c.vlan_filtering and c.vlans == ()  # an empty trunk still turns filtering on, as the reference


@pytest.mark.parametrize("conf", [
    {"vlan": -1}, {"vlan": 4095}, {"vlan": True}, {"vlanTrunk": {"id": 1}}, {"vlanTrunk": [{"maxID": 3}]},
    {"vlanTrunk": [{"minID": 0, "maxID": 3}]}, {"vlanTrunk": [{"id": 4095}]}, {"vlanTrunk": [5]},
    {"hairpinMode": True, "promiscMode": True}, {"disableContainerInterface": True},
    {"bridge": ""}, {"bridge": 5}, {"bridge": "x" * 16}, {"mtu": 67}, {"mtu": 70000}, {"ipMasqBackend": "x"},
    {"forceAddress": 1}, {"isGateway": True, "vlan": 4000, "bridge": "bridge-name12"},
])
def test_bad_configs_are_invalid_config(conf: dict[str, Any]) -> None:
    assert code_of(conf) == 7


def test_bridge_without_ipam_is_layer2() -> None:
    c = bridge.BridgeConf.parse(req({"ipam": {}, "disableContainerInterface": True}))
    assert not c.layer3 and c.disable_container_interface


def test_mac_precedence() -> None:
    r = req({"args": {"cni": {"mac": "02:00:00:00:00:02"}}, "runtimeConfig": {"mac": "02:00:00:00:00:03"}},
            "IgnoreUnknown=1;MAC=02:00:00:00:00:01")
    assert requested_mac(r) == "02:00:00:00:00:03"
    assert requested_mac(req({}, "MAC=02:AA:00:00:00:01")) == "02:aa:00:00:00:01"
    with pytest.raises(CniError) as info:
        requested_mac(req({}, "MAC=02:00:00:00:00"))
    assert info.value.code == 7


def test_veth_needs_ipam() -> None:
    with pytest.raises(CniError) as info:
        veth.VethConf.parse(req({"type": "cnipy-veth", "ipam": {}}))
    assert info.value.code == 7
    assert veth.VethConf.parse(req({"type": "cnipy-veth", "ipMasq": True, "mtu": 1400})).mtu == 1400


ATT = masq.Attachment("net1", "eth0", "c1")


def test_names_are_stable_and_fit_the_limits() -> None:
    assert len(ATT.chain) == 28 and ATT.chain.startswith("CNIPY-")
    assert ATT.chain == masq.Attachment("net1", "eth0", "c1").chain
    assert ATT.chain != masq.Attachment("net1", "eth1", "c1").chain
    # Same network: same chain prefix (GC finds them); other network: another prefix.
    assert ATT.chain[:15] == masq.Attachment("net1", "eth0", "c2").chain[:15]
    assert ATT.chain[:15] != masq.Attachment("net2", "eth0", "c1").chain[:15]
    long = masq.Attachment("n" * 200, "eth0", "c" * 1000)
    assert len(long.chain) == 28 and len(long.comment) <= 250


def test_iptables_rendering() -> None:
    addr = ipaddress.ip_interface("10.1.0.5/24")
    text = masq.render_ipt_setup(ATT, [addr], ["-s 10.1.0.5/32 -j " + ATT.chain])
    c = f'-m comment --comment "{ATT.comment}"'
    assert text.splitlines() == [
        "*nat", f":{ATT.chain} - [0:0]", f"-D POSTROUTING -s 10.1.0.5/32 -j {ATT.chain}",
        f"-A {ATT.chain} -d 10.1.0.0/24 {c} -j ACCEPT", f"-A {ATT.chain} ! -d 224.0.0.0/4 {c} -j MASQUERADE",
        f"-A POSTROUTING -s 10.1.0.5/32 {c} -j {ATT.chain}", "COMMIT"]
    save = f"*nat\n:POSTROUTING ACCEPT [0:0]\n:{ATT.chain} - [0:0]\n-A POSTROUTING -s 10.1.0.5/32 {c} " \
           f"-j {ATT.chain}\n-A POSTROUTING -j OTHER\nCOMMIT\n"
    state = masq.parse_save(save)
    assert masq.jumps_to(state, ATT.chain) == [f"-s 10.1.0.5/32 {c} -j {ATT.chain}"]
    assert masq.render_ipt_remove(state, [ATT.chain]).splitlines() == [
        "*nat", f"-D POSTROUTING -s 10.1.0.5/32 {c} -j {ATT.chain}", f"-F {ATT.chain}", f"-X {ATT.chain}",
        "COMMIT"]
    assert masq.render_ipt_remove(masq.parse_save("*nat\nCOMMIT\n"), [ATT.chain]) == ""


def test_nft_rendering() -> None:
    v6 = ipaddress.ip_interface("fd00::5/64")
    text = masq.render_nft_setup(ATT, [v6], [7])
    assert "delete rule inet cnipy_masq postrouting handle 7" in text
    assert f'ip6 saddr fd00::5 ip6 daddr != fd00::/64 ip6 daddr != ff00::/8 masquerade comment "{ATT.tag} ' in text
    sc = spoofchk.render_setup(ATT, "veth01234567", "02:00:00:00:00:01", [])
    assert f'iifname "veth01234567" jump sc-{ATT.tag}' in sc and "ether saddr 02:00:00:00:00:01 return" in sc


def test_plugin_import_path_stays_lean() -> None:
    """Loading the plugins (what VERSION does) must not import pyroute2."""
    code = ("import sys; import cnipy.plugins.bridge, cnipy.plugins.veth; "
            "print('pyroute2' in sys.modules, 'click' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_comments_cannot_break_out_of_their_quotes() -> None:
    att = masq.Attachment("net1", 'e"0 -j\\x;', "c1")
    assert att.comment == "cnipy masq net: net1 if: e_0 -j_x_ id: c1"
    text = masq.render_ipt_setup(att, [ipaddress.ip_interface("10.1.0.5/24")], [])
    assert all(line.count('"') in (0, 2) for line in text.splitlines())

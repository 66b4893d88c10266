"""cnipy-bridge and cnipy-veth verbs beyond ADD: CHECK, DEL (idempotent, namespace gone), GC, STATUS, and the
faults: SIGKILL during ADD, an existing interface, bad configs, many ADDs creating the bridge at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.netns.plugins.conftest import OURS, Lab, Server, as_prev, cni, ok, peer_seen, with_attachments
from tests.support import netns as N

PLUGINS = ["cnipy-bridge", "cnipy-veth"]


def _conf(lab: Lab, plugin: str, **keys: object) -> dict[str, object]:
    if plugin == "cnipy-bridge":
        keys.setdefault("bridge", "cnbbr0")
        keys.setdefault("isDefaultGateway", True)
        return lab.conf(plugin, **keys)
    conf = lab.conf(plugin, **keys)
    if "ipam" in conf:
        conf["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}]
    return conf


def _clean(lab: Lab) -> None:
    left = lab.leftovers()
    assert left == {"veths": [], "chains": [], "nft_rules": [], "ipam_files": []}, left


@pytest.mark.parametrize("plugin", PLUGINS)
def test_check_names_what_differs(lab: Lab, plugin: str) -> None:
    conf = _conf(lab, plugin, ipMasq=True)
    pod = lab.pod()
    netns = f"/run/netns/{pod.name}"
    result = ok(cni(lab.node, plugin, "ADD", conf, netns=netns))
    ok(cni(lab.node, plugin, "CHECK", as_prev(conf, result), netns=netns))
    pod.run("ip", "route", "del", "default")
    call = cni(lab.node, plugin, "CHECK", as_prev(conf, result), netns=netns)
    assert call.code == 104 and "route to 0.0.0.0/0 from prevResult is missing" in call.out["details"]
    pod.run("ip", "addr", "flush", "dev", "eth0")
    call = cni(lab.node, plugin, "CHECK", as_prev(conf, result), netns=netns)
    assert "address 10.88.0.2/24 from prevResult is not on eth0" in call.out["details"]
    if plugin == "cnipy-bridge":
        lab.node.run("ip", "addr", "flush", "dev", "cnbbr0")
        call = cni(lab.node, plugin, "CHECK", as_prev(conf, result), netns=netns)
        assert "gateway address 10.88.0.1/24 is not on cnbbr0" in call.out["details"]
    lab.node.run("iptables", "-t", "nat", "-F", "POSTROUTING")
    call = cni(lab.node, plugin, "CHECK", as_prev(conf, result), netns=netns)
    assert "POSTROUTING jump for 10.88.0.2" in call.out["details"]
    pod.run("ip", "link", "del", "eth0")
    call = cni(lab.node, plugin, "CHECK", as_prev(conf, result), netns=netns)
    assert call.code == 104 and "eth0 does not exist" in call.out["details"]
    assert cni(lab.node, plugin, "CHECK", conf, netns=netns).code == 7  # no prevResult
    ok(cni(lab.node, plugin, "DEL", conf, netns=netns))
    _clean(lab)


def test_check_bridge_port_options(lab: Lab) -> None:
    conf = _conf(lab, "cnipy-bridge", hairpinMode=True)
    pod = lab.pod()
    netns = f"/run/netns/{pod.name}"
    result = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=netns))
    ok(cni(lab.node, "cnipy-bridge", "CHECK", as_prev(conf, result), netns=netns))
    veth = result["interfaces"][1]["name"]
    lab.node.run("bridge", "link", "set", "dev", veth, "hairpin", "off")
    call = cni(lab.node, "cnipy-bridge", "CHECK", as_prev(conf, result), netns=netns)
    assert f"hairpin mode on {veth} is False, config says True" in call.out["details"]
    lab.node.run("ip", "link", "set", veth, "nomaster")
    call = cni(lab.node, "cnipy-bridge", "CHECK", as_prev(conf, result), netns=netns)
    assert f"host veth {veth} is not a port of bridge cnbbr0" in call.out["details"]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_del_is_idempotent_and_survives_a_vanished_namespace(lab: Lab, plugin: str) -> None:
    extra = {"macspoofchk": True} if plugin == "cnipy-bridge" else {}
    conf = _conf(lab, plugin, ipMasq=True, **extra)
    pod = lab.pod()
    netns = f"/run/netns/{pod.name}"
    ok(cni(lab.node, plugin, "ADD", conf, netns=netns))
    assert lab.leftovers()["chains"]
    N.delete(pod)  # the runtime lost the namespace: the veth goes with it, the rules and the address do not
    ok(cni(lab.node, plugin, "DEL", conf, netns=netns))
    _clean(lab)
    ok(cni(lab.node, plugin, "DEL", conf, netns=netns))
    ok(cni(lab.node, plugin, "DEL", conf))  # no CNI_NETNS at all


def test_reference_leaks_masquerade_when_namespace_is_gone(lab: Lab) -> None:
    """The contrast (containernetworking/plugins#810): the Go bridge leaves its CNI- chain behind."""
    conf = lab.conf("bridge", ipam="host-local", version="1.0.0", bridge="cnbbr0", ipMasq=True)
    pod = lab.pod()
    ok(cni(lab.node, "/usr/lib/cni/bridge", "ADD", conf, netns=f"/run/netns/{pod.name}"))
    N.delete(pod)
    ok(cni(lab.node, "/usr/lib/cni/bridge", "DEL", conf, netns=f"/run/netns/{pod.name}"))
    assert any("CNI-" in c for c in lab.leftovers()["chains"])


@pytest.mark.parametrize("plugin", PLUGINS)
def test_interface_exists(lab: Lab, plugin: str) -> None:
    conf = _conf(lab, plugin)
    pod = lab.pod()
    pod.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth9")
    call = cni(lab.node, plugin, "ADD", conf, netns=f"/run/netns/{pod.name}")
    assert call.code == 103, call.out
    assert lab.leftovers()["ipam_files"] == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_unknown_namespace(lab: Lab, plugin: str) -> None:
    call = cni(lab.node, plugin, "ADD", _conf(lab, plugin), netns="/run/netns/cnbdoesnotexist")
    assert call.code == 3, call.out
    _clean(lab)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_gc_removes_what_is_not_valid(lab: Lab, plugin: str) -> None:
    conf = _conf(lab, plugin, ipMasq=True)
    pods = [lab.pod(), lab.pod()]
    for i, pod in enumerate(pods):
        ok(cni(lab.node, plugin, "ADD", conf, netns=f"/run/netns/{pod.name}", cid=f"c{i}"))
    for pod in pods:
        N.delete(pod)  # the runtime crashed and never called DEL
    ok(cni(lab.node, plugin, "GC", with_attachments(conf, [("c1", "eth0")])))
    left = lab.leftovers()
    assert len(left["ipam_files"]) == 1 and len([c for c in left["chains"] if c.startswith(":")]) == 1
    ok(cni(lab.node, plugin, "GC", with_attachments(conf, [])))
    _clean(lab)


def test_gc_of_nftables_masquerade_and_spoof_check(lab: Lab) -> None:
    conf = _conf(lab, "cnipy-bridge", ipMasq=True, ipMasqBackend="nftables", macspoofchk=True)
    for cid in ("a", "b"):
        ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{lab.pod().name}", cid=cid))
    assert len(lab.leftovers()["nft_rules"]) == 2 + 2 * 3
    ok(cni(lab.node, "cnipy-bridge", "GC", with_attachments(conf, [("b", "eth0")])))
    assert len(lab.leftovers()["nft_rules"]) == 1 + 3
    ok(cni(lab.node, "cnipy-bridge", "GC", with_attachments(conf, [])))
    assert lab.leftovers()["nft_rules"] == [] and lab.leftovers()["ipam_files"] == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_status(lab: Lab, plugin: str) -> None:
    ok(cni(lab.node, plugin, "STATUS", _conf(lab, plugin)))
    missing = _conf(lab, plugin)
    missing["ipam"]["type"] = "cnb-no-such-ipam"  # type: ignore[index]
    assert cni(lab.node, plugin, "STATUS", missing).rc != 0


BAD = [
    ({"vlan": 5000}, "vlan"),
    ({"vlan": "7"}, "vlan"),
    ({"vlanTrunk": [{"minID": 10}]}, "maxID"),
    ({"vlanTrunk": [{"minID": 20, "maxID": 10}]}, "minID is greater"),
    ({"vlanTrunk": [{"id": 0}]}, "id"),
    ({"hairpinMode": True, "promiscMode": True}, "hairpin"),
    ({"disableContainerInterface": True}, "IPAM"),
    ({"bridge": "a-bridge-name-too-long"}, "too long"),
    ({"bridge": "br/0"}, "invalid character"),
    ({"ipMasq": True, "ipMasqBackend": "pf"}, "ipMasqBackend"),
    ({"mtu": 20}, "mtu"),
    ({"isGateway": "yes"}, "isGateway"),
    ({"runtimeConfig": {"mac": "zz:00:00:00:00:01"}}, "MAC"),
    ({"args": {"cni": {"mac": "01:00:00:00:00:01"}}}, "multicast"),
]


@pytest.mark.parametrize(("keys", "word"), BAD, ids=[w for _, w in BAD])
def test_bad_bridge_configs_are_code_7(lab: Lab, keys: dict[str, object], word: str) -> None:
    pod = lab.pod()
    call = cni(lab.node, "cnipy-bridge", "ADD", _conf(lab, "cnipy-bridge", **keys), netns=f"/run/netns/{pod.name}")
    assert call.code == 7 and word.lower() in json.dumps(call.out).lower(), call.out
    _clean(lab)


def test_bad_veth_configs_are_code_7(lab: Lab) -> None:
    pod = lab.pod()
    for conf in (lab.conf("cnipy-veth", ipam=""), lab.conf("cnipy-veth", mtu=-1)):
        assert cni(lab.node, "cnipy-veth", "ADD", conf, netns=f"/run/netns/{pod.name}").code == 7


def test_mac_from_cni_args_and_runtime_config(lab: Lab) -> None:
    pod = lab.pod()
    conf = _conf(lab, "cnipy-bridge", args={"cni": {"mac": "02:00:00:00:00:02"}})
    r = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod.name}",
               extra_env={"CNI_ARGS": "IgnoreUnknown=1;MAC=02:00:00:00:00:01"}))
    assert r["interfaces"][2]["mac"] == "02:00:00:00:00:02"  # args.cni.mac wins over CNI_ARGS
    conf["runtimeConfig"] = {"mac": "02:00:00:00:00:03"}
    r = ok(cni(lab.node, "cnipy-bridge", "ADD", conf, netns=f"/run/netns/{pod.name}", cid="c2", ifname="eth1"))
    assert r["interfaces"][2]["mac"] == "02:00:00:00:00:03"
    assert "02:00:00:00:00:03" in pod.run("ip", "link", "show", "eth1").stdout


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_many_concurrent_adds_and_dels(lab: Lab, backend: str) -> None:
    """8 ADDs at once create the bridge and its gateway address once, and their rules without conflicts."""
    conf = _conf(lab, "cnipy-bridge", bridge="cnbrace", ipMasq=True, ipMasqBackend=backend)
    pods = [lab.pod() for _ in range(8)]

    def run(verb: str) -> list[int]:
        with ThreadPoolExecutor(8) as pool:
            calls = list(pool.map(lambda p: cni(lab.node, "cnipy-bridge", verb, conf,
                                                 netns=f"/run/netns/{p.name}", cid=p.name), pods))
        assert [c.rc for c in calls] == [0] * 8, [c.out for c in calls if c.rc]
        return [c.rc for c in calls]

    run("ADD")
    addrs = lab.node.run("ip", "-4", "-o", "addr", "show", "dev", "cnbrace").stdout
    assert addrs.count("inet ") == 1 and "10.88.0.1/24" in addrs
    left = lab.leftovers()
    assert len(left["ipam_files"]) == 8
    assert len(left["nft_rules"] if backend == "nftables" else [c for c in left["chains"] if c[0] == ":"]) == 8
    run("DEL")
    _clean(lab)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_sigkill_during_add_then_del_and_gc_leave_nothing(lab: Lab, plugin: str) -> None:
    conf = _conf(lab, plugin, ipMasq=True)
    for i, delay in enumerate((0.12, 0.2, 0.28, 0.36, 0.5)):
        pod = lab.pod()
        netns = f"/run/netns/{pod.name}"
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_PATH": str(OURS),
               "CNI_CONTAINERID": f"k{i}", "CNI_IFNAME": "eth0", "CNI_NETNS": netns}
        proc = subprocess.Popen(["ip", "netns", "exec", lab.node.name, "env", "-i",
                                 *[f"{k}={v}" for k, v in env.items()], str(OURS / plugin)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        ok(cni(lab.node, plugin, "DEL", conf, netns=netns, cid=f"k{i}"))
        assert pod.run("ip", "link", "show", "eth0", check=False).returncode != 0
    ok(cni(lab.node, plugin, "GC", with_attachments(conf, [])))
    _clean(lab)


def test_pod_internal_loopback(lab: Lab, serve: Callable[..., Server]) -> None:
    """Two processes in one pod namespace talk over 127.0.0.1 once cnipy-loopback has run."""
    pod = lab.pod()
    pod.run("ip", "link", "set", "lo", "down")
    conf = {"cniVersion": "1.1.0", "name": "lo", "type": "cnipy-loopback"}
    ok(cni(lab.node, "cnipy-loopback", "ADD", conf, netns=f"/run/netns/{pod.name}", ifname="lo"))
    server = serve(pod, "127.0.0.1", 8080)
    assert peer_seen(pod, server) == "127.0.0.1"


def test_check_mtu_and_link_state(lab: Lab) -> None:
    conf = _conf(lab, "cnipy-veth", mtu=1400)
    pod = lab.pod()
    netns = f"/run/netns/{pod.name}"
    result = ok(cni(lab.node, "cnipy-veth", "ADD", conf, netns=netns))
    pod.run("ip", "link", "set", "eth0", "mtu", "1300")
    call = cni(lab.node, "cnipy-veth", "CHECK", as_prev(conf, result), netns=netns)
    assert "MTU is 1300, config says 1400" in call.out["details"]
    veth = result["interfaces"][0]["name"]
    lab.node.run("ip", "addr", "flush", "dev", veth)
    call = cni(lab.node, "cnipy-veth", "CHECK", as_prev(conf, result), netns=netns)
    # Without an address on the veth the kernel drops its routes too: both differences are named.
    assert f"gateway address 10.88.0.1/32 is not on {veth}" in call.out["details"]
    assert f"host route 10.88.0.2/32 dev {veth} is missing" in call.out["details"]


def test_layer2_and_disabled_container_interface(lab: Lab) -> None:
    pod1, pod2 = lab.pod(), lab.pod()
    l2 = lab.conf(ipam="", bridge="cnbbr0")
    r = ok(cni(lab.node, "cnipy-bridge", "ADD", l2, netns=f"/run/netns/{pod1.name}"))
    assert "ips" not in r and len(r["interfaces"]) == 3
    assert ",UP" in pod1.run("ip", "link", "show", "eth0").stdout
    off = lab.conf(ipam="", bridge="cnbbr0", disableContainerInterface=True)
    ok(cni(lab.node, "cnipy-bridge", "ADD", off, netns=f"/run/netns/{pod2.name}", cid="c2"))
    assert ",UP" not in pod2.run("ip", "link", "show", "eth0").stdout
    ok(cni(lab.node, "cnipy-bridge", "CHECK", as_prev(off, r), netns=f"/run/netns/{pod1.name}"))
    for pod, cid in ((pod1, "c1"), (pod2, "c2")):
        ok(cni(lab.node, "cnipy-bridge", "DEL", l2, netns=f"/run/netns/{pod.name}", cid=cid))
    _clean(lab)


def test_enabledad_sysctls(lab: Lab) -> None:
    pod1, pod2 = lab.pod(), lab.pod()
    ok(cni(lab.node, "cnipy-bridge", "ADD", _conf(lab, "cnipy-bridge", enabledad=True),
           netns=f"/run/netns/{pod1.name}", cid="c1"))
    ok(cni(lab.node, "cnipy-bridge", "ADD", _conf(lab, "cnipy-bridge"), netns=f"/run/netns/{pod2.name}", cid="c2"))
    read = lambda ns, k: ns.run("cat", f"/proc/sys/net/ipv6/conf/eth0/{k}").stdout.strip()  # noqa: E731
    assert (read(pod1, "accept_dad"), read(pod1, "enhanced_dad")) == ("1", "1")
    assert read(pod2, "accept_dad") == "0"
    assert pod1.run("cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify").stdout.strip() == "1"


def test_force_address(lab: Lab) -> None:
    lab.node.run("ip", "link", "add", "cnbbr0", "type", "bridge")
    lab.node.run("ip", "addr", "add", "10.99.0.1/24", "dev", "cnbbr0")
    pod = lab.pod()
    call = cni(lab.node, "cnipy-bridge", "ADD", _conf(lab, "cnipy-bridge"), netns=f"/run/netns/{pod.name}")
    assert call.code == 7 and "already has an IP address different from 10.88.0.1/24" in call.out["msg"]
    _clean(lab)
    ok(cni(lab.node, "cnipy-bridge", "ADD", _conf(lab, "cnipy-bridge", forceAddress=True),
           netns=f"/run/netns/{pod.name}"))
    addrs = lab.node.run("ip", "-4", "-o", "addr", "show", "dev", "cnbbr0").stdout
    assert "10.88.0.1/24" in addrs and "10.99.0.1" not in addrs


@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "0.4.0", "1.0.0"])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_older_spec_versions(lab: Lab, plugin: str, version: str) -> None:
    conf = _conf(lab, plugin, version=version)
    pod = lab.pod()
    netns = f"/run/netns/{pod.name}"
    result = ok(cni(lab.node, plugin, "ADD", conf, netns=netns))
    assert result["cniVersion"] == version
    if version == "0.2.0":
        assert result["ip4"]["ip"] == "10.88.0.2/24"
    else:
        assert result["ips"][0]["address"] == "10.88.0.2/24"
    if version >= "0.4.0":
        ok(cni(lab.node, plugin, "CHECK", as_prev(conf, result), netns=netns))
    ok(cni(lab.node, plugin, "DEL", conf, netns=netns))
    _clean(lab)

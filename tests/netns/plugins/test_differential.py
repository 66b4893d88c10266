"""The same configs to the Go reference plugins (/usr/lib/cni/bridge, /usr/lib/cni/ptp) and to ours, in twin
node namespaces: the same interfaces (random names and MACs aside), addresses, routes, sysctls, port options,
results and masquerade behaviour."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.netns.plugins.conftest import GO, Lab, Server, cni, link_pair, ok, peer_seen, pod_ip
from tests.support import netns as N

VETH = re.compile(r"veth[0-9a-f]{8}")
MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")


def _norm(text: str) -> str:
    return MAC.sub("<mac>", VETH.sub("<veth>", text))


def _sysctl(ns: N.Netns, key: str) -> str:
    r = ns.run("cat", "/proc/sys/" + key, check=False)
    return r.stdout.strip() if r.returncode == 0 else "-"


def snapshot(ns: N.Netns, devs: list[str]) -> dict[str, Any]:
    """What a namespace looks like, with random names and MACs normalised."""
    links = json.loads(ns.run("ip", "-d", "-j", "link", "show").stdout)
    out_links = sorted(
        (_norm(ln["ifname"]), ln.get("linkinfo", {}).get("info_kind", ""), ln["mtu"], "UP" in ln["flags"],
         ln.get("master", ""), "PROMISC" in ln["flags"] or ln.get("promiscuity", 0) > 0)
        for ln in links if ln["ifname"] != "lo")
    addrs = sorted(
        (_norm(a["ifname"]), ai["local"], ai["prefixlen"])
        for a in json.loads(ns.run("ip", "-j", "addr", "show").stdout)
        for ai in a.get("addr_info", []) if ai.get("scope") != "link" and a["ifname"] != "lo")
    routes = []
    for fam in ("-4", "-6"):
        for r in json.loads(ns.run("ip", fam, "-j", "route", "show", "table", "all").stdout):
            if r.get("table") == "local" or r.get("dst", "").startswith(("fe80", "ff00", "multicast")):
                continue
            r.pop("flags", None) if not r.get("flags") else None
            routes.append(_norm(json.dumps(r, sort_keys=True)))
    ports = sorted((_norm(p["ifname"]), p.get("hairpin"), p.get("isolated"))
                   for p in json.loads(ns.run("bridge", "-d", "-j", "link", "show").stdout or "[]"))
    sysctls = {k: _sysctl(ns, k) for k in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")}
    for dev in devs:
        for k in (f"net/ipv4/conf/{dev}/arp_notify", f"net/ipv6/conf/{dev}/accept_dad",
                  f"net/ipv6/conf/{dev}/accept_ra"):
            sysctls[k] = _sysctl(ns, k)
    return {"links": out_links, "addrs": addrs, "routes": sorted(routes), "ports": ports, "sysctls": sysctls}


def _result(out: dict[str, Any], netns_go: str, netns_ours: str) -> str:
    return _norm(json.dumps(out, sort_keys=True).replace(netns_ours, "<netns>").replace(netns_go, "<netns>"))


BRIDGE_CASES = {
    "default-gw-masq-mtu": {"isDefaultGateway": True, "ipMasq": True, "mtu": 1400},
    "gateway-hairpin": {"isGateway": True, "hairpinMode": True},
    "promisc-no-gateway": {"promiscMode": True},
    "layer2": {"layer2": True},
    "dual-stack": {"isDefaultGateway": True, "subnet": "10.88.0.0/24,fd00:88::/64"},
}


def _twin(lab_factory: Callable[[], Lab]) -> tuple[Lab, Lab, N.Netns, N.Netns]:
    go, ours = lab_factory(), lab_factory()
    return go, ours, go.pod(), ours.pod()


@pytest.mark.parametrize("case", sorted(BRIDGE_CASES))
def test_bridge_matches_reference(lab_factory: Callable[[], Lab], case: str) -> None:
    keys = dict(BRIDGE_CASES[case])
    subnet = keys.pop("subnet", "10.88.0.0/24")
    ipam = "" if keys.pop("layer2", False) else "host-local"
    go, ours, pod_go, pod_ours = _twin(lab_factory)
    results = []
    for lab, pod, plugin in ((go, pod_go, str(GO / "bridge")), (ours, pod_ours, "cnipy-bridge")):
        conf = lab.conf("bridge", ipam=ipam, version="1.0.0", subnet=subnet, bridge="cnbbr0", **keys)
        results.append(ok(cni(lab.node, plugin, "ADD", conf, netns=f"/run/netns/{pod.name}")))
    assert _result(results[1], pod_go.name, pod_ours.name) == _result(results[0], pod_go.name, pod_ours.name)
    assert snapshot(ours.node, ["cnbbr0"]) == snapshot(go.node, ["cnbbr0"])
    assert snapshot(pod_ours, ["eth0"]) == snapshot(pod_go, ["eth0"])


def test_bridge_masquerade_behaves_like_reference(lab_factory: Callable[[], Lab],
                                                  serve: Callable[..., Server]) -> None:
    go, ours, pod_go, pod_ours = _twin(lab_factory)
    seen = []
    for lab, pod, plugin in ((go, pod_go, str(GO / "bridge")), (ours, pod_ours, "cnipy-bridge")):
        conf = lab.conf("bridge", ipam="host-local", version="1.0.0", bridge="cnbbr0",
                        isDefaultGateway=True, ipMasq=True)
        r = ok(cni(lab.node, plugin, "ADD", conf, netns=f"/run/netns/{pod.name}"))
        outside, neighbour = lab.pod(), lab.pod()
        link_pair(lab.node, outside, "192.0.2.1/24", "192.0.2.2/24")
        r2 = ok(cni(lab.node, plugin, "ADD", conf, netns=f"/run/netns/{neighbour.name}", cid="c2"))
        seen.append((peer_seen(pod, serve(outside, "192.0.2.2", 8080)),
                     peer_seen(pod, serve(neighbour, pod_ip(r2), 8081)) == pod_ip(r)))
    assert seen[0] == seen[1] == ("192.0.2.1", True)


PTP_CASES = {
    "plain": {},
    "masq-mtu": {"ipMasq": True, "mtu": 1300},
    "dual-stack": {"subnet": "10.88.0.0/24,fd00:88::/64"},
}


@pytest.mark.parametrize("case", sorted(PTP_CASES))
def test_veth_matches_reference_ptp(lab_factory: Callable[[], Lab], case: str) -> None:
    keys = dict(PTP_CASES[case])
    subnet = keys.pop("subnet", "10.88.0.0/24")
    go, ours, pod_go, pod_ours = _twin(lab_factory)
    results = []
    for lab, pod, plugin in ((go, pod_go, str(GO / "ptp")), (ours, pod_ours, "cnipy-veth")):
        conf = lab.conf("ptp", ipam="host-local", version="1.0.0", subnet=subnet, **keys)
        conf["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}]
        results.append(ok(cni(lab.node, plugin, "ADD", conf, netns=f"/run/netns/{pod.name}")))
    assert _result(results[1], pod_go.name, pod_ours.name) == _result(results[0], pod_go.name, pod_ours.name)
    assert snapshot(ours.node, []) == snapshot(go.node, [])
    assert snapshot(pod_ours, ["eth0"]) == snapshot(pod_go, ["eth0"])

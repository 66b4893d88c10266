"""One ``cnipy proxy`` process serving dual-stack Services: a proxier per family behind one daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import need
from tests.netns.proxy.test_daemon import daemon, metrics, write  # noqa: F401 (daemon: a fixture)
from tests.netns.proxy.topology import Topology, wait_until

DUAL = """
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{{name: p, port: 80, targetPort: 8080, nodePort: 30080}}]
---
kind: EndpointSlice
metadata: {{name: web-v4, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: p, port: 8080}}]
endpoints:
- {{addresses: ["{ep4}"], nodeName: node1}}
---
kind: EndpointSlice
metadata: {{name: web-v6, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv6
ports: [{{name: p, port: 8080}}]
endpoints:
- {{addresses: ["{ep6}"], nodeName: node1}}
---
kind: Service
metadata: {{name: dns, namespace: default}}
spec:
  clusterIP: "fd00:96::53"
  clusterIPs: ["fd00:96::53"]
  ipFamilies: [IPv6]
  ports: [{{name: p, port: 53, targetPort: 8080, protocol: UDP}}]
---
kind: EndpointSlice
metadata: {{name: dns-v6, namespace: default, labels: {{kubernetes.io/service-name: dns}}}}
addressType: IPv6
ports: [{{name: p, port: 8080, protocol: UDP}}]
endpoints:
- {{addresses: ["{dns6}"], nodeName: node1}}
"""

HEALTH = ("import json, sys, urllib.request as u, urllib.error as e\n"
          "try:\n    r = u.urlopen(sys.argv[1], timeout=2); print(r.status, r.read().decode())\n"
          "except e.HTTPError as x:\n    print(x.code, x.read().decode())\n"
          "except OSError as x:\n    print(0, '{}')\n")


# (--mode, --iptables-backend, the commands that show the rules of each family)
MODES = {"nftables": ("nftables", "nft", ("nft list table ip cnipy", "nft list table ip6 cnipy")),
         "iptables": ("iptables", "nft", ("iptables-save", "ip6tables-save")),
         "iptables-legacy": ("iptables", "legacy", ("iptables-legacy-save", "ip6tables-legacy-save"))}


@pytest.mark.parametrize("variant", sorted(MODES))
def test_one_daemon_serves_a_dual_stack_service_over_both_families(
        variant: str, tmp_path: Path, daemon: Callable[..., subprocess.Popen[str]],  # noqa: F811
        topo_factory: Callable[..., Topology]) -> None:
    mode, backend, dumps = MODES[variant]
    for cmd in dumps:
        need(cmd.split()[0])
    topo = topo_factory(2)
    (ep4, _), (_, ep6) = topo.endpoint_ips, topo.endpoint_ips6
    m = tmp_path / "m" / "web.yaml"
    write(m, DUAL.format(ep4=ep4, ep6=ep6, dns6=topo.endpoint_ips6[0]))
    proc = daemon(topo, mode, "--iptables-backend", backend, "--cluster-cidr", "fd00:244::/48",
                  "--healthz-address", "[::]:10256")
    assert wait_until(lambda: topo.probe("tcp", "10.96.0.10", "80", "1", "3")["ok"] == {"ep0": 1}, timeout=15), \
        proc.poll()
    # The same process, over IPv4 and IPv6: cluster IPs (the client is outside both cluster CIDRs: masqueraded),
    # NodePorts (policy Local keeps the client's address).
    r = topo.probe("tcp", "fd00:96::10", "80", "10", "3")
    assert r["ok"] == {"ep1": 10} and r["peers"] == {"fd00:244:1::1": 10}, r
    r = topo.probe("tcp", "192.168.100.1", "30080", "10", "3")
    assert r["ok"] == {"ep0": 10} and r["peers"] == {"192.168.100.2": 10}, r
    r = topo.probe("tcp", "fd00:100::1", "30080", "10", "3")
    assert r["ok"] == {"ep1": 10} and r["peers"] == {"fd00:100::2": 10}, r
    # The rules of each family hold only addresses of that family.
    rules4, rules6 = (topo.node.run(*cmd.split()).stdout for cmd in dumps)
    assert "10.96.0.10" in rules4 and "fd00:96::10" in rules6 and "fd00" not in rules4 and "10.96." not in rules6
    # One healthCheckNodePort server, over both families; one local endpoint (per family: not summed).
    for url in ("http://192.168.100.1:32000/", "http://[fd00:100::1]:32000/"):
        code, body = topo.client.run(sys.executable, "-c", HEALTH, url).stdout.split(" ", 1)
        assert int(code) == 200 and json.loads(body)["localEndpoints"] == 1, (url, code, body)
    # One /healthz, reachable over both families from the node.
    for url in ("http://127.0.0.1:10256/healthz", "http://[::1]:10256/healthz"):
        code, _ = topo.node.run(sys.executable, "-c", HEALTH, url).stdout.split(" ", 1)
        assert int(code) == 200, url
    # IPv6 UDP conntrack cleanup: the client keeps its source port; the endpoint changes.
    assert wait_until(lambda: topo.probe("udp", "fd00:96::53", "53", "1", "40000", "0.3")["ok"] == {"ep0": 1})
    topo.servers[0].kill()
    write(m, DUAL.format(ep4=ep4, ep6=ep6, dns6=topo.endpoint_ips6[1]))
    assert wait_until(lambda: topo.probe("udp", "fd00:96::53", "53", "1", "40000", "0.3")["ok"] == {"ep1": 1},
                      timeout=10)
    text = metrics(topo)
    deleted = [ln for ln in text.splitlines() if ln.startswith("cnipy_proxy_conntrack_deleted_total")]
    assert deleted and float(deleted[0].rsplit(" ", 1)[1]) >= 1, deleted
    assert text.count("# TYPE cnipy_proxy_rules gauge") == 1  # one set of metrics, summed over the families
    proc.terminate()
    proc.wait(timeout=30)  # generous: a loaded CI machine may be mid-sync of both families
    # --cleanup removes the rules of both families.
    topo.node.run(sys.executable, "-m", "cnipy.proxy", "--cleanup", "--node-name", "node1", "--mode", mode,
                  "--iptables-backend", backend)
    if mode == "nftables":
        assert "cnipy" not in topo.node.run("nft", "list", "tables").stdout
    else:
        for cmd in dumps:
            assert "KUBE-" not in topo.node.run(*cmd.split()).stdout, cmd


@pytest.mark.parametrize("args, message", [
    (("--mode", "iptables", "--ip-family", "ipv4", "--cluster-cidr", "fd00::/64"), "is not of --ip-family ipv4"),
    (("--ip-family", "ipv6", "--localhost-nodeports"), "--localhost-nodeports is IPv4 only"),
])
def test_daemon_refuses_what_it_cannot_serve(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cnipy.proxy", "--manifests", str(tmp_path), "--node-name", "n1",
                           *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

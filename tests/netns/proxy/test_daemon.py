"""The daemon as a process inside the node namespace, fed by manifest files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.netns.proxy.topology import Topology, wait_until

SVC = """
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  ports: [{{name: p, port: {port}, targetPort: 8080, protocol: {proto}}}]
---
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: 8080, protocol: {proto}}}]
endpoints:
{eps}
"""


def manifest(name: str, ip: str, port: int, proto: str, endpoints: list[str]) -> str:
    eps = "".join(f"- {{addresses: [{e}], nodeName: node1}}\n" for e in endpoints) or "[]\n"
    return SVC.format(name=name, ip=ip, port=port, proto=proto, eps=eps)


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)  # atomic: the daemon never reads half a file


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(topo: Topology, mode: str, *extra: str) -> subprocess.Popen[str]:
        proc = topo.node.popen(
            sys.executable, "-m", "cnipy.proxy", "--mode", mode, "--manifests", str(tmp_path / "m"),
            "--node-name", "node1", "--cluster-cidr", "10.244.0.0/16", "--min-sync-period", "0.05",
            "--healthz-address", "127.0.0.1:10256", "--metrics-address", "127.0.0.1:10249",
            "--poll-period", "0.02", *extra,
            stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    (tmp_path / "m").mkdir()
    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def metrics(topo: Topology) -> str:
    return topo.node.run(sys.executable, "-c", "import urllib.request as u;"
                         "print(u.urlopen('http://127.0.0.1:10249/metrics', timeout=3).read().decode())",
                         check=False).stdout


def sync_count(text: str) -> int:
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith(("cnipy_proxy_syncs_partial_total", "cnipy_proxy_syncs_full_total")))


def test_udp_endpoint_change_is_not_blackholed(mode: str, tmp_path: Path, daemon: Callable[..., object],
                                               topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(2)
    ep0, ep1 = topo.endpoint_ips
    m = tmp_path / "m" / "dns.yaml"
    write(m, manifest("dns", "10.96.0.53", 53, "UDP", [ep0]))
    daemon(topo, mode)
    assert wait_until(lambda: topo.probe("udp", "10.96.0.53", "53", "1", "40000", "0.3")["ok"] == {"ep0": 1})
    # The client keeps its source port, so without cleanup its conntrack entry keeps the DNAT to ep0.
    topo.servers[0].kill()
    write(m, manifest("dns", "10.96.0.53", 53, "UDP", [ep1]))
    assert wait_until(lambda: topo.probe("udp", "10.96.0.53", "53", "1", "40000", "0.3")["ok"] == {"ep1": 1},
                      timeout=10)
    deleted = [ln for ln in metrics(topo).splitlines() if ln.startswith("cnipy_proxy_conntrack_deleted_total")]
    assert deleted and float(deleted[0].rsplit(" ", 1)[1]) >= 1, deleted


def test_continuous_connections_through_100_syncs_and_a_restart(
        mode: str, tmp_path: Path, daemon: Callable[..., subprocess.Popen[str]],
        topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(3)
    ips = topo.endpoint_ips
    m = tmp_path / "m" / "web.yaml"
    write(m, manifest("web", "10.96.0.10", 80, "TCP", ips))
    write(tmp_path / "m" / "other.yaml", manifest("other", "10.96.0.11", 80, "TCP", ips[:1]))
    proc = daemon(topo, mode)
    assert wait_until(lambda: topo.probe("tcp", "10.96.0.10", "80", "1", "0.5")["fail"] == 0)
    stop = tmp_path / "stop"
    client = topo.client.popen(sys.executable, str(Path(__file__).parent / "probe.py"), "loop", "10.96.0.10",
                               "80", str(stop), "120", stdout=subprocess.PIPE)
    try:
        sets = [ips, ips[:2], ips[1:], [ips[0], ips[2]]]
        before_restart = 0
        for i in range(300):  # bounded: stops once 100 syncs have happened (a busy machine coalesces more)
            # Every sync changes the serving set of web (never empty) and churns the other service.
            write(m, manifest("web", "10.96.0.10", 80, "TCP", sets[i % len(sets)]))
            write(tmp_path / "m" / "other.yaml", manifest("other", "10.96.0.11", 80, "TCP", [ips[i % 3]]))
            time.sleep(0.1)
            if i == 55:  # a proxy restart in the middle: the new process re-syncs fully, atomically
                before_restart = sync_count(metrics(topo))
                proc.terminate()
                proc.wait(timeout=10)
                proc = daemon(topo, mode)
            elif i > 55 and i % 10 == 0 and before_restart + sync_count(metrics(topo)) >= 105:
                break
        syncs = before_restart + sync_count(metrics(topo))
    finally:
        stop.touch()
        out, _ = client.communicate(timeout=30)
    result = json.loads(out)
    assert result["fail"] == 0, result
    assert sum(result["ok"].values()) > 100
    assert syncs >= 100, f"only {syncs} syncs"


def test_self_repair_after_rules_are_flushed(mode: str, daemon: Callable[..., object], tmp_path: Path,
                                             topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    write(tmp_path / "m" / "web.yaml", manifest("web", "10.96.0.10", 80, "TCP", topo.endpoint_ips))
    daemon(topo, mode, "--repair-period", "0.2")
    assert wait_until(lambda: topo.probe("tcp", "10.96.0.10", "80", "1", "0.5")["fail"] == 0)
    if mode == "nftables":
        topo.node.run("nft", "flush", "ruleset")
    else:
        topo.node.run("iptables", "-t", "nat", "-F")
    assert wait_until(lambda: topo.probe("tcp", "10.96.0.10", "80", "1", "0.5")["fail"] == 0, timeout=10)
    assert "cnipy_proxy_repairs_total" in metrics(topo)


def test_bad_manifest_does_not_stop_other_services(mode: str, daemon: Callable[..., subprocess.Popen[str]],
                                                  tmp_path: Path, topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    write(tmp_path / "m" / "web.yaml", manifest("web", "10.96.0.10", 80, "TCP", topo.endpoint_ips))
    write(tmp_path / "m" / "bad.yaml", manifest("bad", "10.96.0.99", 99999, "TCP", topo.endpoint_ips))
    proc = daemon(topo, mode)
    assert wait_until(lambda: topo.probe("tcp", "10.96.0.10", "80", "1", "0.5")["fail"] == 0)
    assert "cnipy_proxy_manifest_problems{" in metrics(topo)
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert "bad.yaml" in err and "spec.ports[0].port" in err


LB = """
kind: Service
metadata: {{name: lb, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.12
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{{name: p, port: 80, targetPort: 8080, nodePort: 30081}}]
---
kind: EndpointSlice
metadata: {{name: lb-1, namespace: default, labels: {{kubernetes.io/service-name: lb}}}}
addressType: IPv4
ports: [{{name: p, port: 8080}}]
endpoints:
- {{addresses: ["{ip}"], nodeName: {node}}}
"""


def test_health_check_node_port(mode: str, daemon: Callable[..., object], tmp_path: Path,
                                topo_factory: Callable[..., Topology]) -> None:
    topo = topo_factory(1)
    m = tmp_path / "m" / "lb.yaml"
    write(m, LB.format(ip=topo.endpoint_ips[0], node="node1"))
    daemon(topo, mode)
    get = ("import json, urllib.request as u, urllib.error as e\n"
           "try:\n    r = u.urlopen('http://192.168.100.1:32000/', timeout=2); print(r.status, r.read().decode())\n"
           "except e.HTTPError as x:\n    print(x.code, x.read().decode())\n"
           "except OSError as x:\n    print(0, '{}')\n")

    def health() -> tuple[int, dict[str, object]]:
        code, body = topo.client.run(sys.executable, "-c", get).stdout.split(" ", 1)
        return int(code), json.loads(body)

    assert wait_until(lambda: health()[0] == 200)
    assert health()[1]["localEndpoints"] == 1
    write(m, LB.format(ip=topo.endpoint_ips[0], node="node2"))  # the endpoint is elsewhere now
    assert wait_until(lambda: health()[0] == 503)

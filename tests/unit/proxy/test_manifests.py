from __future__ import annotations

import json
import textwrap
from ipaddress import ip_address
from pathlib import Path

from cnipy.proxy.manifests import ManifestSource, load
from cnipy.proxy.model import ServiceKey, ServiceType, TrafficPolicy

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  externalIPs: [192.0.2.1]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
  conditions: {ready: true}
  nodeName: node1
- addresses: [10.244.2.2]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node2
"""

PODS = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: api, namespace: default}
  spec:
    clusterIP: 10.96.0.20
    selector: {app: api}
    ports: [{port: 80, targetPort: web}]
- apiVersion: v1
  kind: Pod
  metadata: {name: api-1, namespace: default, labels: {app: api, tier: be}}
  spec:
    nodeName: node1
    containers: [{name: c, ports: [{name: web, containerPort: 9000}]}]
  status: {podIP: 10.244.1.7, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: other, namespace: default, labels: {app: other}}
  spec: {containers: []}
  status: {podIP: 10.244.1.8}
"""


def test_service_and_slice(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(SERVICE)
    result = load([tmp_path])
    assert result.problems == ()
    svc = result.state.services[ServiceKey("shop", "web")]
    assert svc.type is ServiceType.NODE_PORT
    assert svc.cluster_ips == (ip_address("10.96.0.10"),)
    assert svc.ports[0].node_port == 30080 and svc.ports[0].target_port == 8080
    assert svc.external_traffic_policy is TrafficPolicy.LOCAL
    assert svc.affinity_timeout == 60
    (sl,) = result.state.slices[svc.key]
    assert [e.terminating for e in sl.endpoints] == [False, True]


def test_selector_and_pods_with_named_target_port(tmp_path: Path) -> None:
    (tmp_path / "api.yml").write_text(PODS)
    result = load([tmp_path])
    assert result.problems == ()
    (sl,) = result.state.slices[ServiceKey("default", "api")]
    assert [e.addresses for e in sl.endpoints] == [(ip_address("10.244.1.7"),)]
    assert sl.ports[0].port == 9000


def test_bad_manifest_reports_file_and_field_and_keeps_others(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(SERVICE)
    bad = textwrap.dedent("""
        kind: Service
        metadata: {name: broken}
        spec:
          clusterIP: 10.96.0.99
          ports: [{port: 99999}]
        """)
    (tmp_path / "bad.yaml").write_text(bad)
    (tmp_path / "worse.json").write_text("{not json")
    (tmp_path / "label.json").write_text(json.dumps({
        "kind": "Pod", "metadata": {"name": "p", "labels": {"-bad": "x"}}}))
    result = load([tmp_path])
    problems = {(Path(p.file).name, p.field) for p in result.problems}
    assert ("bad.yaml", "spec.ports[0].port") in problems
    assert ("worse.json", "(document)") in problems
    assert ("label.json", "metadata.labels") in problems
    assert ServiceKey("shop", "web") in result.state.services
    assert "bad.yaml: spec.ports[0].port: must be a port number" in str(
        next(p for p in result.problems if p.file.endswith("bad.yaml")))


def test_source_notices_changes(tmp_path: Path) -> None:
    src = ManifestSource([tmp_path])
    assert src.changed()
    src.load()
    assert not src.changed()
    (tmp_path / "web.yaml").write_text(SERVICE)
    assert src.changed()
    assert ServiceKey("shop", "web") in src.load().state.services


def test_headless_and_external_name_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(textwrap.dedent("""
        kind: Service
        metadata: {name: headless}
        spec: {clusterIP: None, ports: [{port: 80}]}
        ---
        kind: Service
        metadata: {name: ext}
        spec: {type: ExternalName, externalName: example.com}
        """))
    result = load([tmp_path])
    assert result.problems == () and not result.state.services

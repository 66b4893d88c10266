from __future__ import annotations

from ipaddress import ip_address

from cnipy.proxy.plan import build_plan
from tests.unit.proxy.builders import config, endpoints, service, state


def test_ready_endpoints_sorted() -> None:
    s = service("web", "10.96.0.10")
    plan = build_plan(state((s, endpoints(s, "10.244.1.9", "10.244.1.10", "10.244.1.2"))), config())
    (p,) = plan.ports
    assert [str(b) for b in p.all_backends] == ["10.244.1.2:8080", "10.244.1.9:8080", "10.244.1.10:8080"]
    assert p.name == "default/web"


def test_terminating_fallback_only_when_nothing_ready() -> None:
    s = service("web", "10.96.0.10")
    sl = endpoints(s, "10.244.1.2", "10.244.1.3", terminating=("10.244.1.3",))
    (p,) = build_plan(state((s, sl)), config()).ports
    assert [b.ip for b in p.all_backends] == [ip_address("10.244.1.2")]
    sl = endpoints(s, "10.244.1.2", "10.244.1.3", terminating=("10.244.1.2", "10.244.1.3"))
    (p,) = build_plan(state((s, sl)), config()).ports
    assert len(p.all_backends) == 2
    sl = endpoints(s, "10.244.1.2", not_ready=("10.244.1.2",))
    (p,) = build_plan(state((s, sl)), config()).ports
    assert p.all_backends == ()


def test_local_policies() -> None:
    s = service("web", "10.96.0.10", type="NodePort", node_port=30080, etp="Local", itp="Local")
    sl = endpoints(s, "10.244.1.2", "10.244.2.2", nodes={"10.244.2.2": "node2"})
    (p,) = build_plan(state((s, sl)), config()).ports
    assert [str(b.ip) for b in p.local_backends] == ["10.244.1.2"]
    assert p.internal_backends == p.local_backends == p.external_backends
    assert len(p.all_backends) == 2


def test_topology_hints() -> None:
    from dataclasses import replace

    s = service("web", "10.96.0.10")
    sl = endpoints(s, "10.244.1.2", "10.244.2.2", "10.244.3.2")
    zones = {"10.244.1.2": ("a",), "10.244.2.2": ("a",), "10.244.3.2": ("b",)}
    hinted = replace(sl, endpoints=tuple(replace(e, hint_zones=zones[str(e.addresses[0])]) for e in sl.endpoints))
    (p,) = build_plan(state((s, hinted)), config(zone="a")).ports
    assert [str(b.ip) for b in p.all_backends] == ["10.244.1.2", "10.244.2.2"]
    (p,) = build_plan(state((s, hinted)), config(zone="c")).ports  # nothing meant for this zone: all
    assert len(p.all_backends) == 3
    (p,) = build_plan(state((s, hinted)), config()).ports  # zone unknown: hints ignored
    assert len(p.all_backends) == 3
    partly = replace(hinted, endpoints=(*hinted.endpoints[:2], replace(hinted.endpoints[2], hint_zones=())))
    (p,) = build_plan(state((s, partly)), config(zone="a")).ports  # not every endpoint hinted: ignored
    assert len(p.all_backends) == 3

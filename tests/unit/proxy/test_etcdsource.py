from __future__ import annotations

import json
import time
from typing import Any

from cnipy.overlay.etcd import FakeEtcd
from cnipy.proxy.etcdsource import EtcdSource
from cnipy.proxy.model import ServiceKey

P = "/cnipy.io/proxy"


def svc(ip: str, port: Any = 80) -> str:
    return json.dumps({"kind": "Service", "spec": {"clusterIP": ip, "ports": [{"port": port}]}})


def eps(name: str, ip: str) -> str:
    return json.dumps({"kind": "EndpointSlice", "metadata": {"labels": {"kubernetes.io/service-name": name}},
                       "endpoints": [{"addresses": [ip]}], "ports": [{"port": 8080}]})


def wait_snapshot(src: EtcdSource, cond: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        got = src.poll()
        if got is not None:
            last = got
        if last is not None and cond(last):
            return last
        time.sleep(0.02)
    raise AssertionError(f"no matching snapshot; last: {last}")


def test_list_then_watch_puts_and_deletes() -> None:
    etcd = FakeEtcd()
    etcd.put(f"{P}/services/default/web", svc("10.96.0.10"))
    etcd.put(f"{P}/endpointslices/default/web-1", eps("web", "10.244.1.2"))
    etcd.put(f"{P}/services/default/bad", svc("10.96.0.11", port=0))
    etcd.put(f"{P}/unrelated", "x")
    src = EtcdSource(etcd, P, min_backoff=0.02, max_backoff=0.05)
    try:
        st, problems = wait_snapshot(src, lambda s: bool(s[0].services))
        assert list(st.services) == [ServiceKey("default", "web")]
        (p,) = problems
        assert (p.file, p.field) == (f"etcd:{P}/services/default/bad", "spec.ports[0].port")
        etcd.put(f"{P}/endpointslices/default/web-1", eps("web", "10.244.1.3"))
        etcd.put(f"{P}/services/default/api", svc("10.96.0.12"))
        st, _ = wait_snapshot(src, lambda s: ServiceKey("default", "api") in s[0].services)
        assert str(st.slices[ServiceKey("default", "web")][0].endpoints[0].addresses[0]) == "10.244.1.3"
        etcd.delete(f"{P}/services/default/web")
        wait_snapshot(src, lambda s: ServiceKey("default", "web") not in s[0].services)
    finally:
        src.stop()


def test_outage_backs_off_and_lists_again() -> None:
    etcd = FakeEtcd()
    etcd.put(f"{P}/services/default/web", svc("10.96.0.10"))
    src = EtcdSource(etcd, P, min_backoff=0.02, max_backoff=0.05)
    try:
        wait_snapshot(src, lambda s: bool(s[0].services))
        etcd.down = True
        deadline = time.monotonic() + 10
        while src.errors < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert src.errors >= 2
        etcd.down = False
        etcd.put(f"{P}/services/default/api", svc("10.96.0.12"))  # changed while we were not watching
        wait_snapshot(src, lambda s: ServiceKey("default", "api") in s[0].services)
        assert src.lists >= 2
    finally:
        src.stop()

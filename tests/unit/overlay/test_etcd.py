from __future__ import annotations

import threading
import time

import pytest

from cnipy.overlay.etcd import Compare, Delete, Etcd, EtcdUnavailable, Event, FakeEtcd, LeaseNotFound, Put


def test_put_get_prefix_and_revisions(etcd: Etcd, prefix: str) -> None:
    r1 = etcd.put(f"{prefix}/a", "1")
    r2 = etcd.put(f"{prefix}/b", "2")
    etcd.put(f"{prefix}x", "not under the prefix")
    kvs, rev = etcd.get(f"{prefix}/", prefix=True)
    assert [(kv.key, kv.value) for kv in kvs] == [(f"{prefix}/a", "1"), (f"{prefix}/b", "2")]
    assert r2 > r1 and rev >= r2
    etcd.put(f"{prefix}/a", "3")
    (kv,), _ = etcd.get(f"{prefix}/a")
    assert kv.create_revision == r1 and kv.mod_revision > r2
    etcd.delete(f"{prefix}/a")
    assert etcd.get(f"{prefix}/a")[0] == []


def test_txn_create_only_once(etcd: Etcd, prefix: str) -> None:
    key = f"{prefix}/k"
    assert etcd.txn([Compare(key, "CREATE", 0)], [Put(key, "first")])
    assert not etcd.txn([Compare(key, "CREATE", 0)], [Put(key, "second")], [Put(f"{prefix}/lost", "x")])
    assert etcd.get(key)[0][0].value == "first"
    assert etcd.get(f"{prefix}/lost")[0][0].value == "x"
    (kv,), _ = etcd.get(key)
    assert etcd.txn([Compare(key, "MOD", kv.mod_revision)], [Put(key, "third")])
    assert not etcd.txn([Compare(key, "MOD", kv.mod_revision)], [Put(key, "fourth")])
    assert etcd.txn([Compare(key, "VALUE", "third")], [Delete(key)])
    assert etcd.get(key)[0] == []


def test_lease_keys_go_when_the_lease_is_revoked(etcd: Etcd, prefix: str) -> None:
    lid = etcd.grant(30)
    etcd.put(f"{prefix}/leased", "v", lease=lid)
    assert etcd.keepalive(lid) > 0
    etcd.revoke(lid)
    assert etcd.get(f"{prefix}/leased")[0] == []
    with pytest.raises(LeaseNotFound):
        etcd.keepalive(lid)


def test_watch_sees_puts_and_deletes(etcd: Etcd, prefix: str) -> None:
    _, rev = etcd.get(f"{prefix}/", prefix=True)
    w = etcd.watch(f"{prefix}/", prefix=True, start_revision=rev + 1)
    got: list[Event] = []

    def collect() -> None:
        for batch in w:
            got.extend(batch)
            if len(got) >= 2:
                return

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    etcd.put(f"{prefix}/w", "1")
    etcd.delete(f"{prefix}/w")
    t.join(5)
    w.close()
    assert [(e.type, e.kv.key) for e in got] == [("PUT", f"{prefix}/w"), ("DELETE", f"{prefix}/w")]


def test_fake_leases_expire_on_its_clock() -> None:
    now = [100.0]
    etcd = FakeEtcd(clock=lambda: now[0])
    lid = etcd.grant(10)
    etcd.put("/k", "v", lease=lid)
    now[0] += 9
    etcd.keepalive(lid)
    now[0] += 9
    assert etcd.get("/k")[0] != []
    now[0] += 2
    assert etcd.get("/k")[0] == []
    with pytest.raises(LeaseNotFound):
        etcd.keepalive(lid)


def test_fake_down_fails_every_call_and_watch() -> None:
    etcd = FakeEtcd()
    w = etcd.watch("/", prefix=True)
    etcd.down = True
    with pytest.raises(EtcdUnavailable):
        etcd.get("/k")
    with pytest.raises(EtcdUnavailable):
        next(iter(w))


def test_client_reports_a_stopped_etcd_as_unavailable() -> None:
    from cnipy.overlay.etcd import Client
    from tests.unit.overlay.conftest import free_port

    started = time.monotonic()
    with pytest.raises(EtcdUnavailable):
        Client(f"http://127.0.0.1:{free_port()}", timeout=1).get("/k")
    assert time.monotonic() - started < 2

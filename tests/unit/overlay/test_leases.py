from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import pytest

from cnipy.overlay import config as C
from cnipy.overlay.etcd import Etcd, FakeEtcd, FileEtcd
from cnipy.overlay.leases import Lease, LeaseLost, LeaseStore, NoSubnetAvailable, StoreUnavailable

CONF = C.parse({"Network": "10.244.0.0/16", "SubnetLen": 24})


def want(node: str) -> Lease:
    return Lease(ipaddress.IPv4Network("0.0.0.0/32"), node, ipaddress.ip_address("192.0.2.1"), "vxlan",
                 "0e:00:00:00:00:01")


def test_concurrent_agents_never_share_a_subnet(etcd: Etcd, prefix: str) -> None:
    small = C.parse({"Network": "10.9.0.0/24", "SubnetLen": 28})  # 14 usable subnets, 12 agents: contention
    got: dict[str, ipaddress.IPv4Network] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            got[f"n{i}"] = LeaseStore(etcd, prefix, ttl=60).acquire(small, want(f"n{i}")).subnet
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(set(got.values())) == 12
    leases, _ = LeaseStore(etcd, prefix).snapshot()
    assert sorted(lease.node for lease in leases) == sorted(got)


def test_a_restarted_node_gets_its_subnet_back(etcd: Etcd, prefix: str) -> None:
    first = LeaseStore(etcd, prefix, ttl=60).acquire(CONF, want("a"))
    LeaseStore(etcd, prefix, ttl=60).acquire(CONF, want("b"))
    again = LeaseStore(etcd, prefix, ttl=60).acquire(CONF, want("a"))
    assert again.subnet == first.subnet
    assert len(LeaseStore(etcd, prefix).snapshot()[0]) == 2


def test_previous_subnet_is_preferred_when_free(etcd: Etcd, prefix: str) -> None:
    prev = ipaddress.IPv4Network("10.244.77.0/24")
    assert LeaseStore(etcd, prefix, ttl=60).acquire(CONF, want("a"), prev).subnet == prev
    other = LeaseStore(etcd, prefix, ttl=60).acquire(CONF, want("b"), prev)
    assert other.subnet != prev


def test_exhaustion_is_reported(etcd: Etcd, prefix: str) -> None:
    tiny = C.parse({"Network": "10.9.0.0/29", "SubnetLen": 30, "SubnetMin": "10.9.0.0", "SubnetMax": "10.9.0.4"})
    LeaseStore(etcd, prefix, ttl=60).acquire(tiny, want("a"))
    LeaseStore(etcd, prefix, ttl=60).acquire(tiny, want("b"))
    with pytest.raises(NoSubnetAvailable):
        LeaseStore(etcd, prefix, ttl=60).acquire(tiny, want("c"))


def test_release_gives_the_subnet_back(etcd: Etcd, prefix: str) -> None:
    store = LeaseStore(etcd, prefix, ttl=60)
    store.acquire(CONF, want("a"))
    assert store.renew() > 0
    store.release()
    assert store.snapshot()[0] == []


def test_expired_lease_is_lost_then_reacquired() -> None:
    now = [0.0]
    etcd = FakeEtcd(clock=lambda: now[0])
    store = LeaseStore(etcd, "/p", ttl=10)
    lease = store.acquire(CONF, want("a"))
    now[0] = 11
    etcd.tick()
    with pytest.raises(LeaseLost):
        store.renew()
    assert store.acquire(CONF, want("a"), lease.subnet).subnet == lease.subnet


def test_store_down_is_unavailable() -> None:
    etcd = FakeEtcd()
    etcd.down = True
    with pytest.raises(StoreUnavailable):
        LeaseStore(etcd, "/p").acquire(CONF, want("a"))


def test_watch_reports_peer_changes(etcd: Etcd, prefix: str) -> None:
    store = LeaseStore(etcd, prefix, ttl=60)
    _, rev = store.snapshot()
    w, changes = store.watch(rev)
    other = LeaseStore(etcd, prefix, ttl=60)
    lease = other.acquire(CONF, want("b"))
    other.release()
    seen = []
    for batch in changes:
        seen.extend(batch)
        if len(seen) >= 2:
            break
    w.close()
    assert [(c.subnet, c.lease) for c in seen] == [(lease.subnet, lease), (lease.subnet, None)]


def test_removing_a_node_deletes_its_leases_only(etcd: Etcd, prefix: str) -> None:
    a = LeaseStore(etcd, prefix, ttl=60).acquire(CONF, want("a"))
    LeaseStore(etcd, prefix, ttl=60).acquire(CONF, want("b"))
    assert LeaseStore(etcd, prefix).release_node("a") == [a.subnet]
    assert [lease.node for lease in LeaseStore(etcd, prefix).snapshot()[0]] == ["b"]


def test_static_file_store_is_safe_across_instances(tmp_path: Path) -> None:
    """Each agent (process) of the static mode opens the lease file on its own: flock keeps them apart."""
    path = str(tmp_path / "leases.json")
    small = C.parse({"Network": "10.9.0.0/24", "SubnetLen": 28})
    got: list[ipaddress.IPv4Network] = []

    def run(i: int) -> None:
        got.append(LeaseStore(FileEtcd(path), "/p", ttl=60).acquire(small, want(f"n{i}")).subnet)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 10 and len(set(got)) == 10
    assert len(LeaseStore(FileEtcd(path), "/p").snapshot()[0]) == 10


def test_malformed_entries_are_ignored_but_their_subnets_stay_taken(etcd: Etcd, prefix: str) -> None:
    tiny = C.parse({"Network": "10.9.0.0/29", "SubnetLen": 30, "SubnetMin": "10.9.0.0", "SubnetMax": "10.9.0.4"})
    etcd.put(f"{prefix}/subnets/garbage", "x")
    etcd.put(f"{prefix}/subnets/10.9.0.0-30", "not json")
    store = LeaseStore(etcd, prefix, ttl=60)
    assert store.snapshot()[0] == []
    assert str(store.acquire(tiny, want("a")).subnet) == "10.9.0.4/30"

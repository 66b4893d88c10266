"""The allocator over both stores: the fake and the disk store must behave the same."""

from __future__ import annotations

import ipaddress
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnipy.cni.errors import AddressExhausted, AddressUnavailable, CniError
from cnipy.ipam import Allocator, DiskStore, MemoryStore, Owner, RangeSet, Store

ip = ipaddress.ip_address


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    else:
        s = DiskStore.create(str(tmp_path), "net")
        yield s
        s.close()


def rs(*ranges: dict[str, str]) -> RangeSet:
    return RangeSet.from_json(list(ranges), "t")


def addrs(result: tuple[object, ...]) -> list[str]:
    return [str(c.address) for c in result]  # type: ignore[attr-defined]


def test_round_robin_skips_gateway_and_wraps(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/29"})])  # .1 gateway, .2-.6 usable
    got = [addrs(a.allocate(f"c{i}", "eth0"))[0] for i in range(5)]
    assert got == [f"10.0.0.{n}/29" for n in range(2, 7)]
    with pytest.raises(AddressExhausted):
        a.allocate("c9", "eth0")
    a.release("c1", "eth0")  # frees .3; round robin continues after .6 and wraps to it
    assert addrs(a.allocate("c10", "eth0")) == ["10.0.0.3/29"]
    with store.locked():
        assert store.last_reserved(0) == ip("10.0.0.3")


def test_dual_stack_and_gateway_in_result(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/24", "gateway": "10.0.0.254"}),
                          rs({"subnet": "2001:db8::/64"})])
    res = a.allocate("c", "eth0")
    assert addrs(res) == ["10.0.0.1/24", "2001:db8::2/64"]
    assert [str(c.gateway) for c in res] == ["10.0.0.254", "2001:db8::1"]
    assert a.missing("c", "eth0") == [] and len(a.missing("c", "eth1")) == 2


def test_duplicate_allocation_refused(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/24"})])
    a.allocate("c", "eth0")
    with pytest.raises(AddressUnavailable, match="duplicate"):
        a.allocate("c", "eth0")
    assert addrs(a.allocate("c", "eth1")) == ["10.0.0.3/24"]  # another interface of the same container is fine


def test_requested_addresses(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"}),
                          rs({"subnet": "2001:db8::/64"})])
    assert addrs(a.allocate("c1", "eth0", [ip("10.0.0.15")])) == ["10.0.0.15/24", "2001:db8::2/64"]
    with pytest.raises(AddressUnavailable, match="not available"):
        a.allocate("c2", "eth0", [ip("10.0.0.15")])
    with pytest.raises(AddressUnavailable, match="all requested"):
        a.allocate("c2", "eth0", [ip("10.0.0.30")])  # in the subnet but outside rangeStart..rangeEnd
    with pytest.raises(AddressUnavailable, match="gateway"):
        Allocator(store, [rs({"subnet": "10.9.0.0/24"})]).allocate("c3", "eth0", [ip("10.9.0.1")])
    # Every failure rolled back what it had reserved: only c1's two addresses remain.
    with store.locked():
        assert sorted(map(str, store.allocations())) == ["10.0.0.15", "2001:db8::2"]


def test_failure_in_second_set_rolls_back_the_first(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/24"}), rs({"subnet": "10.1.0.0/30"})])  # second: one address
    a.allocate("c1", "eth0")
    with pytest.raises(AddressExhausted):
        a.allocate("c2", "eth0")
    with store.locked():
        assert sorted(map(str, store.allocations())) == ["10.0.0.2", "10.1.0.2"]


def test_release_exact_then_legacy(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/24"})])
    with store.locked():
        store.reserve(Owner("old", None), ip("10.0.0.50"), 0)  # written by a pre-0.8 plugin: ID only
        store.reserve(Owner("c", "eth0"), ip("10.0.0.51"), 0)
        store.reserve(Owner("c", "eth1"), ip("10.0.0.52"), 0)
    assert a.held("old", "eth0") == [ip("10.0.0.50")]
    assert a.release("c", "eth0") == [ip("10.0.0.51")]
    assert a.release("c", "eth0") == []
    assert a.release("old", "whatever") == [ip("10.0.0.50")]
    assert a.held("c", "eth1") == [ip("10.0.0.52")]


def test_gc_keeps_valid_attachments_only(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/24"})])
    for c in ("a", "b", "c"):
        a.allocate(c, "eth0")
    with store.locked():
        store.reserve(Owner("old", None), ip("10.0.0.100"), 0)
        store.reserve(Owner("gone", None), ip("10.0.0.101"), 0)
    released = a.collect({("a", "eth0"), ("c", "eth1"), ("old", "eth0")})
    assert released == [ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.101")]
    assert a.held("a", "eth0") and a.held("old", "x") and not a.held("c", "eth0")
    assert a.collect(set()) == [ip("10.0.0.2"), ip("10.0.0.100")]


def test_usage(store: Store) -> None:
    a = Allocator(store, [rs({"subnet": "10.0.0.0/29"}), rs({"subnet": "2001:db8::/64"})])
    a.allocate("c", "eth0")
    u4, u6 = a.usage()
    assert (u4.size, u4.used, u4.free) == (5, 1, 4)
    assert u6.size == 2**64 - 2 and u6.used == 1


def test_memory_store_requires_the_lock() -> None:
    with pytest.raises(AssertionError):
        MemoryStore().allocations()


_ops = st.lists(st.tuples(st.sampled_from(["add", "add", "add", "del", "gc", "req"]), st.integers(0, 7),
                          st.sampled_from(["eth0", "eth1"]), st.integers(0, 20)), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ops)
def test_fake_and_disk_store_agree(tmp_path: Path, ops: list[tuple[str, int, str, int]]) -> None:
    """Random operation sequences give the same answers and the same final state on both stores."""
    sets = [rs({"subnet": "10.0.0.0/28", "rangeEnd": "10.0.0.9"}), rs({"subnet": "fd00::/124"})]
    disk = DiskStore.create(tempfile.mkdtemp(dir=tmp_path), "net")
    mem = MemoryStore()
    answers: list[list[object]] = [[], []]
    stores: list[Store] = [mem, disk]
    for i, store in enumerate(stores):
        a = Allocator(store, sets)
        for op, c, ifname, n in ops:
            try:
                if op == "add":
                    answers[i].append(addrs(a.allocate(f"c{c}", ifname)))
                elif op == "req":
                    answers[i].append(addrs(a.allocate(f"c{c}", ifname, [ip(f"10.0.0.{n}")])))
                elif op == "del":
                    answers[i].append(a.release(f"c{c}", ifname))
                else:
                    answers[i].append(a.collect({(f"c{k}", "eth0") for k in range(n % 8)}))
            except CniError as exc:
                answers[i].append(exc.code)
        with store.locked():
            answers[i].append(dict(store.allocations()))
            answers[i].append([store.last_reserved(0), store.last_reserved(1)])
    disk.close()
    assert answers[0] == answers[1]

"""The disk store writes exactly what the reference host-local writes."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from cnipy.cni.errors import InvalidConfig, IOFailure
from cnipy.ipam import DiskStore, Owner
from cnipy.ipam.disk import check_data_dir

ip = ipaddress.ip_address


def test_layout_and_bytes(tmp_path: Path) -> None:
    with DiskStore.create(str(tmp_path), "mynet") as s, s.locked():
        assert s.reserve(Owner("abc", "eth0"), ip("10.0.0.2"), 0)
        assert not s.reserve(Owner("xyz", "eth0"), ip("10.0.0.2"), 0)
        assert s.reserve(Owner("abc", "eth0"), ip("2001:db8::a"), 1)
    d = tmp_path / "mynet"
    assert sorted(p.name for p in d.iterdir()) == ["10.0.0.2", "2001:db8::a", "last_reserved_ip.0",
                                                   "last_reserved_ip.1", "lock"]
    assert (d / "10.0.0.2").read_bytes() == b"abc\r\neth0"
    assert (d / "last_reserved_ip.1").read_bytes() == b"2001:db8::a"
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_last_reserved_is_rewritten_whole_when_shorter(tmp_path: Path) -> None:
    """It is overwritten in place and cut to length (no O_TRUNC): nothing of a longer old address remains."""
    with DiskStore.create(str(tmp_path), "n") as s, s.locked():
        assert s.reserve(Owner("a", "eth0"), ip("10.0.0.100"), 0)
        assert s.reserve(Owner("b", "eth0"), ip("10.0.0.9"), 0)
        assert s.last_reserved(0) == ip("10.0.0.9")
    assert (tmp_path / "n" / "last_reserved_ip.0").read_bytes() == b"10.0.0.9"


def test_reads_what_others_wrote(tmp_path: Path) -> None:
    d = tmp_path / "n"
    d.mkdir()
    (d / "10.0.0.5").write_bytes(b"legacyid\n")          # pre-0.8 plugin: ID only (whitespace trimmed)
    (d / "10.0.0.6").write_bytes(b"")                    # a writer that crashed after O_EXCL
    (d / "10.0.0.7").write_bytes(b"c\r\neth0")
    (d / "junk").write_bytes(b"c\r\neth0")               # not an address: ignored
    (d / "last_reserved_ip.0").write_bytes(b"garbage")
    os.symlink("/etc/passwd", d / "10.0.0.8")            # never followed
    with DiskStore.create(str(tmp_path), "n") as s, s.locked():
        assert s.allocations() == {ip("10.0.0.5"): Owner("legacyid", None), ip("10.0.0.6"): None,
                                   ip("10.0.0.7"): Owner("c", "eth0")}
        assert s.last_reserved(0) is None and s.last_reserved(3) is None


def test_existing_does_not_create(tmp_path: Path) -> None:
    assert DiskStore.existing(str(tmp_path), "nope") is None
    assert list(tmp_path.iterdir()) == []


def test_lock_excludes_other_holders(tmp_path: Path) -> None:
    """Our lock is flock(2) on <dir>/lock: the same lock the Go plugin takes."""
    s = DiskStore.create(str(tmp_path), "n")
    order: list[str] = []
    fd = os.open(tmp_path / "n" / "lock", os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def take() -> None:
        with s.locked():
            order.append("store")

    t = threading.Thread(target=take)
    t.start()
    time.sleep(0.2)
    order.append("other")
    fcntl.flock(fd, fcntl.LOCK_UN)
    t.join(5)
    os.close(fd)
    s.close()
    assert order == ["other", "store"]


def test_reentrant_lock(tmp_path: Path) -> None:
    with DiskStore.create(str(tmp_path), "n") as s, s.locked(), s.locked():
        assert s.reserve(Owner("a", "eth0"), ip("10.0.0.2"), 0)


@pytest.mark.parametrize("bad", ["relative/dir", "/a/../etc", "/a/./b", "/a\0b", 5, ["/x"]])
def test_data_dir_validation(bad: object) -> None:
    with pytest.raises(InvalidConfig):
        check_data_dir(bad)


def test_data_dir_default_and_trailing_slash() -> None:
    assert check_data_dir("") == "/var/lib/cni/networks"
    assert check_data_dir("/tmp/x/") == "/tmp/x"


def test_unwritable_parent_is_an_io_failure(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(IOFailure):
        DiskStore.create(str(f), "n")


def test_crashed_writer_leftovers_are_skipped_then_collected(tmp_path: Path) -> None:
    """A writer killed between O_EXCL and write leaves an empty file: ADD skips it, GC removes it."""
    from cnipy.ipam import Allocator, RangeSet

    d = tmp_path / "n"
    d.mkdir()
    (d / "10.0.0.2").write_bytes(b"")
    with DiskStore.create(str(tmp_path), "n") as s:
        a = Allocator(s, [RangeSet.from_json([{"subnet": "10.0.0.0/29"}], "t")])
        assert str(a.allocate("c", "eth0")[0].address) == "10.0.0.3/29"
        assert a.collect({("c", "eth0")}) == [ip("10.0.0.2")]
    assert sorted(p.name for p in d.iterdir()) == ["10.0.0.3", "last_reserved_ip.0", "lock"]


def test_addresses_starting_with_a_colon(tmp_path: Path) -> None:
    with DiskStore.create(str(tmp_path), "n") as s, s.locked():
        assert s.reserve(Owner("c", "eth0"), ip("::5"), 0)
        assert s.allocations() == {ip("::5"): Owner("c", "eth0")}
    assert (tmp_path / "n" / "::5").read_bytes() == b"c\r\neth0"

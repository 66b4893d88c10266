"""Masquerade set-up, teardown, GC and CHECK against the in-memory iptables (no root)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from cnipy.cni.errors import RuleError
from cnipy.plugins.common import masq, run
from cnipy.plugins.common.fakes import FakeIptables

V4 = ipaddress.ip_interface("10.1.0.5/24")
V6 = ipaddress.ip_interface("fd00:1::5/64")


@pytest.fixture
def ipt() -> Iterator[FakeIptables]:
    fake = FakeIptables()
    with run.using(fake):
        yield fake


def chains(fake: FakeIptables, family: str = "iptables") -> list[str]:
    return sorted(c for c in fake.tables[family] if c.startswith("CNIPY-"))


def test_setup_is_idempotent_and_dual_stack(ipt: FakeIptables) -> None:
    att = masq.Attachment("net1", "eth0", "c1")
    masq.setup("iptables", att, [V4, V6])
    masq.setup("iptables", att, [V4, V6])
    for family in ("iptables", "ip6tables"):
        assert chains(ipt, family) == [att.chain]
        assert len(ipt.tables[family]["POSTROUTING"]) == 1
        assert len(ipt.tables[family][att.chain]) == 2
    assert masq.missing("iptables", att, [V4, V6]) == []
    masq.teardown(att)
    assert chains(ipt) == chains(ipt, "ip6tables") == []
    assert ipt.tables["iptables"]["POSTROUTING"] == []
    masq.teardown(att)  # idempotent


def test_readdress_replaces_the_old_jump(ipt: FakeIptables) -> None:
    att = masq.Attachment("net1", "eth0", "c1")
    masq.setup("iptables", att, [V4])
    masq.setup("iptables", att, [ipaddress.ip_interface("10.1.0.9/24")])
    assert [r.split()[1] for r in ipt.tables["iptables"]["POSTROUTING"]] == ["10.1.0.9/32"]


def test_gc_keeps_valid_attachments_and_other_networks(ipt: FakeIptables) -> None:
    keep, stale = masq.Attachment("net1", "eth0", "c1"), masq.Attachment("net1", "eth0", "c2")
    other = masq.Attachment("net2", "eth0", "c9")
    for att, ip in ((keep, "10.1.0.5/24"), (stale, "10.1.0.6/24"), (other, "10.2.0.5/24")):
        masq.setup("iptables", att, [ipaddress.ip_interface(ip)])
    ipt.tables["iptables"]["FOREIGN"] = ["-j ACCEPT"]
    masq.gc("net1", [("c1", "eth0")])
    assert chains(ipt) == sorted([keep.chain, other.chain])
    assert "FOREIGN" in ipt.tables["iptables"]
    assert len(ipt.tables["iptables"]["POSTROUTING"]) == 2


def test_missing_names_what_is_gone(ipt: FakeIptables) -> None:
    att = masq.Attachment("net1", "eth0", "c1")
    masq.setup("iptables", att, [V4])
    ipt.tables["iptables"]["POSTROUTING"] = []
    assert masq.missing("iptables", att, [V4]) == [f"POSTROUTING jump for 10.1.0.5 to {att.chain} is missing"]


def test_a_failing_restore_is_a_rule_error(ipt: FakeIptables) -> None:
    with pytest.raises(RuleError):
        run.run(["iptables-restore", "-w", "--noflush"], "*nat\n-D POSTROUTING -j NOPE\nCOMMIT\n", what="x")
    assert run.try_run(["nft", "-j", "list", "ruleset"]) is None

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnipy.cni.errors import InvalidConfig
from cnipy.ipam.ranges import IPAddress, Range, RangeSet, parse_ip, parse_ip_maybe_prefix

ip = ipaddress.ip_address


def test_defaults_like_the_reference() -> None:
    r = Range.from_json({"subnet": "10.1.2.0/24"})
    assert (r.start, r.end, r.gateway) == (ip("10.1.2.1"), ip("10.1.2.254"), ip("10.1.2.1"))
    r6 = Range.from_json({"subnet": "2001:db8::/120"})
    assert (r6.start, r6.end, r6.gateway) == (ip("2001:db8::1"), ip("2001:db8::ff"), ip("2001:db8::1"))
    assert r.size() == 253 and r6.size() == 254


def test_explicit_start_end_gateway() -> None:
    r = Range.from_json({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.100", "rangeEnd": "10.1.2.110",
                         "gateway": "10.1.2.254"})
    assert r.contains(ip("10.1.2.100")) and r.contains(ip("10.1.2.110"))
    assert not r.contains(ip("10.1.2.99")) and not r.contains(ip("10.1.2.111"))
    assert not r.contains(ip("2001:db8::1"))
    assert r.size() == 11


@pytest.mark.parametrize("raw, msg", [
    ({"subnet": "10.1.2.0/31"}, "too small"),
    ({"subnet": "10.1.2.0/32"}, "too small"),
    ({"subnet": "2001:db8::/127"}, "too small"),
    ({"subnet": "10.1.2.5/24"}, "host bits"),
    ({"subnet": "10.1.2.0"}, "CIDR"),
    ({"subnet": "10.1.2.0/255.255.255.0"}, "prefix"),
    ({"subnet": "10.1.2.0/33"}, "prefix"),
    ({"subnet": "fe80::%eth0/64"}, "not an IP"),
    ({"subnet": 5}, "CIDR"),
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}, "not in network"),
    ({"subnet": "10.1.2.0/24", "rangeEnd": "10.1.2.255x"}, "not an IP"),
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.9", "rangeEnd": "10.1.2.8"}, "after"),
    ({"subnet": "10.1.2.0/24", "gateway": "2001:db8::1"}, "family"),
    ({"subnet": "10.1.2.0/24", "gateway": 7}, "must be a string"),
    ("10.1.2.0/24", "object"),
])
def test_bad_ranges(raw: object, msg: str) -> None:
    with pytest.raises(InvalidConfig, match=msg):
        Range.from_json(raw)


def test_range_set_rules() -> None:
    with pytest.raises(InvalidConfig, match="mixed"):
        RangeSet.from_json([{"subnet": "10.1.0.0/24"}, {"subnet": "2001:db8::/64"}], "s")
    with pytest.raises(InvalidConfig, match="overlap"):
        RangeSet.from_json([{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/16"}], "s")
    with pytest.raises(InvalidConfig, match="non-empty"):
        RangeSet.from_json([], "s")
    ok = RangeSet.from_json([{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}], "s")
    assert ok.range_for(ip("10.2.0.7")) is ok.ranges[1]
    assert str(ok) == "10.1.0.1-10.1.0.254,10.2.0.1-10.2.0.254"


def test_ipv4_mapped_counts_as_ipv4() -> None:
    assert parse_ip("::ffff:10.0.0.1", "x") == ip("10.0.0.1")
    assert parse_ip_maybe_prefix("10.0.0.9/24", "x") == ip("10.0.0.9")
    with pytest.raises(InvalidConfig):
        parse_ip_maybe_prefix("10.0.0.9/40", "x")


def _reference_order(rs: RangeSet, last: IPAddress | None) -> list[str]:
    """The reference iterator, transcribed as a spec: start after `last` (or at the first start), wrap once."""
    ranges = rs.ranges
    if last is not None and rs.contains(last):
        idx = next(i for i, r in enumerate(ranges) if r.contains(last))
        cur: IPAddress | None = last
    else:
        idx, cur = 0, None
    out: list[str] = []
    start = None
    while True:
        r = ranges[idx]
        if cur is None:
            cur = r.start
        elif cur == r.end:
            idx = (idx + 1) % len(ranges)
            r = ranges[idx]
            cur = r.start
        else:
            cur = cur + 1
        if start is None:
            start = cur
        elif cur == start:
            return out
        if cur != r.gateway:
            out.append(str(cur))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 15)), min_size=1, max_size=3,
                unique_by=lambda t: t[0]),
       st.one_of(st.none(), st.integers(0, 4 * 16 - 1)))
def test_candidates_follow_the_reference_order(spec: list[tuple[int, int, int]], last: int | None) -> None:
    raws = []
    for net, a, b in spec:
        lo, hi = sorted((a + 1, max(b, 1)))
        raws.append({"subnet": f"10.{net}.0.0/28", "rangeStart": f"10.{net}.0.{lo}", "rangeEnd": f"10.{net}.0.{hi}",
                     "gateway": f"10.{net}.0.{(a + b) % 14 + 1}"})
    rs = RangeSet.from_json(raws, "s")
    last_ip = None if last is None else ip(f"10.{last // 16}.0.{last % 16}")
    got = [str(a) for a, _ in rs.candidates(last_ip)]
    assert got == _reference_order(rs, last_ip)
    assert len(got) == len(set(got)) == rs.size()

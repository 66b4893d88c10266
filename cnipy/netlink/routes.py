"""Route verbs: add, list and delete routes, described by a frozen `RouteSpec`."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from cnipy.netlink.errors import AlreadyExists
from cnipy.netlink.route import guarded, ipr, link_index

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RTNH_F_ONLINK = 0x4
RTPROT_BOOT = 3


@dataclass(frozen=True)
class RouteSpec:
    """One route. `table` None means the main table; `scope` None lets the kernel choose (as `ip route`)."""

    dst: IPNetwork
    gw: IPAddress | None = None
    dev: str | None = None
    src: IPAddress | None = None
    scope: int | None = None
    table: int | None = None
    metric: int = 0
    mtu: int = 0
    advmss: int = 0
    onlink: bool = False
    proto: str = ""  # as read back: "kernel", "boot", "static", ... (ignored when adding)

    @property
    def family(self) -> int:
        return self.dst.version

    def key(self) -> tuple[Any, ...]:
        """What makes two routes the same route for CHECK (the kernel's own identity plus gw and dev)."""
        return (self.dst, self.gw, self.dev, self.table or RT_TABLE_MAIN, self.metric)


def _kwargs(sock: Any, spec: RouteSpec) -> dict[str, Any]:
    kw: dict[str, Any] = {"dst": str(spec.dst), "proto": RTPROT_BOOT,  # what `ip route add` sets
                          "family": socket.AF_INET if spec.family == 4 else socket.AF_INET6}
    if spec.gw is not None:
        kw["gateway"] = str(spec.gw)
    if spec.dev:
        kw["oif"] = link_index(sock, spec.dev)
    if spec.src is not None:
        kw["prefsrc"] = str(spec.src)
    if spec.scope is not None:
        kw["scope"] = spec.scope
    if spec.table is not None:
        kw["table"] = spec.table
    if spec.metric:
        kw["priority"] = spec.metric
    metrics = {}
    if spec.mtu:
        metrics["mtu"] = spec.mtu
    if spec.advmss:
        metrics["advmss"] = spec.advmss
    if metrics:
        kw["metrics"] = metrics
    if spec.onlink:
        kw["flags"] = RTNH_F_ONLINK
    return kw


def add_route(netns: str | None, spec: RouteSpec, *, exist_ok: bool = False, append: bool = False) -> None:
    """Add a route; AlreadyExists unless `exist_ok`. `append` adds beside an existing route to the same
    destination (another interface's default route in a multi-homed pod) instead of failing."""
    with ipr(netns) as sock:
        kw = _kwargs(sock, spec)
        try:
            with guarded(f"add route {spec.dst} via {spec.gw} dev {spec.dev}"):
                sock.route("append" if append else "add", **kw)
        except AlreadyExists:
            if not exist_ok:
                raise


def del_route(netns: str | None, spec: RouteSpec) -> None:
    """Delete a route (NotFound when there is no such route)."""
    with ipr(netns) as sock:
        kw = _kwargs(sock, spec)
        kw.pop("metrics", None)
        kw.pop("proto", None)
        kw.pop("flags", None)
        with guarded(f"delete route {spec.dst} via {spec.gw} dev {spec.dev}"):
            sock.route("del", **kw)


_PROTO = {2: "kernel", 3: "boot", 4: "static", 16: "dhcp", 186: "bgp", 188: "ospf"}


def list_routes(netns: str | None, family: int | None = None, table: int | None = RT_TABLE_MAIN,
                dev: str | None = None) -> list[RouteSpec]:
    """Routes in `table` (None: every table but local) of `family` (4, 6 or None), optionally of one link."""
    with ipr(netns) as sock, guarded("list routes"):
        names = {int(m["index"]): m.get_attr("IFLA_IFNAME") for m in sock.get_links()}
        fams = [socket.AF_INET, socket.AF_INET6] if family is None else \
            [socket.AF_INET if family == 4 else socket.AF_INET6]
        msgs = [m for f in fams for m in sock.get_routes(family=f)]
    out: list[RouteSpec] = []
    for m in msgs:
        tbl = m.get_attr("RTA_TABLE") or m["table"]
        if tbl == 255 or (table is not None and tbl != table):
            continue
        if m["type"] != 1:  # unicast only: skip local, broadcast, multicast, unreachable
            continue
        v6 = m["family"] == socket.AF_INET6
        dst = m.get_attr("RTA_DST") or ("::" if v6 else "0.0.0.0")
        oif = m.get_attr("RTA_OIF")
        name = names.get(int(oif)) if oif is not None else None
        if dev is not None and name != dev:
            continue
        gw = m.get_attr("RTA_GATEWAY")
        src = m.get_attr("RTA_PREFSRC")
        metrics = m.get_attr("RTA_METRICS")
        mtu = advmss = 0
        if metrics is not None:
            mtu = int(metrics.get_attr("RTAX_MTU") or 0)
            advmss = int(metrics.get_attr("RTAX_ADVMSS") or 0)
        out.append(RouteSpec(
            dst=ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False),
            gw=ipaddress.ip_address(gw) if gw else None, dev=name,
            src=ipaddress.ip_address(src) if src else None, scope=int(m["scope"]), table=int(tbl),
            metric=int(m.get_attr("RTA_PRIORITY") or 0), mtu=mtu, advmss=advmss,
            onlink=bool(int(m["flags"]) & RTNH_F_ONLINK), proto=_PROTO.get(int(m["proto"]), str(m["proto"])),
        ))
    return out

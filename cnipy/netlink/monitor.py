"""Netlink monitoring: wait for link, route and neighbour changes in a namespace (to repair what was removed)."""

from __future__ import annotations

import select
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH

from cnipy.netlink.ns import entered


class Monitor:
    """`with Monitor(netns) as m: events = m.wait(1.0)`; each event is (kind, detail), e.g. ("RTM_DELROUTE",
    "10.244.2.0/24"), ("RTM_DELLINK", "cnipy.1"), ("RTM_DELNEIGH", "")."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: Any = None

    def __enter__(self) -> Monitor:
        with entered(self.netns):
            self._sock = IPRoute()
        self._sock.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._sock.close()

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        ready, _, _ = select.select([self._sock.fileno()], [], [], timeout)
        if not ready:
            return []
        out = []
        for msg in self._sock.get():
            kind = str(msg.get("event", ""))
            detail = ""
            if kind.endswith("LINK"):
                detail = str(msg.get_attr("IFLA_IFNAME") or "")
            elif kind.endswith("ROUTE") and msg.get_attr("RTA_DST"):
                detail = f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}"
            elif kind.endswith("NEIGH"):
                detail = str(msg.get_attr("NDA_DST") or "")
            out.append((kind, detail))
        return out

"""The one place that opens pyroute2 IPRoute sockets, in a given namespace."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrNetlinkError

from cnipy.netlink.errors import InterfaceNotFound, NetlinkError, translate
from cnipy.netlink.ns import entered

KernelFailure = (_PyrNetlinkError, OSError)


@contextmanager
def ipr(netns: str | None = None) -> Iterator[Any]:
    """An IPRoute socket opened inside `netns` (None: the caller's namespace); closed on exit."""
    with entered(netns):
        sock = IPRoute()
    try:
        yield sock
    finally:
        sock.close()


def link_by_name(sock: Any, name: str) -> Any:
    """The link message for `name`, asked for by name (one message; `link_lookup` dumps every link)."""
    try:
        return sock.link("get", ifname=name)[0]
    except _PyrNetlinkError as exc:
        if exc.code == errno.ENODEV:
            raise InterfaceNotFound(f"no link named {name}", exc.code) from exc
        raise translate(exc, f"get link {name}") from exc


def link_index(sock: Any, name: str) -> int:
    return int(link_by_name(sock, name)["index"])


def guarded(what: str) -> Any:
    """Decorator-free helper: use as `with kernel_op("set lo up"):` to translate pyroute2 errors."""
    return _Guard(what)


class _Guard:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if ev is not None and isinstance(ev, KernelFailure) and not isinstance(ev, NetlinkError):
            raise translate(ev, self.what) from ev

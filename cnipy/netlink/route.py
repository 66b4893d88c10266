"""The one place that opens pyroute2 IPRoute sockets, in a given namespace."""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrNetlinkError

from cnipy.netlink.errors import InterfaceNotFound, NetlinkError, translate
from cnipy.netlink.ns import entered

KernelFailure = (_PyrNetlinkError, OSError)
SIOCGIFINDEX = 0x8933


@contextmanager
def ipr(netns: str | None = None) -> Iterator[Any]:
    """An IPRoute socket opened inside `netns` (None: the caller's namespace); closed on exit."""
    with entered(netns):
        sock = IPRoute()
        # A datagram socket in the same namespace answers name -> index by ioctl, far cheaper than decoding a
        # netlink link message (the plugins resolve names a dozen times per ADD).
        sock.cnipy_inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        yield sock
    finally:
        sock.cnipy_inet.close()
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
    inet = getattr(sock, "cnipy_inet", None)
    raw = name.encode()
    if inet is None or len(raw) >= 16:
        return int(link_by_name(sock, name)["index"])
    try:
        reply = fcntl.ioctl(inet.fileno(), SIOCGIFINDEX, struct.pack("16si20x", raw, 0))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise InterfaceNotFound(f"no link named {name}", exc.errno) from exc
        raise translate(exc, f"get link {name}") from exc
    return int(struct.unpack_from("i", reply, 16)[0])


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

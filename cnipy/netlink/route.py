"""The one place that opens pyroute2 IPRoute sockets, in a given namespace.

Inside `session()` a thread keeps the sockets it opens, one per namespace, until the session ends: a plugin verb
makes a dozen netlink requests in two namespaces, and opening a socket (entering the namespace, binding, setting
pyroute2 up) costs more than most of the requests themselves.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrNetlinkError

from cnipy.netlink.errors import InterfaceNotFound, NetlinkError, translate
from cnipy.netlink.ns import entered

KernelFailure = (_PyrNetlinkError, OSError)
SIOCGIFFLAGS = 0x8913
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
IFF_RUNNING = 0x40
_IFNAMSIZ = 16

_local = threading.local()


def _open(netns: str | None) -> Any:
    with entered(netns):
        sock = IPRoute()
        # A datagram socket in the same namespace answers name -> index, flags and MAC by ioctl, far cheaper
        # than decoding a netlink link message (the plugins resolve names a dozen times per ADD).
        sock.cnipy_inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    return sock


def _close(sock: Any) -> None:
    sock.cnipy_inet.close()
    sock.close()


@contextmanager
def session() -> Iterator[None]:
    """Reuse one socket per namespace for every `ipr` on this thread within the body (nested: the outer one)."""
    if getattr(_local, "socks", None) is not None:
        yield
        return
    socks: dict[str | None, Any] = {}
    _local.socks = socks
    try:
        yield
    finally:
        _local.socks = None
        with ExitStack() as closing:
            for sock in socks.values():
                closing.callback(_close, sock)


@contextmanager
def ipr(netns: str | None = None) -> Iterator[Any]:
    """An IPRoute socket opened inside `netns` (None: the caller's namespace); closed on exit, or at the end of
    the thread's `session` when one is open."""
    socks: dict[str | None, Any] | None = getattr(_local, "socks", None)
    if socks is not None:
        sock = socks.get(netns)
        if sock is None:
            sock = socks[netns] = _open(netns)
        yield sock
        return
    sock = _open(netns)
    try:
        yield sock
    finally:
        _close(sock)


def link_by_name(sock: Any, name: str) -> Any:
    """The link message for `name`, asked for by name (one message; `link_lookup` dumps every link)."""
    try:
        return sock.link("get", ifname=name)[0]
    except _PyrNetlinkError as exc:
        if exc.code == errno.ENODEV:
            raise InterfaceNotFound(f"no link named {name}", exc.code) from exc
        raise translate(exc, f"get link {name}") from exc


def _ioctl(sock: Any, request: int, name: str) -> bytes | None:
    """An SIOCGIF* ioctl for `name` on the socket's datagram companion; None when there is none to use."""
    inet = getattr(sock, "cnipy_inet", None)
    raw = name.encode()
    if inet is None or len(raw) >= _IFNAMSIZ:
        return None
    try:
        return fcntl.ioctl(inet.fileno(), request, struct.pack("16s24x", raw))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise InterfaceNotFound(f"no link named {name}", exc.errno) from exc
        raise translate(exc, f"get link {name}") from exc


def link_index(sock: Any, name: str) -> int:
    reply = _ioctl(sock, SIOCGIFINDEX, name)
    if reply is None:
        return int(link_by_name(sock, name)["index"])
    return int(struct.unpack_from("i", reply, _IFNAMSIZ)[0])


def link_mac(sock: Any, name: str) -> str:
    """The link's hardware address as pyroute2 spells it ('aa:bb:..'), by ioctl when it can."""
    reply = _ioctl(sock, SIOCGIFHWADDR, name)
    if reply is None:
        return str(link_by_name(sock, name).get_attr("IFLA_ADDRESS") or "")
    return ":".join(f"{b:02x}" for b in reply[_IFNAMSIZ + 2:_IFNAMSIZ + 8])


def link_running(sock: Any, name: str) -> bool:
    """IFF_RUNNING: up with its operational state UP (or UNKNOWN, for devices that keep no state)."""
    reply = _ioctl(sock, SIOCGIFFLAGS, name)
    if reply is None:
        return bool(link_by_name(sock, name).get_attr("IFLA_OPERSTATE") == "UP")
    return bool(struct.unpack_from("H", reply, _IFNAMSIZ)[0] & IFF_RUNNING)


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

"""Network namespaces: enter a namespace only long enough to open a socket there.

A netlink socket stays bound to the namespace it was created in, so we switch the *calling thread* into the
target namespace with setns(2), create the socket, and switch back at once. The process never stays in another
namespace, and a missing namespace is never created (pyroute2's NetNS would create one).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from cnipy.netlink.errors import NamespaceNotFound, NetlinkError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetlinkError(f"setns failed: {os.strerror(err)}", err)


def resolve(netns: str) -> str:
    """A bare name means /run/netns/<name>; a path is taken as it is."""
    return netns if "/" in netns else f"{NETNS_RUN_DIR}/{netns}"


def open_netns(netns: str) -> int:
    path = resolve(netns)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NamespaceNotFound(f"network namespace {path} not found", exc.errno or 0) from exc
    except OSError as exc:
        raise NetlinkError(f"opening {path}: {exc.strerror}", exc.errno or 0) from exc


def exists(netns: str) -> bool:
    return os.path.exists(resolve(netns))


@contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body with this thread in `netns` (None: stay where we are). Keep the body short."""
    if not netns:
        yield
        return
    target = open_netns(netns)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target)
            except NetlinkError as exc:
                raise NamespaceNotFound(f"{netns} is not a network namespace: {exc}", exc.errno) from exc
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
    finally:
        os.close(target)


def call_in(netns: str | None, fn: Callable[[], T]) -> T:
    """Call `fn` with this thread in `netns` (for sysctl writes and socket creation)."""
    with entered(netns):
        return fn()


def inode(netns: str) -> int:
    """Identity of a namespace (to tell whether two paths are the same namespace)."""
    return os.stat(resolve(netns)).st_ino

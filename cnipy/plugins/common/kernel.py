"""Netlink errors -> CNI errors, at the plugin boundary (once)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from cnipy.cni.errors import KernelError, UnknownContainer


@contextmanager
def kernel(what: str) -> Iterator[None]:
    """Run netlink verbs; a missing namespace is UnknownContainer (3), anything else KernelError (104)."""
    from cnipy import netlink

    try:
        yield
    except netlink.NamespaceNotFound as exc:
        raise UnknownContainer(f"{what}: network namespace not found", str(exc)) from exc
    except netlink.NetlinkError as exc:
        raise KernelError(f"{what} failed", str(exc)) from exc


def quietly(fn: Callable[..., object], *args: object) -> None:
    """An undo step: it must not hide the error that made us undo."""
    with suppress(Exception):
        fn(*args)

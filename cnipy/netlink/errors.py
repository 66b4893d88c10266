"""Netlink errors with names: errno is translated once, here, so callers never see pyroute2's exceptions.

    NetlinkError               any failed kernel operation (errno kept)
    ├── NamespaceNotFound      the namespace path does not exist or is not a network namespace
    ├── InterfaceNotFound      ENODEV, or no link by that name
    ├── AlreadyExists          EEXIST
    ├── AddressNotAvailable    EADDRNOTAVAIL
    ├── NotFound               ENOENT / ESRCH: the address, route or neighbour to remove is not there
    ├── NotSupported           EOPNOTSUPP: the kernel lacks the feature (e.g. bridge VLAN filtering)
    ├── WrongKind              a link exists by that name but is of another kind (e.g. not a bridge)
    └── InvalidName            a name (sysctl key, link name) we refuse to pass to the kernel
"""

from __future__ import annotations

import errno as E


class NetlinkError(Exception):
    def __init__(self, msg: str, errno: int = 0) -> None:
        super().__init__(msg)
        self.errno = errno


class NamespaceNotFound(NetlinkError):
    pass


class InterfaceNotFound(NetlinkError):
    pass


class AlreadyExists(NetlinkError):
    pass


class AddressNotAvailable(NetlinkError):
    pass


class NotFound(NetlinkError):
    pass


class NotSupported(NetlinkError):
    pass


class WrongKind(NetlinkError):
    pass


class InvalidName(NetlinkError):
    pass


_BY_ERRNO: dict[int, type[NetlinkError]] = {
    E.ENODEV: InterfaceNotFound,
    E.EEXIST: AlreadyExists,
    E.EADDRNOTAVAIL: AddressNotAvailable,
    E.ENOENT: NotFound,
    E.ESRCH: NotFound,
    E.EOPNOTSUPP: NotSupported,
}


def translate(exc: BaseException, what: str) -> NetlinkError:
    """pyroute2's NetlinkError / OSError -> ours, keeping errno."""
    code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
    cls = _BY_ERRNO.get(code, NetlinkError)
    return cls(f"{what}: {exc}", code)

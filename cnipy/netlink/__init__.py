"""Netlink and namespaces: the only package that imports pyroute2.

Functions take plain values (namespace paths or names, interface names, ipaddress values) and return plain data;
kernel errors arrive as the named exceptions in `cnipy.netlink.errors`.
"""

from cnipy.netlink.errors import (
    AddressNotAvailable,
    AlreadyExists,
    InterfaceNotFound,
    NamespaceNotFound,
    NetlinkError,
)
from cnipy.netlink.links import link_is_up, set_link_down, set_link_up

__all__ = [
    "AddressNotAvailable", "AlreadyExists", "InterfaceNotFound", "NamespaceNotFound", "NetlinkError",
    "link_is_up", "set_link_down", "set_link_up",
]

"""Netlink and namespaces: the only package that imports pyroute2.

Functions take plain values (namespace paths or names, interface names, ipaddress values) and return plain data;
kernel errors arrive as the named exceptions in `cnipy.netlink.errors`. `netns` is a name under /run/netns, a
path, or None for the caller's own namespace; a missing namespace is NamespaceNotFound, never created.

Sockets (route.py):  session (one netlink socket per namespace for a whole plugin verb, on this thread)
Links (links.py):    get_link, get_link_by_index, list_links, link_exists, link_mac, link_running (by ioctl),
                     create_veth (peer moved into a namespace, random 'veth' + 8 hex host name), delete_link,
                     set_link_up/down, link_is_up, set_mtu, set_mac, set_promisc, veth_peer; values LinkInfo,
                     VethPair
Bridges (bridge.py): ensure_bridge (create-or-get, race-free), set_master (and up), set_port_options (hairpin,
                     isolated), port_options, add_port_vlan / del_port_vlan / port_vlans / remove_port_vlans,
                     is_bridge; values PortOptions, PortVlan
Addresses (addrs.py): add_address (exist_ok, noprefixroute, nodad), del_address, list_addresses,
                     tentative_addresses, settle_addresses (wait for IPv6 DAD)
Routes (routes.py):  add_route (exist_ok), del_route, list_routes; value RouteSpec (dst, gw, dev, src, scope,
                     table, metric, mtu, advmss, onlink)
Sysctls (sysctl.py): write_sysctl, write_sysctls, read_sysctl (net.* keys only, validated, inside the
                     namespace)
Namespaces (ns.py):  entered, call_in, exists, inode
"""

from cnipy.netlink.addrs import add_address, del_address, list_addresses, settle_addresses, tentative_addresses
from cnipy.netlink.bridge import (
    PortOptions,
    PortVlan,
    add_port_vlan,
    del_port_vlan,
    ensure_bridge,
    is_bridge,
    port_options,
    port_vlans,
    remove_port_vlans,
    set_master,
    set_port_options,
)
from cnipy.netlink.errors import (
    AddressNotAvailable,
    AlreadyExists,
    InterfaceNotFound,
    InvalidName,
    NamespaceNotFound,
    NetlinkError,
    NotFound,
    NotSupported,
    WrongKind,
)
from cnipy.netlink.links import (
    LinkInfo,
    VethPair,
    create_veth,
    delete_link,
    get_link,
    get_link_by_index,
    link_exists,
    link_is_up,
    link_mac,
    link_running,
    list_links,
    random_veth_name,
    set_link_down,
    set_link_up,
    set_mac,
    set_mtu,
    set_promisc,
    veth_peer,
)
from cnipy.netlink.ns import exists as netns_exists
from cnipy.netlink.route import session
from cnipy.netlink.routes import (
    RT_SCOPE_HOST,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RouteSpec,
    add_route,
    del_route,
    list_routes,
)
from cnipy.netlink.sysctl import read_sysctl, write_sysctl, write_sysctls

__all__ = [
    "RT_SCOPE_HOST", "RT_SCOPE_LINK", "RT_SCOPE_UNIVERSE",
    "AddressNotAvailable", "AlreadyExists", "InterfaceNotFound", "InvalidName", "LinkInfo", "NamespaceNotFound",
    "NetlinkError", "NotFound", "NotSupported", "PortOptions", "PortVlan", "RouteSpec", "VethPair", "WrongKind",
    "add_address", "add_port_vlan", "add_route", "create_veth", "del_address", "del_port_vlan", "del_route",
    "delete_link", "ensure_bridge", "get_link", "get_link_by_index", "is_bridge", "link_exists", "link_is_up",
    "link_mac", "link_running",
    "list_addresses", "list_links", "list_routes", "netns_exists", "port_options", "port_vlans",
    "random_veth_name", "read_sysctl", "remove_port_vlans", "session", "set_link_down", "set_link_up", "set_mac",
    "set_master", "set_mtu", "set_port_options", "set_promisc", "settle_addresses", "tentative_addresses",
    "veth_peer", "write_sysctl", "write_sysctls",
]

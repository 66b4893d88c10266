"""The kernel state the overlay programs, behind one seam: routes it owns, permanent neighbours and remote FDB
entries on its device. `NetlinkKernel` is the real one (inside a namespace), `FakeKernel` keeps the same rules
(a route needs its device, an FDB entry needs a VXLAN device, deleting what is gone is fine) for unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cnipy.netlink.fdb import FdbEntry
from cnipy.netlink.neigh import Neighbour
from cnipy.netlink.owned_routes import OwnedRoute


class Kernel(Protocol):
    def routes(self) -> list[OwnedRoute]: ...
    def replace_route(self, route: OwnedRoute) -> None: ...
    def delete_route(self, route: OwnedRoute) -> None: ...
    def neighbours(self, dev: str) -> list[Neighbour]: ...
    def replace_neighbour(self, dev: str, entry: Neighbour) -> None: ...
    def delete_neighbour(self, dev: str, entry: Neighbour) -> None: ...
    def fdb(self, dev: str) -> list[FdbEntry]: ...
    def replace_fdb(self, dev: str, entry: FdbEntry) -> None: ...
    def delete_fdb(self, dev: str, entry: FdbEntry) -> None: ...


class NetlinkKernel:
    def __init__(self, netns: str | None, proto: int) -> None:
        self.netns, self.proto = netns, proto

    def routes(self) -> list[OwnedRoute]:
        from cnipy.netlink import owned_routes
        return owned_routes.list_owned(self.netns, self.proto)

    def replace_route(self, route: OwnedRoute) -> None:
        from cnipy.netlink import owned_routes
        owned_routes.replace(self.netns, self.proto, route)

    def delete_route(self, route: OwnedRoute) -> None:
        from cnipy.netlink import owned_routes
        owned_routes.delete(self.netns, self.proto, route)

    def neighbours(self, dev: str) -> list[Neighbour]:
        from cnipy.netlink import neigh
        return neigh.list_permanent(self.netns, dev)

    def replace_neighbour(self, dev: str, entry: Neighbour) -> None:
        from cnipy.netlink import neigh
        neigh.replace(self.netns, dev, entry)

    def delete_neighbour(self, dev: str, entry: Neighbour) -> None:
        from cnipy.netlink import neigh
        neigh.delete(self.netns, dev, entry)

    def fdb(self, dev: str) -> list[FdbEntry]:
        from cnipy.netlink import fdb
        return fdb.list_remote(self.netns, dev)

    def replace_fdb(self, dev: str, entry: FdbEntry) -> None:
        from cnipy.netlink import fdb
        fdb.replace(self.netns, dev, entry)

    def delete_fdb(self, dev: str, entry: FdbEntry) -> None:
        from cnipy.netlink import fdb
        fdb.delete(self.netns, dev, entry)


@dataclass
class FakeKernel:
    devices: set[str] = field(default_factory=set)
    route_table: dict[object, OwnedRoute] = field(default_factory=dict)
    neigh_table: dict[tuple[str, object], Neighbour] = field(default_factory=dict)
    fdb_table: set[tuple[str, FdbEntry]] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    def _need(self, dev: str) -> None:
        if dev not in self.devices:
            from cnipy.netlink.errors import InterfaceNotFound
            raise InterfaceNotFound(f"no link named {dev}")

    def remove_device(self, dev: str) -> None:
        """What the kernel does when a link goes: its routes, neighbours and FDB entries go with it."""
        self.devices.discard(dev)
        self.route_table = {k: r for k, r in self.route_table.items() if r.dev != dev}
        self.neigh_table = {k: n for k, n in self.neigh_table.items() if k[0] != dev}
        self.fdb_table = {e for e in self.fdb_table if e[0] != dev}

    def routes(self) -> list[OwnedRoute]:
        return sorted(self.route_table.values())

    def replace_route(self, route: OwnedRoute) -> None:
        self._need(route.dev)
        self.route_table[route.dst] = route
        self.log.append(f"route {route.dst} via {route.gateway} dev {route.dev}")

    def delete_route(self, route: OwnedRoute) -> None:
        self.route_table.pop(route.dst, None)
        self.log.append(f"del route {route.dst}")

    def neighbours(self, dev: str) -> list[Neighbour]:
        return sorted(n for (d, _), n in self.neigh_table.items() if d == dev)

    def replace_neighbour(self, dev: str, entry: Neighbour) -> None:
        self._need(dev)
        self.neigh_table[(dev, entry.ip)] = entry
        self.log.append(f"neigh {entry.ip} {entry.mac}")

    def delete_neighbour(self, dev: str, entry: Neighbour) -> None:
        self.neigh_table.pop((dev, entry.ip), None)
        self.log.append(f"del neigh {entry.ip}")

    def fdb(self, dev: str) -> list[FdbEntry]:
        return sorted(e for d, e in self.fdb_table if d == dev)

    def replace_fdb(self, dev: str, entry: FdbEntry) -> None:
        self._need(dev)
        self.fdb_table.add((dev, entry))
        self.log.append(f"fdb {entry.mac} {entry.dst}")

    def delete_fdb(self, dev: str, entry: FdbEntry) -> None:
        self.fdb_table.discard((dev, entry))
        self.log.append(f"del fdb {entry.mac} {entry.dst}")

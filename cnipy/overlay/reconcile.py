"""Desired state against the kernel: compute the difference and apply it, adds in the order neighbour, FDB,
route (a route must never point at a VTEP the kernel cannot resolve yet), removals in the reverse order."""

from __future__ import annotations

from dataclasses import dataclass

from cnipy.overlay.backends import Desired
from cnipy.overlay.kernel import Kernel


@dataclass(frozen=True)
class Applied:
    added: int = 0
    removed: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def reconcile(kernel: Kernel, device: str, want: Desired) -> Applied:
    added = removed = 0
    have_routes = {r.dst: r for r in kernel.routes()}
    have_neigh = {n.ip: n for n in kernel.neighbours(device)} if device else {}
    have_fdb = set(kernel.fdb(device)) if device else set()
    want_routes = {r.dst: r for r in want.routes}

    for n in sorted(want.neighbours):
        if have_neigh.get(n.ip) != n:
            kernel.replace_neighbour(device, n)
            added += 1
    for f in sorted(want.fdb - have_fdb):
        kernel.replace_fdb(device, f)
        added += 1
    for dst, r in sorted(want_routes.items()):
        if have_routes.get(dst) != r:
            kernel.replace_route(r)
            added += 1

    for dst, r in sorted(have_routes.items()):
        if dst not in want_routes:
            kernel.delete_route(r)
            removed += 1
    for f in sorted(have_fdb - want.fdb):
        kernel.delete_fdb(device, f)
        removed += 1
    want_ips = {n.ip for n in want.neighbours}
    for ip, n in sorted(have_neigh.items()):
        if ip not in want_ips:
            kernel.delete_neighbour(device, n)
            removed += 1
    return Applied(added, removed)

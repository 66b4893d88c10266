"""cnipy-host-local: IPAM from local ranges, state on disk shared with (and readable by) the reference host-local.

Beyond the reference: GC releases every reservation not in `cni.dev/valid-attachments`, STATUS answers 50 when a
range set is exhausted or the data directory is unusable, CHECK requires an address in every range set (and every
prevResult address of ours to be held by this container and interface).

Test seam: CNIPY_TEST_PAUSE_AFTER_RESERVE=<seconds> (in the call's environment) makes ADD sleep after reserving,
still holding the store's lock, so that a test can kill the plugin at that point. Nothing else reads it.
"""

from __future__ import annotations

import contextlib
import os
import time

from cnipy.cni import Request, Result
from cnipy.cni.errors import InvalidConfig, IOFailure, PluginNotAvailable, UnknownContainer
from cnipy.cni.types import DNS
from cnipy.ipam import Allocator, DiskStore, load
from cnipy.ipam.dns import read_resolv_conf

ABOUT = "CNI cnipy-host-local plugin"
PAUSE_ENV = "CNIPY_TEST_PAUSE_AFTER_RESERVE"


def cmd_add(req: Request) -> Result:
    conf = load(req.config, req.cni_args)
    dns = read_resolv_conf(conf.resolv_conf) if conf.resolv_conf else DNS()
    with DiskStore.create(conf.data_dir, conf.name) as store, store.locked():
        ips = Allocator(store, conf.range_sets).allocate(req.container_id, req.ifname, conf.requested)
        _pause_for_tests(req)
    return Result(conf.cni_version, ips=ips, routes=conf.routes, dns=dns)


def cmd_del(req: Request) -> None:
    conf = load(req.config, req.cni_args)
    store = DiskStore.existing(conf.data_dir, conf.name)
    if store is None:
        return  # nothing was ever allocated on this network: DEL succeeds and creates nothing
    with store:
        Allocator(store, conf.range_sets).release(req.container_id, req.ifname)


def cmd_check(req: Request) -> None:
    conf = load(req.config, req.cni_args)
    store = DiskStore.existing(conf.data_dir, conf.name)
    if store is None:
        raise UnknownContainer(f"host-local: failed to find address added by container {req.container_id}")
    with store:
        alloc = Allocator(store, conf.range_sets)
        missing = alloc.missing(req.container_id, req.ifname)
        held = alloc.held(req.container_id, req.ifname)
    if missing:
        raise UnknownContainer(f"host-local: failed to find address added by container {req.container_id}",
                               f"no address in range set {missing[0]}")
    prev = req.config.prev_result
    for ipc in prev.ips if prev is not None else ():
        ip = ipc.address.ip
        if any(rs.contains(ip) for rs in alloc.range_sets) and ip not in held:
            raise UnknownContainer(f"host-local: {ip} of prevResult is not held by container {req.container_id}")


def cmd_gc(req: Request) -> None:
    conf = load(req.config, req.cni_args)
    valid = req.config.valid_attachments
    if valid is None:
        raise InvalidConfig("GC needs cni.dev/valid-attachments")
    store = DiskStore.existing(conf.data_dir, conf.name)
    if store is None:
        return
    with store:
        Allocator(store, conf.range_sets).collect({(a.container_id, a.ifname) for a in valid})


def cmd_status(req: Request) -> None:
    conf = load(req.config, req.cni_args)
    try:
        store = DiskStore.existing(conf.data_dir, conf.name)
    except IOFailure as exc:
        raise PluginNotAvailable("host-local data directory is unusable", str(exc)) from exc
    if store is None:
        if not _creatable(os.path.join(conf.data_dir, conf.name)):
            raise PluginNotAvailable("host-local data directory is unusable", conf.data_dir)
        return
    with store:
        if not store.writable():
            raise PluginNotAvailable("host-local data directory is not writable", store.path)
        try:
            usage = Allocator(store, conf.range_sets).usage()
        except IOFailure as exc:
            raise PluginNotAvailable("host-local data directory is unusable", str(exc)) from exc
    full = [u for u in usage if u.free <= 0]
    if full:
        raise PluginNotAvailable("address pool exhausted", f"no free address in range set {full[0].range_set}")


def _creatable(path: str) -> bool:
    """Whether ADD could create `path`: its nearest existing ancestor is a writable directory."""
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


def _pause_for_tests(req: Request) -> None:
    raw = req.env.get(PAUSE_ENV)
    if raw:
        with contextlib.suppress(ValueError):
            time.sleep(min(float(raw), 60.0))

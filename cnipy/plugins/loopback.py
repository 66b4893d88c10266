"""cnipy-loopback: bring up `lo` in the container's namespace (pod-internal 127.0.0.1 traffic)."""

from __future__ import annotations

from cnipy.cni import Interface, IPConfig, Request, Result
from cnipy.cni.errors import CniError, KernelError, UnknownContainer

ABOUT = "CNI cnipy-loopback plugin"


def cmd_add(req: Request) -> Result:
    from cnipy import netlink

    try:
        netlink.set_link_up(req.netns, "lo")
    except netlink.NamespaceNotFound as exc:
        raise UnknownContainer("network namespace not found", req.netns) from exc
    except netlink.NetlinkError as exc:
        raise KernelError("failed to set lo up", str(exc)) from exc
    if req.config.prev_result is not None:
        return req.config.prev_result.with_version(req.config.cni_version)
    import ipaddress

    return Result(
        req.config.cni_version,
        interfaces=(Interface("lo", "00:00:00:00:00:00", req.netns),),
        ips=(IPConfig(ipaddress.ip_interface("127.0.0.1/8"), interface=0),
             IPConfig(ipaddress.ip_interface("::1/128"), interface=0)),
    )


def cmd_del(req: Request) -> None:
    from cnipy import netlink

    if not req.netns:
        return
    try:
        netlink.set_link_down(req.netns, "lo")
    except (netlink.NamespaceNotFound, netlink.InterfaceNotFound):
        return  # already gone: DEL succeeds
    except netlink.NetlinkError as exc:
        raise KernelError("failed to set lo down", str(exc)) from exc


def cmd_check(req: Request) -> None:
    from cnipy import netlink

    try:
        up = netlink.link_is_up(req.netns, "lo")
    except netlink.NamespaceNotFound as exc:
        raise UnknownContainer("network namespace not found", req.netns) from exc
    if not up:
        raise CniError("lo is down", req.netns, code=KernelError.code)

"""IPAM delegation with undo: the allocation is released when the verb fails later."""

from __future__ import annotations

from contextlib import ExitStack, suppress

from cnipy.cni import Request, Result, invoke
from cnipy.cni.errors import CniError, InvalidConfig


def add(undo: ExitStack, req: Request) -> Result:
    ipam_type = req.config.ipam_type
    result = invoke.add(ipam_type, req)
    undo.callback(_release, ipam_type, req)
    if not result.ips:
        raise InvalidConfig("IPAM plugin returned missing IP config")
    return result


def _release(ipam_type: str, req: Request) -> None:
    with suppress(CniError):
        invoke.delete(ipam_type, req)

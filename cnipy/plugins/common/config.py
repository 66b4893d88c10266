"""Typed reads of plugin-specific config keys: a wrong type or range is InvalidConfig (code 7)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cnipy.cni import Request
from cnipy.cni.errors import InvalidConfig

_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def flag(raw: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidConfig(f"{key} must be true or false", repr(value)[:60])
    return value


def integer(raw: Mapping[str, Any], key: str, lo: int, hi: int, default: int = 0) -> int:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidConfig(f"{key} must be an integer from {lo} to {hi}", repr(value)[:60])
    return value


def mtu(raw: Mapping[str, Any]) -> int:
    value = integer(raw, "mtu", 0, 65535)
    if 0 < value < 68:
        raise InvalidConfig("mtu must be 0 (the kernel's default) or at least 68", str(value))
    return value


def mac(value: object, where: str) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise InvalidConfig(f"invalid MAC address in {where}", repr(value)[:60])
    if int(value[:2], 16) & 1:
        raise InvalidConfig(f"MAC address in {where} is a multicast address", value)
    return value.lower()


def requested_mac(req: Request) -> str:
    """The container MAC asked for: runtimeConfig.mac over args.cni.mac over CNI_ARGS MAC= (as the reference)."""
    found = ""
    if req.cni_args.get("MAC"):
        found = mac(req.cni_args["MAC"], "CNI_ARGS MAC")
    cni = req.config.args.get("cni")
    if isinstance(cni, dict) and cni.get("mac"):
        found = mac(cni["mac"], "args.cni.mac")
    if req.config.runtime_config.get("mac"):
        found = mac(req.config.runtime_config["mac"], "runtimeConfig.mac")
    return found


def backend(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("ipMasqBackend")
    if value is None:
        return None
    if value not in ("iptables", "nftables"):
        raise InvalidConfig(f"unknown ipMasqBackend {value!r}", "use iptables or nftables")
    return str(value)

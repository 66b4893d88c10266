"""Network sysctls inside a namespace: /proc/sys/net is per network namespace of the opening thread."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cnipy.netlink.errors import InvalidName, NetlinkError, NotFound
from cnipy.netlink.ns import entered

# Components are sysctl directory names: interface names may contain '.', '-', '_' and '@' is not allowed.
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")


def _path(key: str) -> str:
    """'net/ipv4/conf/eth0/arp_notify' (or the dotted 'net.ipv4.ip_forward') -> /proc/sys/...; validated."""
    parts = key.split("/") if "/" in key else key.split(".")
    if not parts or parts[0] != "net" or any(not _COMPONENT.fullmatch(p) or p in (".", "..") for p in parts):
        raise InvalidName(f"invalid network sysctl key {key[:80]!r}")
    return "/proc/sys/" + "/".join(parts)


def _write(path: str, key: str, value: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except FileNotFoundError as exc:
        raise NotFound(f"no sysctl {key}", exc.errno or 0) from exc
    except OSError as exc:
        raise NetlinkError(f"writing sysctl {key}: {exc.strerror}", exc.errno or 0) from exc


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write a net.* sysctl in `netns`. Dotted keys cannot name interfaces with dots: use the slash form."""
    path = _path(key)
    with entered(netns):
        _write(path, key, value)


def write_sysctls(netns: str | None, values: Mapping[str, str]) -> dict[str, NetlinkError]:
    """Write several sysctls in `netns`, entering it once; every write is tried. Returns the failures by key
    (an invalid key raises InvalidName before anything is written)."""
    paths = {key: _path(key) for key in values}
    failed: dict[str, NetlinkError] = {}
    with entered(netns):
        for key, value in values.items():
            try:
                _write(paths[key], key, value)
            except NetlinkError as exc:
                failed[key] = exc
    return failed


def read_sysctl(netns: str | None, key: str) -> str:
    path = _path(key)
    with entered(netns):
        try:
            with open(path) as fh:
                return fh.read().strip()
        except FileNotFoundError as exc:
            raise NotFound(f"no sysctl {key}", exc.errno or 0) from exc
        except OSError as exc:
            raise NetlinkError(f"reading sysctl {key}: {exc.strerror}", exc.errno or 0) from exc

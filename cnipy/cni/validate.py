"""Validation of every runtime-supplied string that becomes a file path or a kernel name."""

from __future__ import annotations

import re

from cnipy.cni.errors import InvalidConfig, InvalidEnvironment

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_PLUGIN_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
IFNAMSIZ = 16
MAX_ID = 1024


def _safe_name(value: str) -> bool:
    return bool(_ID.fullmatch(value)) and ".." not in value


def container_id(value: str) -> str:
    """Container IDs become parts of state file contents and names: alphanumeric first, then [A-Za-z0-9_.-]."""
    if not value:
        raise InvalidEnvironment("CNI_CONTAINERID is empty")
    if len(value) > MAX_ID or not _safe_name(value):
        raise InvalidEnvironment("invalid characters in containerID", value[:100])
    return value


def network_name(value: object) -> str:
    """Network names become directory names (host-local's dataDir/<name>)."""
    if not isinstance(value, str) or not value:
        raise InvalidConfig("missing network name")
    if len(value) > 255 or not _safe_name(value):
        raise InvalidConfig("invalid characters found in network name", value[:100])
    return value


def interface_name(value: str, what: str = "CNI_IFNAME") -> str:
    """Kernel interface names: 1-15 bytes, no '/', ':' or white space, not '.' or '..'."""
    if not value:
        raise InvalidEnvironment(f"{what} is empty")
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) >= IFNAMSIZ:
        raise InvalidEnvironment(f"interface name is too long (at most {IFNAMSIZ - 1} bytes)", value[:40])
    if value in (".", "..") or any(c in value for c in "/:\0") or any(c.isspace() for c in value):
        raise InvalidEnvironment("interface name contains an invalid character", value[:40])
    return value


def config_interface_name(value: object, key: str) -> str:
    """An interface name that comes from the network config (e.g. `bridge`): errors are config errors."""
    if not isinstance(value, str):
        raise InvalidConfig(f"{key} must be a string")
    try:
        return interface_name(value, key)
    except InvalidEnvironment as exc:
        raise InvalidConfig(exc.msg, exc.details) from exc


def netns_path(value: str) -> str:
    """A network namespace path: absolute, normalised, no NUL."""
    if not value:
        raise InvalidEnvironment("CNI_NETNS is empty")
    if "\0" in value or not value.startswith("/") or len(value) > 4096:
        raise InvalidEnvironment("CNI_NETNS must be an absolute path", value[:100])
    if any(part in (".", "..") for part in value.split("/")):
        raise InvalidEnvironment("CNI_NETNS must be a normalised path", value[:100])
    return value


def plugin_type(value: object, key: str = "type") -> str:
    """A plugin type names an executable on CNI_PATH: a bare file name."""
    if not isinstance(value, str) or not value:
        raise InvalidConfig(f"missing {key}")
    if len(value) > 255 or not _PLUGIN_TYPE.fullmatch(value) or ".." in value:
        raise InvalidConfig(f"invalid plugin {key}", value[:100])
    return value

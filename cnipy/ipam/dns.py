"""resolv.conf -> DNS, for host-local's `resolvConf` option (read as the reference reads it)."""

from __future__ import annotations

from cnipy.cni.errors import IOFailure
from cnipy.cni.types import DNS

MAX_RESOLV_CONF = 1024 * 1024


def parse_resolv_conf(text: str) -> DNS:
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    domain = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        key, rest = fields[0], fields[1:]
        if key == "nameserver":
            nameservers.append(rest[0])
        elif key == "domain":
            domain = rest[0]
        elif key == "search":
            search += rest
        elif key == "options":
            options += rest
    return DNS(tuple(nameservers), domain, tuple(search), tuple(options))


def read_resolv_conf(path: str) -> DNS:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_RESOLV_CONF)
    except OSError as exc:
        raise IOFailure(f"cannot read resolvConf {path}", exc.strerror or str(exc)) from exc
    return parse_resolv_conf(data.decode("utf-8", "replace"))

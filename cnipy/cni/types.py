"""CNI results as typed values, converted to and from every spec version.

The model is the 1.1.0 result; `from_json` reads any version and `to_json` writes any version, dropping what an
older version cannot express (as the reference's `convert` does).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from cnipy.cni import version as V
from cnipy.cni.errors import DecodeFailure, IncompatibleVersion

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def family(self) -> int:
        return self.address.version


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> DNS:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise DecodeFailure("dns must be an object")
        try:
            return cls(
                nameservers=_strings(raw.get("nameservers"), "dns.nameservers"),
                domain=_string(raw.get("domain", ""), "dns.domain"),
                search=_strings(raw.get("search"), "dns.search"),
                options=_strings(raw.get("options"), "dns.options"),
            )
        except TypeError as exc:
            raise DecodeFailure(str(exc)) from exc


@dataclass(frozen=True)
class Result:
    cni_version: str = V.LATEST
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def with_version(self, version: str) -> Result:
        return replace(self, cni_version=version)

    # -- writing -------------------------------------------------------------------------------------------------
    def to_json(self, version: str | None = None) -> dict[str, Any]:
        v = version or self.cni_version
        if V.parse(v) < (0, 3, 0):
            return self._to_legacy(v)
        modern = V.parse(v) >= (1, 0, 0)
        rich = V.parse(v) >= (1, 1, 0)
        out: dict[str, Any] = {"cniVersion": v}
        if self.interfaces:
            out["interfaces"] = [_iface_json(i, rich) for i in self.interfaces]
        if self.ips:
            ips = []
            for ip in self.ips:
                d: dict[str, Any] = {}
                if not modern:
                    d["version"] = str(ip.family)
                if ip.interface is not None:
                    d["interface"] = ip.interface
                d["address"] = str(ip.address)
                if ip.gateway is not None:
                    d["gateway"] = str(ip.gateway)
                ips.append(d)
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_route_json(r, rich) for r in self.routes]
        out["dns"] = self.dns.to_json()
        return out

    def _to_legacy(self, v: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": v}
        for family, key in ((4, "ip4"), (6, "ip6")):
            ip = next((i for i in self.ips if i.family == family), None)
            if ip is None:
                continue
            d: dict[str, Any] = {"ip": str(ip.address)}
            if ip.gateway is not None:
                d["gateway"] = str(ip.gateway)
            routes = [_route_json(r, False) for r in self.routes if r.dst.version == family]
            if routes:
                d["routes"] = routes
            out[key] = d
        if not out.keys() - {"cniVersion"} and self.ips:
            raise IncompatibleVersion(f"cannot express this result in version {v}")
        out["dns"] = self.dns.to_json()
        return out

    # -- reading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, raw: Any, version: str | None = None) -> Result:
        """Read a result of any version; `version` overrides a missing cniVersion field."""
        if not isinstance(raw, dict):
            raise DecodeFailure("a CNI result must be a JSON object")
        v = raw.get("cniVersion") or version or "0.1.0"
        if not isinstance(v, str):
            raise DecodeFailure("cniVersion must be a string")
        v = V.check_supported(v)
        if V.parse(v) < (0, 3, 0):
            return cls._from_legacy(raw, v)
        try:
            interfaces = tuple(_iface_from(i) for i in _list(raw.get("interfaces"), "interfaces"))
            ips = tuple(_ip_from(i, len(interfaces)) for i in _list(raw.get("ips"), "ips"))
            routes = tuple(route_from_json(r) for r in _list(raw.get("routes"), "routes"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise DecodeFailure("malformed CNI result", str(exc)[:200]) from exc
        return cls(v, interfaces, ips, routes, DNS.from_json(raw.get("dns")))

    @classmethod
    def _from_legacy(cls, raw: dict[str, Any], v: str) -> Result:
        ips: list[IPConfig] = []
        routes: list[Route] = []
        try:
            for key in ("ip4", "ip6"):
                block = raw.get(key)
                if block is None:
                    continue
                if not isinstance(block, dict):
                    raise TypeError(f"{key} must be an object")
                gw = block.get("gateway")
                addr = ipaddress.ip_interface(_string(block.get("ip"), f"{key}.ip"))
                if addr.version != (4 if key == "ip4" else 6):
                    raise ValueError(f"{key}.ip {addr} is of the wrong family")
                gateway = ipaddress.ip_address(_string(gw, f"{key}.gateway")) if gw not in (None, "") else None
                ips.append(IPConfig(addr, gateway))
                routes.extend(route_from_json(r) for r in _list(block.get("routes"), f"{key}.routes"))
        except (ValueError, TypeError) as exc:
            raise DecodeFailure("malformed CNI result", str(exc)[:200]) from exc
        return cls(v, (), tuple(ips), tuple(routes), DNS.from_json(raw.get("dns")))


def _iface_json(i: Interface, rich: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"name": i.name}
    if i.mac:
        d["mac"] = i.mac
    if rich and i.mtu:
        d["mtu"] = i.mtu
    if i.sandbox:
        d["sandbox"] = i.sandbox
    if rich and i.socket_path:
        d["socketPath"] = i.socket_path
    if rich and i.pci_id:
        d["pciID"] = i.pci_id
    return d


def _route_json(r: Route, rich: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"dst": str(r.dst)}
    if r.gw is not None:
        d["gw"] = str(r.gw)
    if rich:
        if r.mtu:
            d["mtu"] = r.mtu
        if r.advmss:
            d["advmss"] = r.advmss
        if r.priority:
            d["priority"] = r.priority
        if r.table is not None:
            d["table"] = r.table
        if r.scope is not None:
            d["scope"] = r.scope
    return d


def _iface_from(raw: Any) -> Interface:
    if not isinstance(raw, dict):
        raise TypeError("interface must be an object")
    return Interface(
        name=_string(raw.get("name"), "interface.name"),
        mac=_string(raw.get("mac", ""), "interface.mac"),
        sandbox=_string(raw.get("sandbox", ""), "interface.sandbox"),
        mtu=_int(raw.get("mtu", 0), "interface.mtu"),
        socket_path=_string(raw.get("socketPath", ""), "interface.socketPath"),
        pci_id=_string(raw.get("pciID", ""), "interface.pciID"),
    )


def _ip_from(raw: Any, n_interfaces: int) -> IPConfig:
    if not isinstance(raw, dict):
        raise TypeError("ips entry must be an object")
    addr = ipaddress.ip_interface(_string(raw.get("address"), "ips.address"))
    gw = raw.get("gateway")
    idx = raw.get("interface")
    if idx is not None and (not isinstance(idx, int) or isinstance(idx, bool) or idx < 0
                            or (n_interfaces and idx >= n_interfaces)):
        raise ValueError(f"ips.interface {idx!r} does not name an interface")
    return IPConfig(addr, ipaddress.ip_address(_string(gw, "ips.gateway")) if gw not in (None, "") else None, idx)


def route_from_json(raw: Any) -> Route:
    """One route object of any version; raises TypeError or ValueError when it is malformed."""
    if not isinstance(raw, dict):
        raise TypeError("route must be an object")
    gw = raw.get("gw")
    table = raw.get("table")
    scope = raw.get("scope")
    return Route(
        dst=ipaddress.ip_network(_string(raw.get("dst"), "route.dst"), strict=False),
        gw=ipaddress.ip_address(_string(gw, "route.gw")) if gw not in (None, "") else None,
        mtu=_int(raw.get("mtu", 0), "route.mtu"),
        advmss=_int(raw.get("advmss", 0), "route.advmss"),
        priority=_int(raw.get("priority", 0), "route.priority"),
        table=None if table is None else _int(table, "route.table"),
        scope=None if scope is None else _int(scope, "route.scope"),
    )


def _string(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} must be a string")
    return v


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise TypeError(f"{what} must be a non-negative integer")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise TypeError(f"{what} must be a list")
    return v


def _strings(v: Any, what: str) -> tuple[str, ...]:
    try:
        return tuple(_string(s, what) for s in _list(v, what))
    except TypeError as exc:
        raise DecodeFailure(str(exc)) from exc

"""The overlay's network configuration: cluster CIDR, subnet length and range, back end and its options.

The JSON is flannel's (`Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`, `Backend: {Type, VNI, Port,
DirectRouting, MTU}`) plus `Masquerade`, `Backend.Device` and `Backend.ChecksumOffload` (auto | on | off), so an
existing flannel `net-conf.json` works unchanged. It comes from a static file (the embedded default below, for
one machine), or from etcd under `<prefix>/config`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

BACKEND_TYPES = ("vxlan", "host-gw")
DEFAULT_CONFIG: dict[str, Any] = {
    "Network": "10.244.0.0/16",
    "SubnetLen": 24,
    "Backend": {"Type": "vxlan", "VNI": 1, "Port": 4789},
}
ROUTE_PROTO = 77  # route protocol number that marks the routes the agent owns


class ConfigError(ValueError):
    """The network configuration is wrong; the message names the key."""


@dataclass(frozen=True)
class BackendConfig:
    type: str = "vxlan"
    vni: int = 1
    port: int = 4789
    direct_routing: bool = False
    mtu: int | None = None  # None: derived from the underlay
    device: str = ""  # "" means cnipy.<vni>
    checksum_offload: str = "auto"  # "auto": off only on kernels < 5.7 (flannel#1279); "off"; "on"

    @property
    def device_name(self) -> str:
        return self.device or f"cnipy.{self.vni}"

    def data(self) -> dict[str, Any]:
        return {"Type": self.type, "VNI": self.vni, "Port": self.port, "DirectRouting": self.direct_routing,
                "ChecksumOffload": self.checksum_offload}


@dataclass(frozen=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Network
    subnet_max: ipaddress.IPv4Network
    backend: BackendConfig = field(default_factory=BackendConfig)
    masquerade: bool = True

    def subnets(self) -> Iterator[ipaddress.IPv4Network]:
        """Every subnet leases may be taken from, in order."""
        size = 1 << (32 - self.subnet_len)
        addr = int(self.subnet_min.network_address)
        while addr <= int(self.subnet_max.network_address):
            yield ipaddress.IPv4Network((addr, self.subnet_len))
            addr += size

    def contains(self, subnet: ipaddress.IPv4Network) -> bool:
        return (subnet.prefixlen == self.subnet_len and subnet.subnet_of(self.network)
                and self.subnet_min.network_address <= subnet.network_address <= self.subnet_max.network_address)

    def to_json(self) -> dict[str, Any]:
        backend = self.backend.data()
        if self.backend.mtu:
            backend["MTU"] = self.backend.mtu
        if self.backend.device:
            backend["Device"] = self.backend.device
        return {"Network": str(self.network), "SubnetLen": self.subnet_len,
                "SubnetMin": str(self.subnet_min.network_address), "SubnetMax": str(self.subnet_max.network_address),
                "Backend": backend, "Masquerade": self.masquerade}


def _int(raw: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be an integer between {lo} and {hi}")
    return value


def _backend(raw: Any) -> BackendConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("Backend must be an object")
    kind = raw.get("Type", "vxlan")
    if kind not in BACKEND_TYPES:
        raise ConfigError(f"Backend.Type must be one of {', '.join(BACKEND_TYPES)}, not {kind!r}")
    direct = raw.get("DirectRouting", False)
    if not isinstance(direct, bool):
        raise ConfigError("Backend.DirectRouting must be true or false")
    mtu = raw.get("MTU")
    if mtu is not None and (not isinstance(mtu, int) or not 576 <= mtu <= 65535):
        raise ConfigError("Backend.MTU must be an integer between 576 and 65535")
    device = raw.get("Device", "")
    if not isinstance(device, str) or len(device) > 15 or any(c in device for c in "/: \0"):
        raise ConfigError("Backend.Device must be an interface name (at most 15 characters)")
    offload = raw.get("ChecksumOffload", "auto")
    if offload not in ("auto", "on", "off"):
        raise ConfigError("Backend.ChecksumOffload must be auto, on or off")
    return BackendConfig(kind, _int(raw, "VNI", 1, 0, (1 << 24) - 1), _int(raw, "Port", 4789, 1, 65535),
                         direct, mtu, device, offload)


def parse(raw: Any) -> NetworkConfig:
    """A NetworkConfig from decoded JSON; ConfigError names what is wrong."""
    if not isinstance(raw, dict):
        raise ConfigError("the network configuration must be a JSON object")
    try:
        network = ipaddress.IPv4Network(raw.get("Network", ""))
    except ValueError as exc:
        raise ConfigError(f"Network must be an IPv4 CIDR: {exc}") from exc
    default_len = min(network.prefixlen + 8, 30) if network.prefixlen < 24 else min(network.prefixlen + 2, 30)
    subnet_len = _int(raw, "SubnetLen", 24 if network.prefixlen <= 16 else default_len, network.prefixlen, 30)
    if subnet_len < network.prefixlen + 1 and subnet_len != network.prefixlen:
        raise ConfigError("SubnetLen must be at least the Network's prefix length")
    all_subnets = list(network.subnets(new_prefix=subnet_len)) if subnet_len - network.prefixlen <= 16 else []
    if not all_subnets:
        raise ConfigError("SubnetLen leaves no subnets (or more than 65536) in Network")
    # As flannel: the first and the last subnet are kept back unless asked for.
    lo = all_subnets[1] if len(all_subnets) > 2 else all_subnets[0]
    hi = all_subnets[-2] if len(all_subnets) > 2 else all_subnets[-1]
    try:
        if "SubnetMin" in raw:
            lo = ipaddress.IPv4Network((raw["SubnetMin"], subnet_len))
        if "SubnetMax" in raw:
            hi = ipaddress.IPv4Network((raw["SubnetMax"], subnet_len))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"SubnetMin/SubnetMax must be subnet addresses in Network: {exc}") from exc
    if not (lo.subnet_of(network) and hi.subnet_of(network)) or lo.network_address > hi.network_address:
        raise ConfigError("SubnetMin and SubnetMax must lie in Network, SubnetMin <= SubnetMax")
    masq = raw.get("Masquerade", True)
    if not isinstance(masq, bool):
        raise ConfigError("Masquerade must be true or false")
    return NetworkConfig(network, subnet_len, lo, hi, _backend(raw.get("Backend")), masq)


def loads(text: str | bytes) -> NetworkConfig:
    try:
        return parse(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the network configuration is not JSON: {exc}") from exc


def default() -> NetworkConfig:
    return parse(DEFAULT_CONFIG)

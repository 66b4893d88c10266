"""The subnet file: what the agent tells the CNI plugin (like flannel's subnet.env), written atomically, 0600.

    CNIPY_NETWORK=10.244.0.0/16
    CNIPY_SUBNET=10.244.3.1/24
    CNIPY_MTU=1450
    CNIPY_IPMASQ=true
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cnipy.statefile import write_atomic

DEFAULT_PATH = Path("/run/cnipy/subnet.env")


class SubnetFileError(ValueError):
    pass


@dataclass(frozen=True)
class SubnetFile:
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Interface  # the node's subnet with the bridge gateway (.1) as the address
    mtu: int
    masquerade: bool

    def render(self) -> str:
        return (f"CNIPY_NETWORK={self.network}\nCNIPY_SUBNET={self.subnet}\nCNIPY_MTU={self.mtu}\n"
                f"CNIPY_IPMASQ={'true' if self.masquerade else 'false'}\n")


def parse(text: str) -> SubnetFile:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise SubnetFileError(f"not KEY=VALUE: {line[:80]!r}")
            values[key.strip()] = value.strip()
    missing = [k for k in ("CNIPY_NETWORK", "CNIPY_SUBNET", "CNIPY_MTU", "CNIPY_IPMASQ") if k not in values]
    if missing:
        raise SubnetFileError(f"missing {', '.join(missing)}")
    try:
        return SubnetFile(ipaddress.IPv4Network(values["CNIPY_NETWORK"]),
                          ipaddress.IPv4Interface(values["CNIPY_SUBNET"]), int(values["CNIPY_MTU"]),
                          values["CNIPY_IPMASQ"].lower() == "true")
    except ValueError as exc:
        raise SubnetFileError(str(exc)) from exc


def read(path: Path) -> SubnetFile:
    """SubnetFileError when it is unreadable or incomplete; FileNotFoundError when it is not there."""
    return parse(path.read_text())


def write(path: Path, content: SubnetFile) -> None:
    """Write to a temporary file in the same directory (0600), fsync, rename over: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    write_atomic(path, content.render())

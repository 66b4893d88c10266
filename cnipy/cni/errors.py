"""CNI errors: every failure a plugin reports is one of these, carrying its spec code.

    CniError                        any error a plugin reports (code, msg, details)
    ├── IncompatibleVersion      1  the config's cniVersion is not one we speak
    ├── UnsupportedField         2  a field or verb is not supported at this version
    ├── UnknownContainer         3  the container or its namespace does not exist (IPAM CHECK: it holds nothing)
    ├── InvalidEnvironment       4  a CNI_* variable is missing or malformed
    ├── IOFailure                5  reading stdin, a state file or the kernel failed
    ├── DecodeFailure            6  stdin or a delegate's output is not JSON, or a prevResult is not a result
    ├── InvalidConfig            7  the configuration is JSON but a value or type in it is wrong
    ├── TryAgainLater           11  a transient condition; the runtime should retry
    ├── PluginNotAvailable      50  (STATUS) the plugin cannot serve ADD now
    ├── LimitedConnectivity     51  (STATUS) existing pods may have limited connectivity
    ├── InternalError          100  a bug: an unexpected exception, reported without a traceback
    ├── AddressExhausted       101  IPAM: no free address left in the requested ranges
    ├── AddressUnavailable     102  IPAM: a requested address is taken or outside the ranges, or the
    │                               attachment already holds an address there (a repeated ADD)
    ├── InterfaceExists        103  the container interface already exists on ADD
    ├── KernelError            104  a netlink or sysctl operation failed
    ├── RuleError              105  applying iptables or nftables rules failed
    └── DelegateError          106  a delegated plugin failed without a CNI error of its own

A delegate's own CNI error is passed through with its code unchanged.
"""

from __future__ import annotations

from typing import Any


class CniError(Exception):
    code: int = 100

    def __init__(self, msg: str, details: str = "", *, code: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class IncompatibleVersion(CniError):
    code = 1


class UnsupportedField(CniError):
    code = 2


class UnknownContainer(CniError):
    code = 3


class InvalidEnvironment(CniError):
    code = 4


class IOFailure(CniError):
    code = 5


class DecodeFailure(CniError):
    code = 6


class InvalidConfig(CniError):
    code = 7


class TryAgainLater(CniError):
    code = 11


class PluginNotAvailable(CniError):
    code = 50


class LimitedConnectivity(CniError):
    code = 51


class InternalError(CniError):
    code = 100


class AddressExhausted(CniError):
    code = 101


class AddressUnavailable(CniError):
    code = 102


class InterfaceExists(CniError):
    code = 103


class KernelError(CniError):
    code = 104


class RuleError(CniError):
    code = 105


class DelegateError(CniError):
    code = 106

"""host-local's configuration: every option of the reference plugin, validated into one frozen value.

Range sets come, in this order, from `runtimeConfig.ipRanges`, the legacy single range (`ipam.subnet`,
`rangeStart`, `rangeEnd`, `gateway`) and `ipam.ranges`. Requested addresses come from CNI_ARGS `IP=`,
`args.cni.ips` and `runtimeConfig.ips`, in that order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnipy.cni import version as V
from cnipy.cni.errors import InvalidConfig, InvalidEnvironment
from cnipy.cni.request import NetConf
from cnipy.cni.types import Route, route_from_json
from cnipy.ipam.disk import check_data_dir
from cnipy.ipam.ranges import IPAddress, RangeSet, parse_ip_maybe_prefix, parse_range_sets


@dataclass(frozen=True)
class IPAMConfig:
    name: str
    cni_version: str
    data_dir: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...] = ()
    resolv_conf: str = ""
    requested: tuple[IPAddress, ...] = ()


def load(conf: NetConf, cni_args: Mapping[str, str]) -> IPAMConfig:
    ipam = conf.raw.get("ipam")
    if not isinstance(ipam, dict):
        raise InvalidConfig("IPAM config missing 'ipam' key")
    runtime = conf.runtime_config
    sets = parse_range_sets(runtime.get("ipRanges"), "runtimeConfig.ipRanges")
    if ipam.get("subnet") not in (None, ""):
        legacy = {k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}
        sets.append(RangeSet.from_json([legacy], "ipam"))
    sets += parse_range_sets(ipam.get("ranges"), "ipam.ranges")
    if not sets:
        raise InvalidConfig("no IP ranges specified")
    if not V.at_least(conf.cni_version, "0.3.0") and \
            max(sum(1 for s in sets if s.version == fam) for fam in (4, 6)) > 1:
        raise InvalidConfig(f"CNI version {conf.cni_version} does not support more than 1 address per family")
    for i, s1 in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if s1.overlaps(sets[j]):
                raise InvalidConfig(f"range set {i} overlaps with {j}")
    return IPAMConfig(
        name=conf.name,
        cni_version=conf.cni_version,
        data_dir=check_data_dir(ipam.get("dataDir")),
        range_sets=tuple(sets),
        routes=_routes(ipam.get("routes")),
        resolv_conf=_resolv_conf(ipam.get("resolvConf")),
        requested=requested_ips(conf, cni_args),
    )


def requested_ips(conf: NetConf, cni_args: Mapping[str, str]) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    env_ip = env_args(cni_args).get("IP", "")
    if env_ip:
        try:
            out.append(parse_ip_maybe_prefix(env_ip, "CNI_ARGS IP"))
        except InvalidConfig as exc:
            raise InvalidEnvironment(exc.msg, exc.details) from exc
    cni = conf.args.get("cni")
    if cni is not None:
        if not isinstance(cni, dict):
            raise InvalidConfig("args.cni must be an object")
        out += _ip_list(cni.get("ips"), "args.cni.ips")
    out += _ip_list(conf.runtime_config.get("ips"), "runtimeConfig.ips")
    return tuple(dict.fromkeys(out))  # the reference keys them by address: duplicates collapse


def env_args(cni_args: Mapping[str, str]) -> dict[str, str]:
    """host-local understands `IP`; like the reference, other keys are an error unless IgnoreUnknown is set."""
    ignore = cni_args.get("IgnoreUnknown", "").lower()
    if ignore not in ("", "1", "true", "0", "false"):
        raise InvalidEnvironment("CNI_ARGS IgnoreUnknown must be 1, true, 0 or false", ignore[:20])
    unknown = sorted(k for k in cni_args if k not in ("IP", "IgnoreUnknown"))
    if unknown and ignore not in ("1", "true"):
        raise InvalidEnvironment("unknown CNI_ARGS (set IgnoreUnknown=1 to allow them)", ",".join(unknown)[:200])
    return {k: v for k, v in cni_args.items() if k == "IP"}


def _ip_list(raw: Any, where: str) -> list[IPAddress]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > 64:
        raise InvalidConfig(f"{where} must be a list of addresses")
    return [parse_ip_maybe_prefix(v, where) for v in raw]


def _routes(raw: Any) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 1024:
        raise InvalidConfig("ipam.routes must be a list")
    try:
        return tuple(route_from_json(r) for r in raw)
    except (TypeError, ValueError) as exc:
        raise InvalidConfig("invalid route in ipam.routes", str(exc)[:200]) from exc


def _resolv_conf(raw: Any) -> str:
    if raw is None or raw == "":
        return ""
    if not isinstance(raw, str) or "\0" in raw or not os.path.isabs(raw) or len(raw) > 1024:
        raise InvalidConfig("ipam.resolvConf must be an absolute path", str(raw)[:100])
    return raw

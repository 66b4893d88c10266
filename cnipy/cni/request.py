"""Environment + stdin -> a typed, validated Request (the CNI protocol's input side)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cnipy.cni import validate
from cnipy.cni import version as V
from cnipy.cni.errors import DecodeFailure, InvalidConfig, InvalidEnvironment
from cnipy.cni.types import DNS, Result

VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
MAX_STDIN = 4 * 1024 * 1024

# Which CNI_* variables each verb requires (as the reference skel).
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str


@dataclass(frozen=True)
class NetConf:
    """The network configuration a plugin receives; `raw` keeps the plugin's own keys."""

    cni_version: str
    name: str
    type: str
    raw: Mapping[str, Any]
    ipam: Mapping[str, Any] = field(default_factory=dict)
    dns: DNS = field(default_factory=DNS)
    runtime_config: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    prev_result: Result | None = None
    valid_attachments: tuple[Attachment, ...] | None = None

    @property
    def ipam_type(self) -> str:
        return validate.plugin_type(self.ipam.get("type"), "ipam.type")


@dataclass(frozen=True)
class Request:
    command: str
    container_id: str
    netns: str
    ifname: str
    cni_args: Mapping[str, str]
    path: tuple[str, ...]
    config: NetConf
    stdin: bytes
    env: Mapping[str, str]


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS 'K1=V1;K2=V2' -> dict; a pair without '=' is an environment error."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEnvironment("invalid CNI_ARGS pair", pair[:100])
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(data: bytes, what: str = "network configuration") -> Any:
    if len(data) > MAX_STDIN:
        raise DecodeFailure(f"{what} is too large", f"more than {MAX_STDIN} bytes")
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise DecodeFailure(f"error decoding {what}", str(exc)[:200]) from exc


def config_version(conf: Mapping[str, Any]) -> str:
    """The version this call speaks: `cniVersion` when the runtime set one (it expects its result in that
    version), else the highest we share with a conflist-style `cniVersions`, else 0.1.0 (the spec's default)."""
    offered = conf.get("cniVersions")
    if offered is not None and not isinstance(offered, list):
        raise InvalidConfig("cniVersions must be a list of strings")
    if offered is not None and conf.get("cniVersion") in (None, ""):
        return V.negotiate(offered)
    v = conf.get("cniVersion", "")
    if not isinstance(v, str):
        raise InvalidConfig("cniVersion must be a string")
    return V.check_supported(v)


def _mapping(conf: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = conf.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidConfig(f"{key} must be an object")
    return value


def _attachments(conf: Mapping[str, Any]) -> tuple[Attachment, ...] | None:
    key = "cni.dev/valid-attachments" if "cni.dev/valid-attachments" in conf else "cni.dev/attachments"
    raw = conf.get(key)
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidConfig(f"{key} must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise InvalidConfig(f"{key} entries need string containerID and ifname")
        out.append(Attachment(item["containerID"], item["ifname"]))
    return tuple(out)


def parse_netconf(data: bytes) -> NetConf:
    conf = decode_json(data)
    if not isinstance(conf, dict):
        raise InvalidConfig("the network configuration must be a JSON object")
    version = config_version(conf)
    name = validate.network_name(conf.get("name"))
    ptype = validate.plugin_type(conf.get("type"))
    try:
        dns = DNS.from_json(conf.get("dns"))
    except DecodeFailure as exc:
        raise InvalidConfig(exc.msg, exc.details) from exc
    prev = conf.get("prevResult")
    prev_result = Result.from_json(prev, version) if prev is not None else None
    return NetConf(
        cni_version=version, name=name, type=ptype, raw=conf,
        ipam=_mapping(conf, "ipam"), dns=dns,
        runtime_config=_mapping(conf, "runtimeConfig"), args=_mapping(conf, "args"),
        capabilities=_mapping(conf, "capabilities"), prev_result=prev_result,
        valid_attachments=_attachments(conf),
    )


def command_of(env: Mapping[str, str]) -> str:
    cmd = env.get("CNI_COMMAND", "")
    if cmd not in VERBS:
        raise InvalidEnvironment(f"unknown CNI_COMMAND: {cmd[:40]}")
    return cmd


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    cmd = command_of(env)
    missing = [k for k in _REQUIRED[cmd] if not env.get(k)]
    if missing:
        raise InvalidEnvironment(f"required env variables [{','.join(missing)}] missing")
    container_id = validate.container_id(env["CNI_CONTAINERID"]) if env.get("CNI_CONTAINERID") else ""
    ifname = validate.interface_name(env["CNI_IFNAME"]) if env.get("CNI_IFNAME") else ""
    netns = validate.netns_path(env["CNI_NETNS"]) if env.get("CNI_NETNS") else ""
    cni_args = parse_cni_args(env.get("CNI_ARGS", ""))
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    config = parse_netconf(stdin)
    V.check_verb(cmd, config.cni_version)
    return Request(cmd, container_id, netns, ifname, cni_args, path, config, stdin, dict(env))

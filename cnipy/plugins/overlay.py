"""cnipy-overlay: give pods addresses from this node's overlay subnet by delegating to a bridge plugin.

The agent (`cnipy agent`) writes the subnet file; ADD reads it and delegates to `bridgeType` (cnipy-bridge) with
`ipamType` (cnipy-host-local) on the node's subnet, with the overlay MTU and routes to the cluster network. Keys
under `delegate` override what is derived (as flannel's CNI plugin). What was delegated is saved (0600) under
`dataDir`, so DEL works the same after the agent or its subnet file is gone; GC delegates to the bridge (which
releases addresses not in `cni.dev/valid-attachments`) and forgets the saved configs of gone attachments. ADD
before the agent has written the subnet file is error 11 (try again later); STATUS is 50 naming what is missing.

    {"type": "cnipy-overlay", "name": "pods", "cniVersion": "1.0.0",
     "subnetFile": "/run/cnipy/subnet.env", "dataDir": "/var/lib/cni/cnipy-overlay",
     "bridgeType": "cnipy-bridge", "ipamType": "cnipy-host-local", "delegate": {"bridge": "cni0"}}
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cnipy.cni import Request, Result, invoke, validate
from cnipy.cni.errors import InvalidConfig, IOFailure, PluginNotAvailable, TryAgainLater
from cnipy.overlay import subnetfile
from cnipy.statefile import write_atomic

ABOUT = "CNI cnipy-overlay plugin"
DEFAULT_SUBNET_FILE = "/run/cnipy/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/cnipy-overlay"


def _path(conf: Any, key: str, default: str) -> Path:
    value = conf.get(key, default)
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value \
            or any(part in (".", "..") for part in value.split("/")):
        raise InvalidConfig(f"{key} must be an absolute, normalised path")
    return Path(value)


def _types(conf: Any) -> tuple[str, str]:
    return (validate.plugin_type(conf.get("bridgeType", "cnipy-bridge"), "bridgeType"),
            validate.plugin_type(conf.get("ipamType", "cnipy-host-local"), "ipamType"))


def _read_subnet(path: Path) -> subnetfile.SubnetFile:
    try:
        return subnetfile.read(path)
    except FileNotFoundError as exc:
        raise TryAgainLater("the overlay agent is not ready", f"{path} does not exist yet") from exc
    except (OSError, subnetfile.SubnetFileError) as exc:
        raise TryAgainLater("the overlay agent is not ready", f"{path}: {exc}") from exc


def delegate_config(req: Request, sub: subnetfile.SubnetFile) -> dict[str, Any]:
    """The bridge configuration for this node: derived values first, then the config's `delegate` keys."""
    conf = req.config.raw
    bridge_type, ipam_type = _types(conf)
    overrides = conf.get("delegate", {})
    if not isinstance(overrides, dict):
        raise InvalidConfig("delegate must be an object")
    mtu = conf.get("mtu", sub.mtu)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 576 <= mtu <= 65535:
        raise InvalidConfig("mtu must be an integer between 576 and 65535")
    out: dict[str, Any] = {
        "cniVersion": req.config.cni_version, "name": req.config.name, "type": bridge_type,
        "bridge": "cni0", "isGateway": True, "hairpinMode": True, "mtu": mtu,
        # The agent masquerades traffic leaving the cluster network itself; the bridge must not (it would hide
        # pod addresses from pods on other nodes).
        "ipMasq": not sub.masquerade,
        "ipam": {"type": ipam_type, "ranges": [[{"subnet": str(sub.subnet.network)}]],
                 "routes": [{"dst": str(sub.network)}]},
    }
    for key, value in overrides.items():
        if key == "ipam" and isinstance(value, dict):
            out["ipam"] = {**out["ipam"], **value}
        else:
            out[key] = value
    for key in ("runtimeConfig", "args", "capabilities"):
        if key in conf and key not in out:
            out[key] = conf[key]
    validate.plugin_type(out.get("type"), "delegate.type")
    return out


def _state_file(req: Request) -> Path:
    data_dir = _path(req.config.raw, "dataDir", DEFAULT_DATA_DIR)
    cid = validate.container_id(req.container_id)
    ifname = validate.interface_name(req.ifname)
    return data_dir / f"{cid}-{ifname}"


def _save(path: Path, req: Request, conf: dict[str, Any]) -> None:
    """Save {"containerID", "ifname", "delegate"} (GC needs to know whose it is)."""
    record = {"containerID": req.container_id, "ifname": req.ifname, "delegate": conf}
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(record))
    except OSError as exc:
        raise IOFailure(f"saving the delegate config to {path} failed", str(exc)) from exc


def _load_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IOFailure(f"reading {path} failed", str(exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("delegate"), dict) \
            or not isinstance(data["delegate"].get("type"), str):
        raise IOFailure(f"{path} does not hold a saved delegate config")
    return data


def _load(path: Path) -> dict[str, Any] | None:
    record = _load_record(path)
    return None if record is None else dict(record["delegate"])


def cmd_add(req: Request) -> Result:
    sub = _read_subnet(_path(req.config.raw, "subnetFile", DEFAULT_SUBNET_FILE))
    conf = delegate_config(req, sub)
    state = _state_file(req)
    with ExitStack() as undo:
        _save(state, req, conf)
        undo.callback(state.unlink, missing_ok=True)
        stdin = json.dumps(conf).encode()
        result = invoke.add(conf["type"], req, stdin=stdin)
        undo.pop_all()
    return result


def cmd_del(req: Request) -> None:
    state = _state_file(req)
    conf = _load(state)
    if conf is None:
        return  # never added, or already deleted
    invoke.delete(str(conf["type"]), req, stdin=json.dumps(conf).encode())
    state.unlink(missing_ok=True)


def cmd_check(req: Request) -> None:
    state = _state_file(req)
    conf = _load(state)
    if conf is None:
        raise InvalidConfig("no delegate config saved for this container: was it added?", str(state))
    if req.config.prev_result is not None:
        conf["prevResult"] = req.config.prev_result.to_json(req.config.cni_version)
    invoke.check(str(conf["type"]), req, stdin=json.dumps(conf).encode())


def cmd_gc(req: Request) -> None:
    """Delegate GC (the bridge and its IPAM release what is not in cni.dev/valid-attachments), then forget the
    saved configs of attachments that are not valid any more."""
    valid_list = req.config.valid_attachments
    if valid_list is None:
        raise InvalidConfig("GC needs cni.dev/valid-attachments")
    valid = {(a.container_id, a.ifname) for a in valid_list}
    data_dir = _path(req.config.raw, "dataDir", DEFAULT_DATA_DIR)
    records = []
    if data_dir.is_dir():
        for path in sorted(data_dir.iterdir()):
            if not path.name.startswith("."):
                record = _load_record(path)
                if record is not None:
                    records.append((path, record))
    conf: dict[str, Any] | None
    try:
        conf = delegate_config(req, subnetfile.read(_path(req.config.raw, "subnetFile", DEFAULT_SUBNET_FILE)))
    except (OSError, subnetfile.SubnetFileError):
        conf = dict(records[-1][1]["delegate"]) if records else None  # the agent is gone: use what was saved
    if conf is not None:
        conf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": i} for c, i in sorted(valid)]
        invoke.gc(str(conf["type"]), req, stdin=json.dumps(conf).encode())
    for path, record in records:
        if (record.get("containerID"), record.get("ifname")) not in valid:
            path.unlink(missing_ok=True)


def cmd_status(req: Request) -> None:
    path = _path(req.config.raw, "subnetFile", DEFAULT_SUBNET_FILE)
    missing = []
    try:
        subnetfile.read(path)
    except FileNotFoundError:
        missing.append(f"subnet file {path} (is `cnipy agent` running and ready?)")
    except (OSError, subnetfile.SubnetFileError) as exc:
        missing.append(f"a valid subnet file {path} ({exc})")
    for kind in _types(req.config.raw):
        try:
            invoke.find(kind, req.path)
        except InvalidConfig:
            missing.append(f"plugin {kind} on CNI_PATH")
    if missing:
        raise PluginNotAvailable("cnipy-overlay cannot add pods", "missing: " + "; ".join(missing))

"""A minimal CNI runtime: run a node's plugin chain for a pod the way a container runtime does.

Each plugin is executed inside the node's namespace (the node is the pod's host) with the CNI_* environment and
its configuration on stdin: the conflist's cniVersion and name added, and on ADD the previous plugin's result as
prevResult. DEL runs the chain in reverse with the cached ADD result as prevResult. The conflist and the result
are cached per attachment in node.cni_cache_dir (like libcni's cache), so DEL uses the configuration ADD used.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any

from cnipy.lab import sh
from cnipy.lab.errors import PluginFailed
from cnipy.lab.files import read_json, write_json
from cnipy.lab.model import REPO_ROOT, Lab, Node, Pod

PLUGIN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Attachment:
    pod: Pod
    ip: IPv4Interface | None
    result: dict[str, Any]


def cache_path(node: Node, pod: Pod) -> Any:
    return node.cni_cache_dir / f"{pod.container_id}-{pod.ifname}.json"


def add(lab: Lab, node: Node, pod: Pod, conflist: dict[str, Any]) -> Attachment:
    """ADD every plugin of `conflist` in order; on failure DEL what was added, then raise PluginFailed."""
    prev: dict[str, Any] | None = None
    done: list[dict[str, Any]] = []
    try:
        for plugin in conflist["plugins"]:
            prev = _exec(lab, node, pod, "ADD", _plugin_conf(conflist, plugin, prev))
            done.append(plugin)
    except PluginFailed:
        partial = dict(conflist, plugins=done)
        _del_chain(lab, node, pod, partial, prev, errors=[])
        raise
    result = prev or {}
    write_json(cache_path(node, pod), {"conflist": conflist, "result": result})
    return Attachment(pod, first_ip(result), result)


def delete(lab: Lab, node: Node, pod: Pod) -> list[str]:
    """DEL the cached attachment (reverse order); returns plugin errors instead of raising, for clean-up."""
    path = cache_path(node, pod)
    try:
        cached = read_json(path)
    except (OSError, ValueError):
        return []
    errors: list[str] = []
    _del_chain(lab, node, pod, cached["conflist"], cached.get("result"), errors)
    if not errors:
        path.unlink(missing_ok=True)
    return errors


def cached(node: Node, pod: Pod) -> Attachment | None:
    try:
        result = read_json(cache_path(node, pod))["result"]
    except (OSError, ValueError, KeyError):
        return None
    return Attachment(pod, first_ip(result), result)


def first_ip(result: dict[str, Any]) -> IPv4Interface | None:
    for entry in result.get("ips", []):
        try:
            addr = IPv4Interface(entry["address"])
        except (KeyError, ValueError):
            continue
        return addr
    return None


def _del_chain(lab: Lab, node: Node, pod: Pod, conflist: dict[str, Any], prev: dict[str, Any] | None,
               errors: list[str]) -> None:
    for plugin in reversed(conflist["plugins"]):
        try:
            _exec(lab, node, pod, "DEL", _plugin_conf(conflist, plugin, prev))
        except PluginFailed as exc:
            errors.append(f"{pod.name}: DEL {plugin.get('type')}: {exc}")


def _plugin_conf(conflist: dict[str, Any], plugin: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    conf = dict(plugin)
    conf["cniVersion"] = conflist["cniVersion"]
    conf["name"] = conflist["name"]
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def _exec(lab: Lab, node: Node, pod: Pod, command: str, conf: dict[str, Any]) -> dict[str, Any] | None:
    plugin_type = str(conf["type"])
    # A back end may use a cnipy plugin (cnipy-overlay) beside a reference plugin set: look in both places.
    search = [lab.plugins.directory]
    if not (lab.plugins.directory / plugin_type).is_file() and (REPO_ROOT / "plugins" / plugin_type).is_file():
        search.append(REPO_ROOT / "plugins")
    executable = search[-1] / plugin_type
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": f"{sh.NETNS_DIR}/{pod.netns}",
        "CNI_IFNAME": pod.ifname,
        "CNI_PATH": ":".join(str(d) for d in search),
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        # cnipy's plugin front forwards calls to this node's daemon, or runs the plugin itself when it is not up;
        # never to a daemon of the host or another node (a daemon does the host side in its own namespace).
        "CNIPY_CNI_SOCKET": str(node.cni_socket),
    }
    argv = sh.in_netns(node.netns, [str(executable)])
    try:
        proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=PLUGIN_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PluginFailed(f"{command} {plugin_type} on {node.name} for {pod.name}", 0, str(exc)) from exc
    if proc.returncode != 0:
        raise _failure(command, plugin_type, pod, proc.stdout, proc.stderr, proc.returncode)
    if command != "ADD" or not proc.stdout.strip():
        return None
    try:
        out: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        raise PluginFailed(f"ADD {plugin_type} for {pod.name} printed no JSON", 0, proc.stdout[:200].decode(
            "utf-8", "replace")) from exc
    return out


def _failure(command: str, plugin_type: str, pod: Pod, stdout: bytes, stderr: bytes, rc: int) -> PluginFailed:
    what = f"{command} {plugin_type} for {pod.name} failed (exit {rc})"
    try:
        err = json.loads(stdout)
        return PluginFailed(what, int(err.get("code", 0)), f"{err.get('msg', '')} {err.get('details', '')}".strip())
    except (ValueError, AttributeError, TypeError):
        text = (stdout or stderr)[-300:].decode("utf-8", "replace").strip()
        return PluginFailed(what, 0, text)

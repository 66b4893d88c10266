"""The protocol boundary: run one CNI call and turn every outcome into stdout bytes and an exit code.

A plugin is a module (or any object) with the verbs it supports:

    ABOUT: str
    cmd_add(req) -> Result      cmd_del(req) -> None     cmd_check(req) -> None
    cmd_gc(req) -> None         cmd_status(req) -> None

A verb a plugin does not define succeeds with nothing to do (GC, STATUS) or is reported as unsupported.
Exceptions become CNI error JSON here, once; nothing below this layer prints.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cnipy import __version__
from cnipy.cni import version as V
from cnipy.cni.errors import CniError, InternalError, IOFailure, UnsupportedField
from cnipy.cni.request import MAX_STDIN, Request, command_of, decode_json, parse_request
from cnipy.cni.types import Result


class Plugin(Protocol):
    ABOUT: str


@dataclass(frozen=True)
class Outcome:
    stdout: bytes
    exit_code: int
    stderr: bytes = b""


def _version_of(stdin: bytes) -> str:
    """Best-effort cniVersion for an error reply: the config's when we speak it, else the latest."""
    try:
        conf = json.loads(stdin)
        v = conf.get("cniVersion") if isinstance(conf, dict) else None
        return v if isinstance(v, str) and v in V.SUPPORTED else V.LATEST
    except Exception:
        return V.LATEST


def error_json(exc: CniError, stdin: bytes) -> bytes:
    """The stdout of a failed call: the error in the config's version (or the latest)."""
    return _dump(exc.to_json(_version_of(stdin)))


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=None, separators=(",", ":")) + "\n").encode()


def about_text(plugin: Plugin) -> str:
    return f"{plugin.ABOUT} v{__version__}\nCNI protocol versions supported: {', '.join(V.SUPPORTED)}\n"


def version_reply(stdin: bytes) -> bytes:
    asked = V.LATEST
    if stdin.strip():
        conf = decode_json(stdin)
        if isinstance(conf, dict) and isinstance(conf.get("cniVersion"), str) and conf["cniVersion"] in V.SUPPORTED:
            asked = conf["cniVersion"]
    return _dump({"cniVersion": asked, "supportedVersions": list(V.SUPPORTED)})


def dispatch(plugin: Plugin, req: Request) -> bytes:
    """Call the plugin's verb; return what goes to stdout on success."""
    verb = {"ADD": "cmd_add", "DEL": "cmd_del", "CHECK": "cmd_check", "GC": "cmd_gc",
            "STATUS": "cmd_status"}[req.command]
    fn = getattr(plugin, verb, None)
    if fn is None:
        if req.command in ("GC", "STATUS"):
            return b""
        raise UnsupportedField(f"{req.command} is not supported by this plugin")
    if req.command == "ADD":
        result: Result = fn(req)
        return _dump(result.to_json(req.config.cni_version))
    fn(req)
    return b""


def execute(plugin: Plugin, env: Mapping[str, str], stdin: bytes) -> Outcome:
    """One complete CNI call, in-process. Used by the executables, the daemon and in-process delegation."""
    if not env.get("CNI_COMMAND"):
        return Outcome(b"", 0, about_text(plugin).encode())
    try:
        if command_of(env) == "VERSION":
            return Outcome(version_reply(stdin), 0)
        req = parse_request(env, stdin)
        return Outcome(dispatch(plugin, req), 0)
    except CniError as exc:
        return Outcome(error_json(exc, stdin), 1)
    except Exception as exc:  # the one place a bug becomes a CNI error instead of a traceback
        _log_bug(env)
        err = InternalError(f"internal error: {type(exc).__name__}", str(exc)[:500])
        return Outcome(error_json(err, stdin), 1)


def _log_bug(env: Mapping[str, str]) -> None:
    """Tracebacks never reach the runtime; they go to CNIPY_LOG_FILE when the operator asks for them."""
    path = env.get("CNIPY_LOG_FILE")
    if not path:
        return
    import traceback  # only on the bug path: it costs several ms of start-up on every call

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(traceback.format_exc())
    except OSError:
        pass


class _Unloadable:
    """Stands in for a plugin whose module failed to import: every verb reports that, as a CNI error."""

    def __init__(self, name: str, exc: BaseException) -> None:
        self.ABOUT = f"cnipy plugin {name!r} (not loadable: {type(exc).__name__})"
        self._error = InternalError(f"cnipy plugin {name!r} can not be loaded", f"{type(exc).__name__}: {exc}"[:300])

    def _fail(self, req: Request) -> Any:
        raise self._error

    cmd_add = cmd_del = cmd_check = cmd_gc = cmd_status = _fail


def unloadable(name: str, exc: BaseException) -> Plugin:
    return _Unloadable(name, exc)


def read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read(MAX_STDIN + 1)
    except (OSError, ValueError, AttributeError):
        return b""


def main(plugin: Plugin) -> None:
    """Entry point of a CNI executable: env + stdin in, JSON out, exit code."""
    env = dict(os.environ)
    try:
        stdin = read_stdin() if env.get("CNI_COMMAND") else b""
        outcome = execute(plugin, env, stdin)
    except BaseException as exc:  # even KeyboardInterrupt or a failing read: answer in JSON
        err = exc if isinstance(exc, CniError) else IOFailure(f"plugin aborted: {type(exc).__name__}")
        outcome = Outcome(_dump(err.to_json(V.LATEST)), 1)
    try:
        if outcome.stderr:
            sys.stderr.buffer.write(outcome.stderr)
            sys.stderr.flush()
        sys.stdout.buffer.write(outcome.stdout)
        sys.stdout.flush()
    except OSError:
        pass
    os._exit(outcome.exit_code)

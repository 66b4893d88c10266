"""Delegation: run another CNI plugin found on CNI_PATH (an IPAM plugin, or bridge under overlay).

The delegate sees the caller's environment with CNI_COMMAND set, gets the network configuration on stdin and
writes its stderr straight to ours. When the executable found is one of cnipy's own plugins, it is run in-process
(same protocol code, same result) to spare an interpreter start; set CNIPY_DELEGATE_EXEC=1 to always exec.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from cnipy.cni import validate
from cnipy.cni.errors import CniError, DecodeFailure, DelegateError, InvalidConfig
from cnipy.cni.request import Request, decode_json
from cnipy.cni.types import Result

PLUGIN_MARKER = b"cnipy CNI plugin:"
DELEGATE_TIMEOUT = 120


def find(plugin_type: str, path: tuple[str, ...]) -> Path:
    validate.plugin_type(plugin_type)
    for directory in path:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise InvalidConfig(f"failed to find plugin {plugin_type!r} in path {list(path)}")


def own_plugin_name(executable: Path) -> str | None:
    """The plugin name when `executable` is one of cnipy's launchers (they carry a marker line).

    Both kinds carry it in their first 4 KiB: the sh launchers in plugins/ as a comment, the compiled fronts
    (.venv/libexec/cni, see front.c) in an ELF note.
    """
    try:
        with open(executable, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    for line in head.splitlines():
        if line.startswith(b"# " + PLUGIN_MARKER):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def run(plugin_type: str, command: str, req: Request, stdin: bytes | None = None) -> bytes:
    """Run a delegate verb; return its stdout, or raise its CNI error (code passed through)."""
    executable = find(plugin_type, req.path)
    env = dict(req.env)
    env["CNI_COMMAND"] = command
    data = req.stdin if stdin is None else stdin
    name = own_plugin_name(executable)
    if name is not None and env.get("CNIPY_DELEGATE_EXEC") != "1":
        from cnipy.cni.skel import execute
        from cnipy.plugins import registry  # local import: only delegating plugins pay for it

        outcome = execute(registry.load(name), env, data)
        out, code, err = outcome.stdout, outcome.exit_code, outcome.stderr
        if err:
            os.write(2, err)
    else:
        try:
            proc = subprocess.run([str(executable)], input=data, env=env, stdout=subprocess.PIPE,
                                  stderr=None, timeout=DELEGATE_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DelegateError(f"running {plugin_type} failed", str(exc)[:200]) from exc
        out, code = proc.stdout, proc.returncode
    if code != 0:
        raise _error_from(plugin_type, out, code)
    return out


def _error_from(plugin_type: str, out: bytes, code: int) -> CniError:
    try:
        err = decode_json(out, f"{plugin_type} error")
    except DecodeFailure:
        return DelegateError(f"{plugin_type} failed with exit code {code}", out[:200].decode("utf-8", "replace"))
    if isinstance(err, dict) and type(err.get("code")) is int and err["code"] > 0 \
            and isinstance(err.get("msg"), str):
        details = err.get("details")
        return CniError(err["msg"], details if isinstance(details, str) else "", code=err["code"])
    return DelegateError(f"{plugin_type} failed with exit code {code}", str(err)[:200])


def add(plugin_type: str, req: Request, stdin: bytes | None = None) -> Result:
    out = run(plugin_type, "ADD", req, stdin)
    return Result.from_json(decode_json(out, f"{plugin_type} result"), req.config.cni_version)


def delete(plugin_type: str, req: Request, stdin: bytes | None = None) -> None:
    run(plugin_type, "DEL", req, stdin)


def check(plugin_type: str, req: Request, stdin: bytes | None = None) -> None:
    run(plugin_type, "CHECK", req, stdin)


def gc(plugin_type: str, req: Request, stdin: bytes | None = None) -> None:
    run(plugin_type, "GC", req, stdin)


def status(plugin_type: str, req: Request, stdin: bytes | None = None) -> None:
    run(plugin_type, "STATUS", req, stdin)


def env_with(env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    out = dict(env)
    out.update(overrides)
    return out

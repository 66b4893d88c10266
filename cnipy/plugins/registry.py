"""CNI type name -> plugin module. The executables in plugins/ and the daemon both resolve through here."""

from __future__ import annotations

import importlib
from types import ModuleType

PLUGINS = {
    "cnipy-host-local": "cnipy.plugins.hostlocal",
    "cnipy-loopback": "cnipy.plugins.loopback",
    "cnipy-bridge": "cnipy.plugins.bridge",
    "cnipy-veth": "cnipy.plugins.veth",
    "cnipy-overlay": "cnipy.plugins.overlay",
}


def load(name: str) -> ModuleType:
    try:
        module = PLUGINS[name]
    except KeyError:
        raise LookupError(f"no cnipy plugin named {name!r}") from None
    return importlib.import_module(module)

"""`cnipy proxy`: the service proxy daemon (the command lives with its subsystem)."""

from cnipy.proxy.command import proxy_command as proxy

__all__ = ["proxy"]

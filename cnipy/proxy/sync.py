"""What both back ends share: the Proxier protocol and the result of one sync."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from cnipy.proxy.model import ServiceKey
from cnipy.proxy.plan import ServicePlans


@dataclass(frozen=True)
class SyncResult:
    full: bool
    operations: int  # transaction operations, or restore lines, sent to the kernel
    rules: int  # rules in force after the sync
    elements: int = 0  # nftables map/set elements in force


class Proxier(Protocol):
    mode: str

    def sync(self, plans: ServicePlans, changed: AbstractSet[ServiceKey] | None) -> SyncResult:
        """Make the kernel match ``plans`` (every service). ``changed`` names the services that differ from the
        last successful sync; None asks for a full sync. On ApplyError nothing changed and the proxier still
        remembers the last rules that were applied."""

    def needs_repair(self) -> bool:
        """True when our rules are missing or were flushed by someone else (then the caller does a full sync)."""

    def cleanup(self) -> None:
        """Remove everything this proxier installed."""


@contextmanager
def gc_paused() -> Iterator[None]:
    """A full sync allocates ~10 objects per endpoint; the cyclic collector would otherwise scan them over and
    over (it doubles the time of a 10k-service sync). None of them form cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()

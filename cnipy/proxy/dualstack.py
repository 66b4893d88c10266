"""A dual-stack node: one proxier per IP family behind one daemon, as kube-proxy's metaproxier does it.

The daemon plans every service once per family (``plan.build_family_plans``): a service's port plans of both
families sit side by side under its key, and ``MetaProxier`` hands each family's proxier only the plans of its
family (``plan.plan_family``), through a view, so a partial sync stays proportional to the services changed.
One sync loop, one /healthz, one set of metrics: a sync succeeds when every family's sync does, and its counts
(operations, rules, elements) are the sums over the families.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet

from cnipy.proxy.errors import ApplyError
from cnipy.proxy.model import ServiceKey
from cnipy.proxy.plan import PortPlan, ServicePlans, plan_family
from cnipy.proxy.sync import Proxier, SyncResult


class FamilyPlans(Mapping[ServiceKey, tuple[PortPlan, ...]]):
    """The port plans of one family, filtered on access (every key is present, possibly with ())."""

    def __init__(self, plans: ServicePlans, family: int) -> None:
        self.plans, self.family = plans, family

    def __getitem__(self, key: ServiceKey) -> tuple[PortPlan, ...]:
        return tuple([p for p in self.plans[key] if plan_family(p) == self.family])

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self.plans)

    def __len__(self) -> int:
        return len(self.plans)


class MetaProxier:
    """Proxiers by family (4, 6), run one after the other on every sync."""

    def __init__(self, proxiers: Mapping[int, Proxier]) -> None:
        if not proxiers or set(proxiers) - {4, 6}:
            raise ValueError(f"proxiers must be keyed by IP family 4 and/or 6, not {sorted(proxiers)}")
        modes = {p.mode for p in proxiers.values()}
        if len(modes) != 1:
            raise ValueError(f"one mode for every family, not {sorted(modes)}")
        self.proxiers = dict(sorted(proxiers.items()))
        self.mode = modes.pop()

    def sync(self, plans: ServicePlans, changed: AbstractSet[ServiceKey] | None) -> SyncResult:
        """Every family, even when one fails (its last rules stay in force); the first failure is re-raised,
        so the daemon retries with a full sync of all of them."""
        results, failure = [], None
        for family, proxier in self.proxiers.items():
            try:
                results.append(proxier.sync(FamilyPlans(plans, family), changed))
            except ApplyError as exc:
                failure = failure or ApplyError(f"IPv{family}: {exc}")
        if failure is not None:
            raise failure
        return SyncResult(full=all(r.full for r in results), operations=sum(r.operations for r in results),
                          rules=sum(r.rules for r in results), elements=sum(r.elements for r in results))

    def needs_repair(self) -> bool:
        return any(p.needs_repair() for p in self.proxiers.values())

    def cleanup(self) -> None:
        failure = None
        for family, proxier in self.proxiers.items():
            try:
                proxier.cleanup()
            except ApplyError as exc:
                failure = failure or ApplyError(f"IPv{family}: {exc}")
        if failure is not None:
            raise failure

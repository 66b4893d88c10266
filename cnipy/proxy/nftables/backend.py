"""The nftables proxier: full syncs rebuild the table atomically; partial syncs only add and delete elements."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from cnipy.proxy.model import ServiceKey
from cnipy.proxy.nftables.render import (
    SETS,
    Contribution,
    affinity_objects,
    base_chains,
    contribution,
    dispatch_rules,
)
from cnipy.proxy.nftables.runner import NftInterface
from cnipy.proxy.nftables.transaction import (
    Chain,
    Element,
    Elements,
    Object,
    Rule,
    Set,
    Table,
    Transaction,
    Verb,
)
from cnipy.proxy.plan import NodeConfig, PortPlan, ServicePlans
from cnipy.proxy.sync import SyncResult

CANARY_CHAIN = "nat-prerouting"
# A sentinel no packet matches (port 0): if it is gone, someone flushed our maps; "continue" does nothing.
CANARY_ELEMENT = ("service-ips", "0.0.0.0 . tcp . 0", "continue")
_BATCH = 256  # services per streamed batch of elements


@dataclass
class _FullBuild:
    """What a full sync builds while streaming; becomes the proxier's state once nft accepted it."""

    owned: dict[ServiceKey, Contribution] = field(default_factory=dict)
    hairpin: Counter[str] = field(default_factory=Counter)
    chain_refs: Counter[str] = field(default_factory=Counter)
    aux: dict[str, int] = field(default_factory=dict)
    elements: int = 0


class NftablesProxier:
    mode = "nftables"

    def __init__(self, nft: NftInterface, config: NodeConfig) -> None:
        self.nft = nft
        self.config = config
        self.owned: dict[ServiceKey, Contribution] = {}
        self.hairpin: Counter[str] = Counter()
        self.chain_refs: Counter[str] = Counter()
        self.aux: dict[str, int] = {}  # affinity sets and slot chains in the table -> their rule counts
        self.synced = False
        self.elements = 0
        self.rendered: dict[ServiceKey, tuple[PortPlan, ...]] = {}  # the plans ``owned`` was built from

    def _tx(self) -> Transaction:
        return Transaction(self.nft.family, self.nft.table)

    def sync(self, plans: ServicePlans, changed: AbstractSet[ServiceKey] | None) -> SyncResult:
        if changed is None or not self.synced:
            return self._full(plans)
        return self._partial(plans, changed)

    def _full(self, plans: ServicePlans) -> SyncResult:
        tx = self._tx()
        tx.add(Table())
        tx.delete(Table())  # add-then-delete: works whether or not the table exists, still one transaction
        tx.add(Table())
        for s in SETS:
            tx.add(s)
        chains = base_chains(self.config)
        for chain, _ in chains.values():
            tx.add(chain)
        for chain, rules in chains.values():
            for r in rules:
                tx.add(Rule(chain.name, r))
        tx.add(Element(*CANARY_ELEMENT))
        built = _FullBuild()
        tx.stream(self._full_ops(plans, built))  # produced while nft parses what came before
        self.nft.run(tx)
        self.owned, self.hairpin, self.chain_refs, self.synced = built.owned, built.hairpin, built.chain_refs, True
        self.aux = built.aux
        self.rendered = {key: ports for key, ports in plans.items() if ports}
        self.elements = built.elements + 1  # and the canary
        return SyncResult(full=True, operations=len(tx), rules=self.rule_count(), elements=self.elements)

    def _full_ops(self, plans: ServicePlans, built: _FullBuild) -> Iterator[tuple[Verb, Object]]:
        items = [(key, ports) for key, ports in plans.items() if ports]
        for start in range(0, len(items), _BATCH):
            batch: dict[str, list[tuple[str, str | None]]] = {}
            for key, ports in items[start:start + _BATCH]:
                # A periodic or repairing full sync reuses what it rendered for plans that did not change.
                c = self.owned[key] if self.rendered.get(key) is ports else contribution(ports)
                built.owned[key] = c
                built.hairpin.update(c.hairpin)
                for name in c.chains:
                    if name not in built.chain_refs:  # a dispatch chain must exist before elements jump to it
                        yield from self._add_dispatch(name, built.aux)
                built.chain_refs.update(c.chains)
                for set_name, owned_elems in c.elements.items():
                    batch.setdefault(set_name, []).extend(owned_elems.items())
            for set_name, elems in batch.items():
                built.elements += len(elems)
                yield Verb.ADD, Elements(set_name, tuple(elems))
        if built.hairpin:
            built.elements += len(built.hairpin)
            yield Verb.ADD, Elements("hairpin", tuple((k, None) for k in built.hairpin))

    def _add_dispatch(self, name: str, aux: dict[str, int]) -> Iterator[tuple[Verb, Object]]:
        """A dispatch chain, after the affinity sets and slot chains it uses (added once, shared, kept until
        the next full sync); ``aux`` maps each of those already there to its rule count."""
        aux_sets, aux_chains = affinity_objects(name)
        for st in aux_sets:
            if st.name not in aux:
                aux[st.name] = 0
                yield Verb.ADD, st
        for chain, rules in aux_chains:
            if chain.name not in aux:
                aux[chain.name] = len(rules)
                yield Verb.ADD, chain
                for r in rules:
                    yield Verb.ADD, Rule(chain.name, r)
        yield Verb.ADD, Chain(name)
        for r in dispatch_rules(name, self.config):
            yield Verb.ADD, Rule(name, r)

    def _partial(self, plans: ServicePlans, changed: AbstractSet[ServiceKey]) -> SyncResult:
        new_owned = {key: contribution(plans.get(key, ())) for key in changed}
        dels: dict[str, list[str]] = {}
        adds: dict[str, list[tuple[str, str | None]]] = {}
        hairpin_delta: Counter[str] = Counter()
        chain_delta: Counter[str] = Counter()
        for key, new in new_owned.items():
            old = self.owned.get(key, Contribution())
            for set_name in set(old.elements) | set(new.elements):
                before, after = old.elements.get(set_name, {}), new.elements.get(set_name, {})
                for k, v in before.items():
                    if after.get(k, ...) != v:
                        dels.setdefault(set_name, []).append(k)
                for k, v in after.items():
                    if before.get(k, ...) != v:
                        adds.setdefault(set_name, []).append((k, v))
            hairpin_delta.update(new.hairpin)
            hairpin_delta.subtract(old.hairpin)
            chain_delta.update(new.chains)
            chain_delta.subtract(old.chains)
        for k, d in hairpin_delta.items():
            if d > 0 and self.hairpin.get(k, 0) <= 0:
                adds.setdefault("hairpin", []).append((k, None))
            elif d < 0 and self.hairpin.get(k, 0) + d <= 0:
                dels.setdefault("hairpin", []).append(k)
        new_chains = sorted(c for c, d in chain_delta.items() if d > 0 and self.chain_refs.get(c, 0) <= 0)
        gone_chains = sorted(c for c, d in chain_delta.items() if d < 0 and self.chain_refs.get(c, 0) + d <= 0)
        tx = self._tx()
        aux = dict(self.aux)
        for name in new_chains:
            for _, obj in self._add_dispatch(name, aux):  # only additions
                tx.add(obj)
        for set_name, keys in dels.items():
            tx.delete_elements(set_name, keys)
        for set_name, items in adds.items():
            tx.add_elements(set_name, items)
        for name in gone_chains:
            tx.delete(Chain(name))
        # Affinity sets and slot chains no remaining dispatch chain uses go too: slot chains, then sets.
        live = {c for c, n in self.chain_refs.items() if n + chain_delta.get(c, 0) > 0}
        live |= {c for c, d in chain_delta.items() if d > 0}
        needed = {obj.name for c in live for objs in affinity_objects(c) for obj in
                  (o if isinstance(o, Set) else o[0] for o in objs)}
        unused = sorted(set(aux) - needed)
        unused_sets = [name for name in unused if name.rpartition("-")[2].startswith("aff")]
        for name in unused:
            if name not in unused_sets:
                tx.delete(Chain(name))
        for name in unused_sets:
            tx.delete(Set(name, ""))
        for name in unused:
            del aux[name]
        if len(tx):
            self.nft.run(tx)
        for key, new in new_owned.items():
            if new.elements or new.chains or new.hairpin:
                self.owned[key] = new
                self.rendered[key] = plans[key]
            else:
                self.owned.pop(key, None)
                self.rendered.pop(key, None)
        self.aux = aux
        _apply_delta(self.hairpin, hairpin_delta)
        _apply_delta(self.chain_refs, chain_delta)
        n_dels, n_adds = sum(map(len, dels.values())), sum(map(len, adds.values()))
        self.elements += n_adds - n_dels
        return SyncResult(full=False, operations=n_dels + n_adds + len(new_chains) + len(gone_chains),
                          rules=self.rule_count(), elements=self.elements)

    def rule_count(self) -> int:
        return sum(len(r) for _, r in base_chains(self.config).values()) + sum(
            len(dispatch_rules(c, self.config)) for c in self.chain_refs) + sum(self.aux.values())

    def needs_repair(self) -> bool:
        if not self.synced:
            return False
        rules = self.nft.list_rules(CANARY_CHAIN)
        if not rules or not any("jump services" in r for r in rules):
            return True
        return not self.nft.has_element(CANARY_ELEMENT[0], CANARY_ELEMENT[1])

    def cleanup(self) -> None:
        tx = self._tx()
        tx.add(Table())
        tx.delete(Table())
        self.nft.run(tx)
        self.owned, self.hairpin, self.chain_refs, self.synced = {}, Counter(), Counter(), False
        self.aux = {}
        self.rendered = {}


def _apply_delta(counts: Counter[str], delta: Counter[str]) -> None:
    for k, d in delta.items():
        if d:
            n = counts.get(k, 0) + d
            if n > 0:
                counts[k] = n
            else:
                counts.pop(k, None)

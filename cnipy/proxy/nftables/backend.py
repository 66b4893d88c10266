"""The nftables proxier: full syncs rebuild the table atomically; partial syncs only add and delete elements."""

from __future__ import annotations

from collections import Counter
from collections.abc import Set as AbstractSet

from cnipy.proxy.model import ServiceKey
from cnipy.proxy.nftables.render import (
    SETS,
    Contribution,
    base_chains,
    contribution,
    dispatch_rules,
)
from cnipy.proxy.nftables.runner import NftInterface
from cnipy.proxy.nftables.transaction import Chain, Rule, Table, Transaction
from cnipy.proxy.plan import NodeConfig, ServicePlans
from cnipy.proxy.sync import SyncResult

CANARY_CHAIN = "nat-prerouting"


class NftablesProxier:
    mode = "nftables"

    def __init__(self, nft: NftInterface, config: NodeConfig) -> None:
        self.nft = nft
        self.config = config
        self.owned: dict[ServiceKey, Contribution] = {}
        self.hairpin: Counter[str] = Counter()
        self.chain_refs: Counter[str] = Counter()
        self.synced = False
        self.elements = 0

    def _tx(self) -> Transaction:
        return Transaction(self.nft.family, self.nft.table)

    def sync(self, plans: ServicePlans, changed: AbstractSet[ServiceKey] | None) -> SyncResult:
        if changed is None or not self.synced:
            return self._full(plans)
        return self._partial(plans, changed)

    def _full(self, plans: ServicePlans) -> SyncResult:
        owned = {key: contribution(ports) for key, ports in plans.items() if ports}
        hairpin: Counter[str] = Counter()
        chain_refs: Counter[str] = Counter()
        elements: dict[str, dict[str, str | None]] = {s.name: {} for s in SETS}
        for c in owned.values():
            hairpin.update(c.hairpin)
            chain_refs.update(c.chains)
            for set_name, items in c.elements.items():
                elements[set_name].update(items)
        tx = self._tx()
        tx.add(Table())
        tx.delete(Table())  # add-then-delete: works whether or not the table exists, still one transaction
        tx.add(Table())
        for s in SETS:
            tx.add(s)
        chains = base_chains(self.config)
        for name in sorted(chain_refs):
            chains[name] = (Chain(name), dispatch_rules(name, self.config))
        for chain, _ in chains.values():
            tx.add(chain)
        for chain, rules in chains.values():
            for r in rules:
                tx.add(Rule(chain.name, r))
        for set_name, items in elements.items():
            tx.add_elements(set_name, items.items())
        tx.add_elements("hairpin", ((k, None) for k in hairpin))
        self.nft.run(tx)
        self.owned, self.hairpin, self.chain_refs, self.synced = owned, hairpin, chain_refs, True
        self.elements = sum(len(v) for v in elements.values()) + len(hairpin)
        return SyncResult(full=True, operations=len(tx), rules=sum(len(r) for _, r in chains.values()),
                          elements=self.elements)

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
        for name in new_chains:
            tx.add(Chain(name))
            for r in dispatch_rules(name, self.config):
                tx.add(Rule(name, r))
        for set_name, keys in dels.items():
            tx.delete_elements(set_name, keys)
        for set_name, items in adds.items():
            tx.add_elements(set_name, items)
        for name in gone_chains:
            tx.delete(Chain(name))
        if len(tx):
            self.nft.run(tx)
        for key, new in new_owned.items():
            if new.elements or new.chains or new.hairpin:
                self.owned[key] = new
            else:
                self.owned.pop(key, None)
        _apply_delta(self.hairpin, hairpin_delta)
        _apply_delta(self.chain_refs, chain_delta)
        n_dels, n_adds = sum(map(len, dels.values())), sum(map(len, adds.values()))
        self.elements += n_adds - n_dels
        return SyncResult(full=False, operations=n_dels + n_adds + len(new_chains) + len(gone_chains),
                          rules=self.rule_count(), elements=self.elements)

    def rule_count(self) -> int:
        return sum(len(r) for _, r in base_chains(self.config).values()) + sum(
            len(dispatch_rules(c, self.config)) for c in self.chain_refs)

    def needs_repair(self) -> bool:
        if not self.synced:
            return False
        rules = self.nft.list_rules(CANARY_CHAIN)
        return not rules or not any("jump services" in r for r in rules)

    def cleanup(self) -> None:
        tx = self._tx()
        tx.add(Table())
        tx.delete(Table())
        self.nft.run(tx)
        self.owned, self.hairpin, self.chain_refs, self.synced = {}, Counter(), Counter(), False


def _apply_delta(counts: Counter[str], delta: Counter[str]) -> None:
    for k, d in delta.items():
        if d:
            n = counts.get(k, 0) + d
            if n > 0:
                counts[k] = n
            else:
                counts.pop(k, None)

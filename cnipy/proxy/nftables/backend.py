"""The nftables proxier: full syncs rebuild the table atomically; partial syncs only add and delete elements.

One proxier serves one IP family (its NodeConfig's), in that family's table: ``ip cnipy`` or ``ip6 cnipy``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet

from cnipy.proxy.errors import ApplyError
from cnipy.proxy.model import ServiceKey
from cnipy.proxy.nftables.render import (
    CLUSTER_IPS_SET,
    STICKY_SET_PREFIX,
    ElementText,
    StickyDest,
    StickyKey,
    affinity_chains,
    affinity_map_name,
    base_chains,
    cluster_ips_chains,
    contribution,
    dispatch_rules,
    family_of,
    record_chain,
    sets,
    sticky_key,
)
from cnipy.proxy.nftables.runner import NftInterface
from cnipy.proxy.nftables.transaction import (
    Chain,
    Element,
    Entries,
    Entry,
    Object,
    RenderedElements,
    Rule,
    Table,
    Transaction,
    Verb,
)
from cnipy.proxy.plan import AnyNodeConfig, PortPlan, ServicePlans
from cnipy.proxy.sync import SyncResult

CANARY_CHAIN = "nat-prerouting"
# A sentinel no packet matches (port 0): if it is gone, someone flushed our maps; "continue" does nothing.
CANARY_ELEMENT = ("service-ips", "0.0.0.0 . tcp . 0", "continue")  # in the IPv4 table; "::" in the IPv6 one

log = logging.getLogger(__name__)


class NftablesProxier:
    mode = "nftables"

    def __init__(self, nft: NftInterface, config: AnyNodeConfig) -> None:
        self.fam = family_of(config)
        if nft.family != self.fam.table_family:
            raise ValueError(f"an IPv{config.ip_family} proxier needs an nft table of family "
                             f"{self.fam.table_family}, not {nft.family}")
        self.nft = nft
        self.config = config
        self.canary = (CANARY_ELEMENT[0], f"{self.fam.unspecified} . tcp . 0", CANARY_ELEMENT[2])
        self.sticky_dests: dict[str, StickyDest] = {}  # the IPv6 table's affinity destinations in force
        # What is in force, for partial syncs: the plans of every service with ports (a service's elements
        # are re-derived from its plans when it changes), and reference counts of what services share.
        self.applied: dict[ServiceKey, tuple[PortPlan, ...]] = {}
        self.hairpin: Counter[str] = Counter()
        self.cluster_ips: Counter[str] = Counter()  # services per ClusterIP (two from manifests may share one)
        self.chain_refs: Counter[str] = Counter()
        self.aux: dict[str, int] = {}  # affinity record chains in the table -> their rule counts
        self.synced = False
        self.elements = 0

    def _tx(self) -> Transaction:
        return Transaction(self.nft.family, self.nft.table)

    def sync(self, plans: ServicePlans, changed: AbstractSet[ServiceKey] | None) -> SyncResult:
        if changed is None or not self.synced:
            return self._full(plans)
        return self._partial(plans, changed)

    def _full(self, plans: ServicePlans) -> SyncResult:
        """Replace the table in one transaction, carrying over the affinity entries that are still valid."""
        tx = self._tx()
        tx.add(Table())
        tx.delete(Table())  # add-then-delete: works whether or not the table exists, still one transaction
        tx.add(Table())
        for s in sets(self.fam):
            tx.add(s)
        chains = self._fixed_chains()
        for chain, _ in chains.values():
            tx.add(chain)
        for chain, rules in chains.values():
            for r in rules:
                tx.add(Rule(chain.name, r))
        tx.add(Element(*self.canary))
        # Every service's elements as text, counting the dispatch chains, hairpin entries and ClusterIPs services
        # share.
        text = ElementText(self.fam)
        hairpin: Counter[str] = Counter()
        cluster_ips: Counter[str] = Counter()
        refs: dict[str, int] = {}
        applied = {}
        for key, ports in plans.items():
            if not ports:
                continue
            applied[key] = ports
            text.start()
            for p in ports:
                text.port(p)
            for name in text.chains:
                refs[name] = refs.get(name, 0) + 1
            if text.hairpin:
                hairpin.update(text.hairpin)
            cluster_ips.update(text.cluster_ips)
        aux: dict[str, int] = {}
        for name in refs:  # before the elements that jump to them
            for _, obj in self._add_dispatch(name, aux):
                tx.add(obj)
        sticky = text.sticky_dests
        for dest in sticky.values():  # after the dispatch chains they go to
            self._put_sticky(tx, dest)
        carried_sets = self._valid_sticky_entries(sticky) if sticky else {}
        for set_name, items in text.text.items():
            tx.add(RenderedElements(set_name, items))
        if hairpin:
            tx.add(RenderedElements("hairpin", list(hairpin)))
        if cluster_ips:
            tx.add(RenderedElements(CLUSTER_IPS_SET, list(cluster_ips)))
        carried = self._valid_entries(text.sticky) if text.sticky else {}
        for map_name, entries in (*carried.items(), *carried_sets.items()):
            tx.add(Entries(map_name, tuple(entries)))
        self.nft.run(tx)
        self.sticky_dests = dict(sticky)
        self.applied, self.hairpin, self.chain_refs, self.aux = applied, hairpin, Counter(refs), aux
        self.cluster_ips = cluster_ips
        self.synced = True
        self.elements = sum(map(len, text.text.values())) + len(hairpin) + len(cluster_ips) + 1  # and the canary
        return SyncResult(full=True, operations=len(tx), rules=self.rule_count(), elements=self.elements)

    def _add_dispatch(self, name: str, aux: dict[str, int]) -> Iterator[tuple[Verb, Object]]:
        """A dispatch chain, and the affinity record chain its services use (shared; added once, deleted with
        its last user); ``aux`` maps each record chain already there to its rule count."""
        record = record_chain(name, self.fam)
        if record is not None and record[0].name not in aux:
            chain, rules = record
            aux[chain.name] = len(rules)
            yield Verb.ADD, chain
            for r in rules:
                yield Verb.ADD, Rule(chain.name, r)
        yield Verb.ADD, Chain(name)
        for r in dispatch_rules(name, self.config):
            yield Verb.ADD, Rule(name, r)

    def _put_sticky(self, tx: Transaction, dest: StickyDest, have: StickyDest | None = None) -> None:
        """The sets and chains of an IPv6 affinity destination (render.StickyDest). With ``have`` in force, its
        chains are rewritten and only its new sets added; the caller deletes the sets it no longer uses."""
        old_sets = {s.name for s in have.sets(self.fam)} if have is not None else set()
        for s in dest.sets(self.fam):
            if s.name not in old_sets:
                tx.add(s)
        for name, rules in dest.chains(self.fam, self.config):
            if have is None:
                tx.add(Chain(name))
            else:
                tx.flush(Chain(name))
            for r in rules:
                tx.add(Rule(name, r))

    def _partial(self, plans: ServicePlans, changed: AbstractSet[ServiceKey]) -> SyncResult:
        new_owned = {key: contribution(plans.get(key, ()), self.fam) for key in changed}
        old_owned = {key: contribution(self.applied.get(key, ()), self.fam) for key in changed}
        dels: dict[str, list[str]] = {}
        adds: dict[str, list[tuple[str, str | None]]] = {}
        hairpin_delta: Counter[str] = Counter()
        cluster_ip_delta: Counter[str] = Counter()
        chain_delta: Counter[str] = Counter()
        for key, new in new_owned.items():
            old = old_owned[key]
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
            cluster_ip_delta.update(new.cluster_ips)
            cluster_ip_delta.subtract(old.cluster_ips)
            chain_delta.update(new.chains)
            chain_delta.subtract(old.chains)
        for set_name, delta, counts in (("hairpin", hairpin_delta, self.hairpin),
                                        (CLUSTER_IPS_SET, cluster_ip_delta, self.cluster_ips)):
            for k, d in delta.items():  # shared elements: added by their first user, deleted with their last
                if d > 0 and counts.get(k, 0) <= 0:
                    adds.setdefault(set_name, []).append((k, None))
                elif d < 0 and counts.get(k, 0) + d <= 0:
                    dels.setdefault(set_name, []).append(k)
        # Affinity entries that point to an endpoint leaving its service (or a service leaving affinity), and
        # for a service address that gains affinity, those pointing elsewhere than its endpoints (recorded by
        # the NodePort rule for a port equal to an affinity NodePort; see render.affinity_chains).
        removed: dict[StickyKey, set[str]] = {}
        fresh: dict[StickyKey, set[str]] = {}
        for key, new in new_owned.items():
            old_sticky = old_owned[key].sticky
            for where, eps in old_sticky.items():
                if gone := eps - new.sticky.get(where, set()):
                    removed.setdefault(where, set()).update(gone)
            fresh.update((w, eps) for w, eps in new.sticky.items() if w[1] is not None and w not in old_sticky)
        stale = self._stale_entries(removed, fresh) if removed or fresh else {}
        # IPv6 affinity destinations (render.StickyDest): added, rewritten, or gone with their sets.
        old_dests = {k: d for c in old_owned.values() for k, d in c.sticky_dests.items()}
        new_dests = {k: d for c in new_owned.values() for k, d in c.sticky_dests.items()}
        new_chains = sorted(c for c, d in chain_delta.items() if d > 0 and self.chain_refs.get(c, 0) <= 0)
        gone_chains = sorted(c for c, d in chain_delta.items() if d < 0 and self.chain_refs.get(c, 0) + d <= 0)
        tx = self._tx()
        aux = dict(self.aux)
        for name in new_chains:
            for _, obj in self._add_dispatch(name, aux):  # only additions
                tx.add(obj)
        for dkey, dest in new_dests.items():
            if old_dests.get(dkey) != dest:
                self._put_sticky(tx, dest, old_dests.get(dkey))
        for set_name, keys in dels.items():
            tx.delete_elements(set_name, keys)
        for set_name, items in adds.items():
            tx.add_elements(set_name, items)
        _purge(tx, stale)
        # Sticky chains before the dispatch chains they go to; sets once no rule uses them.
        for dkey, dest in old_dests.items():
            if dkey not in new_dests:
                tx.delete(Chain(dest.chain))
                tx.delete(Chain(dest.record))
        for dkey, dest in old_dests.items():
            kept = {s.name for s in new_dests[dkey].sets(self.fam)} if dkey in new_dests else set()
            for s in dest.sets(self.fam):
                if s.name not in kept:
                    tx.delete(s)
        for name in gone_chains:
            tx.delete(Chain(name))
        # Record chains no remaining dispatch chain uses go too (their affinity-ips elements went above).
        live = {c for c, n in self.chain_refs.items() if n + chain_delta.get(c, 0) > 0}
        live |= {c for c, d in chain_delta.items() if d > 0}
        needed = {record[0].name for c in live if (record := record_chain(c, self.fam)) is not None}
        for name in sorted(set(aux) - needed):
            tx.delete(Chain(name))
            del aux[name]
        if len(tx):
            self.nft.run(tx)
        for dkey in old_dests.keys() - new_dests.keys():
            self.sticky_dests.pop(dkey, None)
        self.sticky_dests.update(new_dests)
        for key in changed:
            if plans.get(key):
                self.applied[key] = plans[key]
            else:
                self.applied.pop(key, None)
        self.aux = aux
        _apply_delta(self.hairpin, hairpin_delta)
        _apply_delta(self.cluster_ips, cluster_ip_delta)
        _apply_delta(self.chain_refs, chain_delta)
        n_dels, n_adds = sum(map(len, dels.values())), sum(map(len, adds.values()))
        self.elements += n_adds - n_dels
        if removed:
            self._purge_stragglers(removed)
        return SyncResult(full=False, operations=n_dels + n_adds + len(new_chains) + len(gone_chains),
                          rules=self.rule_count(), elements=self.elements)

    def _valid_sticky_entries(self, dests: Mapping[str, StickyDest]) -> dict[str, list[Entry]]:
        """The clients in the per-endpoint sets of the IPv6 table that the new state keeps (a set's name hashes
        its destination and endpoint: same name, still valid)."""
        wanted = {d.set_name(e) for d in dests.values() for e in d.endpoints}
        listed = self.nft.list_sets(STICKY_SET_PREFIX)
        return {name: entries for name, entries in listed.items() if name in wanted and entries}

    def _valid_entries(self, sticky: Mapping[StickyKey, AbstractSet[str]]) -> dict[str, list[Entry]]:
        """The affinity entries in the table whose endpoint is still a backend of their service."""
        out: dict[str, list[Entry]] = {}
        for proto in sorted({where[0] for where in sticky}):
            name = affinity_map_name(proto)
            for e in self.nft.list_map(name) or ():
                ip_key, np_key = sticky_key(e.key, proto)
                if e.value in sticky.get(ip_key, sticky.get(np_key, ())):
                    out.setdefault(name, []).append(e)
        return out

    def _stale_entries(self, removed: Mapping[StickyKey, AbstractSet[str]],
                       fresh: Mapping[StickyKey, AbstractSet[str]]) -> dict[str, list[Entry]]:
        """The affinity entries in the table that point to an endpoint ``removed`` from their service, or for a
        ``fresh`` service address to anything but its endpoints."""
        out: dict[str, list[Entry]] = {}
        for proto in sorted({where[0] for where in (*removed, *fresh)}):
            name = affinity_map_name(proto)
            for e in self.nft.list_map(name) or ():
                ip_key, np_key = sticky_key(e.key, proto)
                if (e.value in removed.get(ip_key, ()) or e.value in removed.get(np_key, ())
                        or (ip_key in fresh and e.value not in fresh[ip_key])):
                    out.setdefault(name, []).append(e)
        return out

    def _purge_stragglers(self, removed: Mapping[StickyKey, AbstractSet[str]]) -> None:
        """Entries the packet path recorded between our listing and the commit; best effort, the sync is done."""
        try:
            stale = self._stale_entries(removed, {})
            if stale:
                tx = self._tx()
                _purge(tx, stale)
                self.nft.run(tx)
        except ApplyError as exc:
            log.warning("could not remove affinity entries of departed endpoints: %s", exc)

    def _fixed_chains(self) -> dict[str, tuple[Chain, tuple[str, ...]]]:
        """The chains every table has, whatever its services."""
        return {**base_chains(self.config), **affinity_chains(self.fam), **cluster_ips_chains(self.config)}

    def rule_count(self) -> int:
        return sum(len(r) for _, r in self._fixed_chains().values()) + sum(
            len(dispatch_rules(c, self.config)) for c in self.chain_refs) + sum(self.aux.values()) + sum(
            len(rules) for d in self.sticky_dests.values() for _, rules in d.chains(self.fam, self.config))

    def needs_repair(self) -> bool:
        if not self.synced:
            return False
        rules = self.nft.list_rules(CANARY_CHAIN)
        if not rules or not any("jump services" in r for r in rules):
            return True
        return not self.nft.has_element(self.canary[0], self.canary[1])

    def cleanup(self) -> None:
        tx = self._tx()
        tx.add(Table())
        tx.delete(Table())
        self.nft.run(tx)
        self.applied, self.hairpin, self.chain_refs, self.synced = {}, Counter(), Counter(), False
        self.cluster_ips = Counter()
        self.aux, self.sticky_dests = {}, {}


def _purge(tx: Transaction, stale: Mapping[str, list[Entry]]) -> None:
    """Delete map entries listed a moment ago. One may have expired since, and deleting a missing element
    fails the transaction (nft 1.0.6 has no "destroy"): add each first, with the value listed, then delete."""
    for map_name, entries in stale.items():
        tx.add_elements(map_name, [(e.key, e.value) for e in entries])
        tx.delete_elements(map_name, [e.key for e in entries])


def _apply_delta(counts: Counter[str], delta: Counter[str]) -> None:
    for k, d in delta.items():
        if d:
            n = counts.get(k, 0) + d
            if n > 0:
                counts[k] = n
            else:
                counts.pop(k, None)

"""The iptables proxier: one iptables-restore --noflush per sync, declaring (and so rewriting) only chains
whose content changed, and deleting chains of services that went away."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

from cnipy.proxy.iptables import names as n
from cnipy.proxy.iptables.render import JUMPS, IptContribution, base_rules, contribution, nodeports_jumps
from cnipy.proxy.iptables.runner import IptablesInterface
from cnipy.proxy.model import ServiceKey
from cnipy.proxy.plan import AnyNodeConfig, PortPlan, ServicePlans
from cnipy.proxy.sync import SyncResult

Chains = dict[tuple[str, str], list[str]]
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")


class IptablesProxier:
    mode = "iptables"

    def __init__(self, ipt: IptablesInterface, config: AnyNodeConfig) -> None:
        # One IP family, config.ip_family's, through an ipt of that family (ip6tables-restore for IPv6).
        self.ipt = ipt
        self.config = config
        self.owned: dict[ServiceKey, IptContribution] = {}
        self.applied: Chains = {}
        self.synced = False
        self.rendered: dict[ServiceKey, tuple[PortPlan, ...]] = {}  # the plans ``owned`` was built from
        self.shared_keys: set[tuple[str, str]] = set()  # the chains of applied that are not one service's

    def _shared(self, owned: dict[ServiceKey, IptContribution]) -> Chains:
        """The chains every service writes into, in service order (KUBE-SERVICES ends with the nodeports jump)."""
        out: Chains = {(t, c): [] for t, c in
                       [("nat", n.KUBE_SERVICES), ("nat", n.KUBE_NODEPORTS), ("filter", n.KUBE_SERVICES),
                        ("filter", n.KUBE_EXTERNAL_SERVICES), ("filter", n.KUBE_PROXY_FIREWALL),
                        ("filter", n.KUBE_NODEPORTS), ("nat", n.KUBE_PROXY_CANARY), ("filter", n.KUBE_PROXY_CANARY)]}
        for key in sorted(owned):
            c = owned[key]
            out["nat", n.KUBE_SERVICES] += c.nat_services
            out["nat", n.KUBE_NODEPORTS] += c.nat_nodeports
            out["filter", n.KUBE_SERVICES] += c.filter_services
            out["filter", n.KUBE_EXTERNAL_SERVICES] += c.filter_external
            out["filter", n.KUBE_PROXY_FIREWALL] += c.filter_firewall
            out["filter", n.KUBE_NODEPORTS] += c.filter_nodeports
        out["nat", n.KUBE_SERVICES] += nodeports_jumps(self.config)
        out.update(base_rules(self.config))
        return out

    def _desired(self, owned: dict[ServiceKey, IptContribution]) -> Chains:
        chains = self._shared(owned)
        for c in owned.values():
            for name, rules in c.chains.items():
                chains["nat", name] = rules
        return chains

    def sync(self, plans: ServicePlans, changed: AbstractSet[ServiceKey] | None) -> SyncResult:
        if changed is None or not self.synced:
            return self._full_sync(plans)
        owned = dict(self.owned)
        for key in changed:
            ports = plans.get(key, ())
            if ports:
                owned[key] = contribution(ports, self.config)
            else:
                owned.pop(key, None)
        # Only the changed services' own chains and the shared chains can differ from what is applied (a chain
        # belongs to one service: its name hashes the service port): at 10k services, comparing those instead
        # of all 110k chains saves 80 ms per sync.
        shared = self._shared(owned)
        before = {("nat", name) for key in changed if key in self.owned for name in self.owned[key].chains}
        now = {("nat", name): rules for key in changed if key in owned for name, rules in owned[key].chains.items()}
        write = {tc: rules for tc, rules in [*shared.items(), *now.items()] if self.applied.get(tc) != rules}
        stale = [tc for tc in [*self.shared_keys, *before] if tc not in shared and tc not in now]
        named = Counter(t for t, _c in [*write, *stale])
        text, lines = _restore_text(write, stale, declare_all=None,
                                    list_first={t for t, count in named.items() if self._list_first(t, count)})
        if lines:
            self.ipt.restore(text)
        applied = dict(self.applied)
        for tc in stale:
            del applied[tc]
        applied.update(write)
        self.owned, self.applied, self.shared_keys = owned, applied, set(shared)
        self.rendered = {k: plans[k] for k in owned}
        return SyncResult(full=False, operations=lines, rules=sum(map(len, applied.values())))

    def _full_sync(self, plans: ServicePlans) -> SyncResult:
        """Every chain of ours declared (so rewritten), streamed to iptables-restore while it is rendered, so
        that iptables-restore parses one service while we render the next: nat first, each service's chains
        declared then filled, then the shared chains that jump to them; filter and mangle after."""
        saved: dict[str, tuple[set[str], list[tuple[str, tuple[str, ...]]]]]
        if self.synced:
            # A periodic or repairing resync knows its chains: it only reads whether our jumps from the built-in
            # chains and the mangle canary are still there (a few ms; iptables-save takes 3 s at 10k services).
            saved = {t: (set(), self.ipt.builtin_rules(t, list(dict.fromkeys(c for tj, c, _ in JUMPS if tj == t))))
                     for t in ("nat", "filter")}
            saved["mangle"] = ({n.KUBE_PROXY_CANARY} if self.ipt.chain_exists("mangle", n.KUBE_PROXY_CANARY)
                               else set(), [])
        else:
            # After a start, one iptables-save also tells which chains an earlier run left behind.
            saved = self.ipt.save()
        known = dict.fromkeys([*(("nat", c) for c in saved.get("nat", (set(), []))[0]
                                 if c.startswith(SERVICE_CHAIN_PREFIXES)), *self.applied])
        extra: dict[str, list[str]] = {}
        for table, chain, args in JUMPS:
            if (chain, args) not in saved.get(table, (set(), []))[1]:
                extra.setdefault(table, []).append(f"-I {chain} 1 " + " ".join(map(_quote, args)))
        if n.KUBE_PROXY_CANARY not in saved.get("mangle", (set(), []))[0]:
            extra.setdefault("mangle", []).append(f":{n.KUBE_PROXY_CANARY} - [0:0]")
        owned: dict[ServiceKey, IptContribution] = {}
        done: list[tuple[Chains, set[tuple[str, str]], int]] = []

        def text() -> Iterator[str]:
            base = [c for t, c in self._shared({}) if t == "nat"]
            head = ["*nat", *(f":{c} - [0:0]" for c in base), *extra.get("nat", ())]
            estimate = len(base) + max(len(known),  # chains it will name (SVC, maybe EXT, SEPs), or had
                                       sum(2 + len(p.all_backends) for ps in plans.values() for p in ps))
            if self._list_first("nat", estimate):
                head.append("-S")
            yield "\n".join(head) + "\n"
            count = len(base) + len(extra.get("nat", ()))
            for key, ports in plans.items():
                if not ports:
                    continue
                # A periodic or repairing full sync reuses what it rendered for plans that did not change.
                c = self.owned[key] if self.rendered.get(key) is ports else contribution(ports, self.config)
                owned[key] = c
                lines = [f":{name} - [0:0]" for name in c.chains]
                for rules in c.chains.values():
                    lines += rules
                if lines:
                    count += len(lines)
                    yield "\n".join(lines) + "\n"
            desired = self._desired(owned)
            streamed = {("nat", name) for c in owned.values() for name in c.chains}
            shared = {tc: rules for tc, rules in desired.items() if tc not in streamed}
            stale = [tc for tc in known if tc not in desired]
            gone = [c for t, c in stale if t == "nat"]
            tail = [f":{c} - [0:0]" for t, c in shared if t == "nat" and c not in base]
            tail += [f":{c} - [0:0]" for c in gone]
            for (t, _c), rules in shared.items():
                if t == "nat":
                    tail += rules
            tail += [f"-X {c}" for c in gone]
            tail.append("COMMIT")
            yield "\n".join(tail) + "\n"
            rest, rest_count = _restore_text({tc: r for tc, r in shared.items() if tc[0] != "nat"},
                                             [tc for tc in stale if tc[0] != "nat"],
                                             declare_all={tc: r for tc, r in shared.items() if tc[0] != "nat"},
                                             extra={t: x for t, x in extra.items() if t != "nat"})
            yield rest
            done.append((desired, set(shared), count + len(tail) + rest_count))

        self.ipt.restore_lines(text())
        desired, self.shared_keys, lines = done[0]
        self.owned, self.applied, self.synced = owned, desired, True
        self.rendered = {k: plans[k] for k in owned}
        return SyncResult(full=True, operations=lines, rules=sum(len(r) for r in desired.values()))

    def _list_first(self, table: str, chains: int) -> bool:
        if not self.ipt.quadratic_chain_names:
            return False
        return _list_first_pays(chains, sum(len(r) for (t, _c), r in self.applied.items() if t == table))

    def needs_repair(self) -> bool:
        """kube-proxy's canary (a chain in the small mangle table: whoever flushes everything removes it), plus
        the nat jump and the masquerade mark rule: two cheap checks, whatever the number of services."""
        if not self.synced:
            return False
        mark = f"0x{self.config.masquerade_mark:x}"
        table, chain, args = JUMPS[0]
        return not (self.ipt.chain_exists("mangle", n.KUBE_PROXY_CANARY)
                    and self.ipt.exists(table, chain, args)
                    and self.ipt.exists("nat", n.KUBE_MARK_MASQ, ("-j", "MARK", "--or-mark", mark)))

    def cleanup(self) -> None:
        for table, chain, args in JUMPS:
            self.ipt.delete(table, chain, args)
        chains = dict(self.applied)
        # A fresh process (--cleanup) has applied nothing: the service chains left by a daemon come from a save
        # (without them, deleting KUBE-MARK-MASQ fails: they still jump to it).
        for c in self.ipt.save().get("nat", (set(), []))[0]:
            if c.startswith(SERVICE_CHAIN_PREFIXES):
                chains.setdefault(("nat", c), [])
        for t, names in (("nat", (n.KUBE_SERVICES, n.KUBE_NODEPORTS, n.KUBE_POSTROUTING, n.KUBE_MASQ_OFF_CLUSTER,
                                   n.KUBE_MARK_MASQ, n.KUBE_PROXY_CANARY)),
                         ("filter", (n.KUBE_SERVICES, n.KUBE_EXTERNAL_SERVICES, n.KUBE_PROXY_FIREWALL,
                                     n.KUBE_FIREWALL, n.KUBE_FORWARD, n.KUBE_NODEPORTS, n.KUBE_PROXY_CANARY))):
            for c in names:
                chains.setdefault((t, c), [])
        text, _ = _restore_text({}, list(chains), declare_all=None,
                                extra={"mangle": [f":{n.KUBE_PROXY_CANARY} - [0:0]", f"-X {n.KUBE_PROXY_CANARY}"]})
        self.ipt.restore(text)
        self.owned, self.applied, self.synced, self.shared_keys = {}, {}, False, set()
        self.rendered = {}


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


# iptables-nft 1.8.x (nft-cache.c, cache_chain_list_insert) notes every chain a --noflush restore names, once per
# command (the rule's chain and its jump target), in a sorted linked list, and then fetches those chains one by
# one: quadratic in the number of chains. One command without a chain (a chain-less "-S", which only lists) makes
# it fetch all of the table's chains in one dump instead and skip the list, at the price of reading the table's
# rules. Measured here (1.8.9, kernel 6.18): the list costs about 40 ns x chains^2 (1k services, 11k chains:
# 5.2 s of a 5.9 s restore, 0.7 s with "-S"; 10k services never finished), reading the rules about 6 us a rule.
_LIST_COST_PER_RULE = 150  # (6 us a rule) / (40 ns a chain^2)


def _list_first_pays(chains: int, rules_in_table: int) -> bool:
    return chains >= 256 and chains * chains > _LIST_COST_PER_RULE * rules_in_table


def _restore_text(write: Chains, stale: list[tuple[str, str]], declare_all: Chains | None,
                  extra: dict[str, list[str]] | None = None, list_first: AbstractSet[str] = frozenset(),
                  ) -> tuple[str, int]:
    """Declare (flush) every chain we write or delete, then the rules, then delete the stale chains. Chains
    neither written nor stale are left exactly as they are (--noflush). ``extra`` lines (missing jumps from
    built-in chains, the canary) follow the declarations of our base chains, so that in a table named in
    ``list_first`` the "-S" comes after them (listing a table that does not exist yet would make iptables-nft
    take its built-in chains as existing) and before the per-service chains."""
    out: list[str] = []
    count = 0
    extra = extra or {}
    for table in ("filter", "nat", "mangle"):
        declared = [c for t, c in (declare_all or write) if t == table]
        gone = [c for t, c in stale if t == table]
        more = extra.get(table, [])
        if not declared and not gone and not more:
            continue
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in declared if not c.startswith(SERVICE_CHAIN_PREFIXES)]
        out += more
        if table in list_first:
            out.append("-S")
        out += [f":{c} - [0:0]" for c in declared if c.startswith(SERVICE_CHAIN_PREFIXES)]
        out += [f":{c} - [0:0]" for c in gone]
        for (t, _c), rules in write.items():
            if t == table:
                out += rules
                count += len(rules)
        out += [f"-X {c}" for c in gone]
        out.append("COMMIT")
        count += len(declared) + 2 * len(gone) + len(more) + 1
    return "\n".join(out) + "\n", count

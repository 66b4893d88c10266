"""The iptables proxier: one iptables-restore --noflush per sync, declaring (and so rewriting) only chains
whose content changed, and deleting chains of services that went away."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from cnipy.proxy.iptables import names as n
from cnipy.proxy.iptables.render import JUMPS, IptContribution, base_rules, contribution, nodeports_jumps
from cnipy.proxy.iptables.runner import IptablesInterface
from cnipy.proxy.model import ServiceKey
from cnipy.proxy.plan import NodeConfig, PortPlan, ServicePlans
from cnipy.proxy.sync import SyncResult

Chains = dict[tuple[str, str], list[str]]
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")


class IptablesProxier:
    mode = "iptables"

    def __init__(self, ipt: IptablesInterface, config: NodeConfig) -> None:
        self.ipt = ipt
        self.config = config
        self.owned: dict[ServiceKey, IptContribution] = {}
        self.applied: Chains = {}
        self.synced = False
        self.rendered: dict[ServiceKey, tuple[PortPlan, ...]] = {}  # the plans ``owned`` was built from

    def _shared(self, owned: dict[ServiceKey, IptContribution]) -> Chains:
        """The chains every service writes into, in service order (KUBE-SERVICES ends with the nodeports jump)."""
        out: Chains = {(t, c): [] for t, c in
                       [("nat", n.KUBE_SERVICES), ("nat", n.KUBE_NODEPORTS), ("filter", n.KUBE_SERVICES),
                        ("filter", n.KUBE_EXTERNAL_SERVICES), ("filter", n.KUBE_PROXY_FIREWALL),
                        ("nat", n.KUBE_PROXY_CANARY), ("filter", n.KUBE_PROXY_CANARY)]}
        for key in sorted(owned):
            c = owned[key]
            out["nat", n.KUBE_SERVICES] += c.nat_services
            out["nat", n.KUBE_NODEPORTS] += c.nat_nodeports
            out["filter", n.KUBE_SERVICES] += c.filter_services
            out["filter", n.KUBE_EXTERNAL_SERVICES] += c.filter_external
            out["filter", n.KUBE_PROXY_FIREWALL] += c.filter_firewall
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
        full = changed is None or not self.synced
        if full:
            # A periodic or repairing full sync reuses what it rendered for plans that did not change.
            owned = {k: self.owned[k] if self.rendered.get(k) is ports else contribution(ports, self.config)
                     for k, ports in plans.items() if ports}
        else:
            assert changed is not None
            owned = dict(self.owned)
            for key in changed:
                ports = plans.get(key, ())
                if ports:
                    owned[key] = contribution(ports, self.config)
                else:
                    owned.pop(key, None)
        desired = self._desired(owned)
        extra: dict[str, list[str]] = {}
        if full:
            write = desired
            # A full sync asks the kernel (one iptables-save) what exists: chains an earlier run left behind,
            # whether our jumps from the built-in chains and the mangle canary are still there.
            saved = self.ipt.save()
            known: Chains = {("nat", c): [] for c in saved.get("nat", (set(), []))[0]
                             if c.startswith(SERVICE_CHAIN_PREFIXES)}
            known.update((tc, []) for tc in self.applied)
            for table, chain, args in JUMPS:
                if (chain, args) not in saved.get(table, (set(), []))[1]:
                    extra.setdefault(table, []).append(f"-I {chain} 1 " + " ".join(map(_quote, args)))
            if n.KUBE_PROXY_CANARY not in saved.get("mangle", (set(), []))[0]:
                extra.setdefault("mangle", []).append(f":{n.KUBE_PROXY_CANARY} - [0:0]")
        else:
            write = {tc: rules for tc, rules in desired.items() if self.applied.get(tc) != rules}
            known = self.applied
        stale = [tc for tc in known if tc not in desired]
        text, lines = _restore_text(write, stale, declare_all=desired if full else None, extra=extra)
        if lines:
            self.ipt.restore(text)
        self.owned, self.applied, self.synced = owned, desired, True
        self.rendered = {k: plans[k] for k in owned}
        return SyncResult(full=full, operations=lines, rules=sum(len(r) for r in desired.values()))

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
        for t, names in (("nat", (n.KUBE_SERVICES, n.KUBE_NODEPORTS, n.KUBE_POSTROUTING, n.KUBE_MARK_MASQ,
                                   n.KUBE_PROXY_CANARY)),
                         ("filter", (n.KUBE_SERVICES, n.KUBE_EXTERNAL_SERVICES, n.KUBE_PROXY_FIREWALL,
                                     n.KUBE_FIREWALL, n.KUBE_PROXY_CANARY))):
            for c in names:
                chains.setdefault((t, c), [])
        text, _ = _restore_text({}, list(chains), declare_all=None,
                                extra={"mangle": [f":{n.KUBE_PROXY_CANARY} - [0:0]", f"-X {n.KUBE_PROXY_CANARY}"]})
        self.ipt.restore(text)
        self.owned, self.applied, self.synced = {}, {}, False
        self.rendered = {}


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def _restore_text(write: Chains, stale: list[tuple[str, str]], declare_all: Chains | None,
                  extra: dict[str, list[str]] | None = None) -> tuple[str, int]:
    """Declare (flush) every chain we write or delete, then the rules, then delete the stale chains, then
    ``extra`` lines (missing jumps from built-in chains, the canary). Chains neither written nor stale are left
    exactly as they are (--noflush)."""
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
        out += [f":{c} - [0:0]" for c in declared]
        out += [f":{c} - [0:0]" for c in gone]
        for (t, _c), rules in write.items():
            if t == table:
                out += rules
                count += len(rules)
        out += [f"-X {c}" for c in gone]
        out += more
        out.append("COMMIT")
        count += len(declared) + 2 * len(gone) + len(more) + 1
    return "\n".join(out) + "\n", count

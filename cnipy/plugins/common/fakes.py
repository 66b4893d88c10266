"""In-memory stand-ins for the rule tools, keeping their semantics, for tests without root.

`FakeIptables` answers `iptables-save -t nat` and `iptables-restore -w --noflush` (and the ip6tables twins) for
the nat table: a restore is applied to a copy and committed only when every line succeeds (as the kernel's
table replace), `-D` of a missing rule, `-X` of a chain that is missing, not empty or still jumped to, and `-A`
to a missing chain all fail. Install it with `cnipy.plugins.common.run.using(fake)`. nft is "not installed".
"""

from __future__ import annotations

import copy
import shlex

from cnipy.plugins.common.run import MISSING

BUILTIN = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "MASQUERADE", "SNAT", "DNAT", "MARK"})


class RestoreError(Exception):
    pass


class FakeIptables:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {
            "iptables": {c: [] for c in BUILTIN}, "ip6tables": {c: [] for c in BUILTIN}}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], stdin: str) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        tool = argv[0]
        for family in ("iptables", "ip6tables"):
            if tool == f"{family}-save":
                return 0, self.save(family), ""
            if tool == f"{family}-restore":
                if "--noflush" not in argv:
                    return 2, "", "the fake only supports --noflush"
                try:
                    self.tables[family] = self._restore(self.tables[family], stdin)
                except RestoreError as exc:
                    return 1, "", f"{family}-restore: {exc}"
                return 0, "", ""
        return MISSING, "", f"{tool} not found"

    def save(self, family: str = "iptables") -> str:
        chains = self.tables[family]
        lines = ["*nat"]
        lines += [f":{c} ACCEPT [0:0]" if c in BUILTIN else f":{c} - [0:0]" for c in chains]
        lines += [f"-A {c} {spec}" for c, specs in chains.items() for spec in specs]
        return "\n".join([*lines, "COMMIT", ""])

    @staticmethod
    def _restore(current: dict[str, list[str]], script: str) -> dict[str, list[str]]:
        chains = copy.deepcopy(current)
        for line in script.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or line in ("*nat", "COMMIT"):
                continue
            if line.startswith(":"):
                name = line[1:].split()[0]
                chains[name] = [] if name not in BUILTIN else chains[name]
                continue
            words = shlex.split(line)
            op, chain, spec = words[0], words[1] if len(words) > 1 else "", line.split(None, 2)[2:]
            if chain not in chains:
                raise RestoreError(f"chain {chain} does not exist")
            rule = spec[0] if spec else ""
            if op == "-A":
                chains[chain].append(rule)
            elif op == "-D":
                if rule not in chains[chain]:
                    raise RestoreError(f"no rule '{rule}' in {chain}")
                chains[chain].remove(rule)
            elif op == "-F":
                chains[chain] = []
            elif op == "-X":
                if chain in BUILTIN or chains[chain]:
                    raise RestoreError(f"cannot delete chain {chain}")
                if any(r.split()[-2:] == ["-j", chain] for rs in chains.values() for r in rs):
                    raise RestoreError(f"chain {chain} is still referenced")
                del chains[chain]
            else:
                raise RestoreError(f"unsupported line {line!r}")
        for specs in chains.values():
            for r in specs:
                words = r.split()
                if words[-2:-1] == ["-j"] and words[-1] not in TARGETS and words[-1] not in chains:
                    raise RestoreError(f"jump to missing chain {words[-1]}")
        return chains

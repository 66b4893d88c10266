"""The iptables seam: ``Iptables`` runs iptables-restore --noflush (nf_tables or legacy back end) and a few
checks; ``FakeIptables`` parses the same restore text and keeps the kernel's rules: all-or-nothing per restore,
jump targets must exist, only empty unreferenced chains can be deleted."""

from __future__ import annotations

import copy
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from ipaddress import ip_address, ip_network
from typing import Protocol

from cnipy.proxy.errors import ApplyError, FakeApplyError
from cnipy.proxy.pipe import write_batched

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}
BUILTIN_TARGETS = {"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG",
                   "CONNMARK", "NOTRACK", "CT"}


class IptablesInterface(Protocol):
    # True when a --noflush restore costs time quadratic in the number of chains it names (iptables-nft 1.8.x),
    # unless it lists the table first: see backend._list_first_pays.
    quadratic_chain_names: bool

    def restore(self, text: str) -> None:
        """iptables-restore --noflush: all of ``text`` or nothing. Raises ApplyError."""

    def restore_lines(self, chunks: Iterable[str]) -> None:
        """The same, with the text handed over in pieces as they are made (iptables-restore parses each while
        the next is made; it commits each table at its COMMIT line)."""

    def exists(self, table: str, chain: str, args: Sequence[str]) -> bool:
        """iptables -C: is this rule in the chain?"""

    def insert(self, table: str, chain: str, args: Sequence[str]) -> None:
        """iptables -I chain 1 args."""

    def delete(self, table: str, chain: str, args: Sequence[str]) -> None:
        """iptables -D; a missing rule is not an error."""

    def save(self) -> dict[str, tuple[set[str], list[tuple[str, tuple[str, ...]]]]]:
        """One iptables-save: per table, its chain names and the rules of its built-in chains."""

    def builtin_rules(self, table: str, chains: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
        """(chain, args) of the rules in these built-in chains. iptables-nft: iptables -S of each, a few ms where
        iptables-save reads every rule (3 s at 10k services); legacy: one iptables-legacy-save -t. A missing chain
        has none."""

    def chain_exists(self, table: str, chain: str) -> bool:
        """Does the chain exist (cheap for small tables such as mangle)?"""


class Iptables:
    """``variant`` "nft" uses iptables-nft/iptables-nft-restore, "legacy" their -legacy twins (named explicitly:
    plain "iptables" is whatever the system's alternatives point at); ``family`` 6 the ip6tables ones (one
    proxier per IP family, as kube-proxy)."""

    def __init__(self, variant: str = "nft", *, prefix: Sequence[str] = (), timeout: float = 600,
                 family: int = 4) -> None:
        if variant not in ("nft", "legacy"):
            raise ValueError(f"iptables variant must be nft or legacy, not {variant!r}")
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {family!r}")
        suffix = "-legacy" if variant == "legacy" else "-nft"
        tool = "ip6tables" if family == 6 else "iptables"  # family 6: ip6tables-nft, ip6tables-nft-restore, ...
        self.iptables = f"{tool}{suffix}"
        self.quadratic_chain_names = variant == "nft"
        self.restore_bin = f"{tool}{suffix}-restore"
        self.prefix = list(prefix)
        self.timeout = timeout

    def _run(self, argv: list[str], text: str | None = None, *, keep_stdout: bool = True,
             ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([*self.prefix, *argv], input=text, text=True, stderr=subprocess.PIPE,
                                  stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
                                  timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError(f"{argv[0]} could not run: {exc}") from exc

    def restore(self, text: str) -> None:
        # Drop what a "-S" in the text lists (the whole table, 400k lines at 10k services).
        proc = self._run([self.restore_bin, "-w", "5", "--noflush"], text, keep_stdout=False)
        if proc.returncode != 0:
            raise ApplyError(f"{self.restore_bin} failed (rc={proc.returncode}): {proc.stderr.strip()[:2000]}")

    def restore_lines(self, chunks: Iterable[str]) -> None:
        argv = [*self.prefix, self.restore_bin, "-w", "5", "--noflush"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            raise ApplyError(f"{self.restore_bin} could not run: {exc}") from exc
        assert proc.stdin is not None
        try:
            write_batched(proc.stdin, chunks)
        except BrokenPipeError:
            pass  # it stopped reading (it stops at the first error, a few lines of stderr): its status says why
        except BaseException:
            proc.kill()  # before it reads an end of file: the table being written is not committed
            proc.wait()
            raise
        try:
            # communicate() returns when the pipes close; wait(timeout) would poll, up to 50 ms late.
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise ApplyError(f"{self.restore_bin} did not finish in {self.timeout} s") from exc
        if proc.returncode != 0:
            raise ApplyError(f"{self.restore_bin} failed (rc={proc.returncode}): {err.strip()[:2000]}")

    def exists(self, table: str, chain: str, args: Sequence[str]) -> bool:
        return self._run([self.iptables, "-w", "5", "-t", table, "-C", chain, *args]).returncode == 0

    def insert(self, table: str, chain: str, args: Sequence[str]) -> None:
        proc = self._run([self.iptables, "-w", "5", "-t", table, "-I", chain, "1", *args])
        if proc.returncode != 0:
            raise ApplyError(f"{self.iptables} -I {chain} failed: {proc.stderr.strip()}")

    def delete(self, table: str, chain: str, args: Sequence[str]) -> None:
        self._run([self.iptables, "-w", "5", "-t", table, "-D", chain, *args])

    def save(self) -> dict[str, tuple[set[str], list[tuple[str, tuple[str, ...]]]]]:
        proc = self._run([self.restore_bin.replace("-restore", "-save")])
        if proc.returncode != 0:
            raise ApplyError(f"iptables-save failed: {proc.stderr.strip()}")
        return parse_save(proc.stdout)

    def builtin_rules(self, table: str, chains: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
        if self.restore_bin.endswith("-legacy-restore"):
            # libiptc reads the whole table for any query, -S of one chain too: one save of the table is cheapest.
            proc = self._run([self.restore_bin.replace("-restore", "-save"), "-t", table])
            if proc.returncode != 0:
                raise ApplyError(f"iptables-save -t {table} failed: {proc.stderr.strip()}")
            return [(c, r) for c, r in parse_save(proc.stdout).get(table, (set(), []))[1] if c in chains]
        out: list[tuple[str, tuple[str, ...]]] = []
        for chain in chains:  # iptables-nft fetches only the chain named
            proc = self._run([self.iptables, "-w", "5", "-t", table, "-S", chain])
            if proc.returncode == 0:
                out += parse_save(f"*{table}\n{proc.stdout}")[table][1]
        return out

    def chain_exists(self, table: str, chain: str) -> bool:
        return self._run([self.iptables, "-w", "5", "-t", table, "-S", chain]).returncode == 0


_BUILTIN = tuple(f"-A {c} " for c in {c for cs in BUILTIN_CHAINS.values() for c in cs})


def parse_save(text: str) -> dict[str, tuple[set[str], list[tuple[str, tuple[str, ...]]]]]:
    """iptables-save output -> per table: chain names, and (chain, args) of rules in built-in chains only
    (the proxy's tables can hold 400k rules; only the few jumps from built-in chains matter)."""
    out: dict[str, tuple[set[str], list[tuple[str, tuple[str, ...]]]]] = {}
    chains: set[str] = set()
    rules: list[tuple[str, tuple[str, ...]]] = []
    for line in text.splitlines():
        if line.startswith("*"):
            chains, rules = set(), []
            out[line[1:].strip()] = (chains, rules)
        elif line.startswith(":"):
            chains.add(line[1:].split()[0])
        elif line.startswith(_BUILTIN):
            args = shlex.split(line)
            rules.append((args[1], tuple(args[2:])))
    return out


def _target(args: Sequence[str]) -> str | None:
    for flag in ("-j", "--jump", "-g", "--goto"):
        if flag in args:
            i = list(args).index(flag)
            return args[i + 1] if i + 1 < len(args) else None
    return None


class FakeIptables:
    """Tables of chains of rules (each rule kept as its argument list after the chain name)."""

    def __init__(self, *, quadratic_chain_names: bool = False, family: int = 4) -> None:
        self.quadratic_chain_names = quadratic_chain_names  # as iptables-nft: the proxier then adds "-S" lines
        self.family = family  # 6: ip6tables, which refuses IPv4 addresses, masks and reject types (and v.v.)
        self.listed = 0
        self.tables: dict[str, dict[str, list[tuple[str, ...]]]] = {
            t: {c: [] for c in chains} for t, chains in BUILTIN_CHAINS.items()}
        self.restores = 0
        self.fail_next: str | None = None

    def restore(self, text: str) -> None:
        if self.fail_next is not None:
            msg, self.fail_next = self.fail_next, None
            raise FakeApplyError("EIO", msg)
        work = copy.deepcopy(self.tables)
        table: dict[str, list[tuple[str, ...]]] | None = None
        name = ""
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            where = f"line {lineno}"
            if line.startswith("*"):
                name = line[1:].strip()
                if name not in work:
                    raise FakeApplyError("ENOENT", f"{where}: no table {name}")
                table = work[name]
            elif table is None:
                raise FakeApplyError("EINVAL", f"{where}: outside a table")
            elif line == "COMMIT":
                self._check_targets(table, name)
                table = None
            elif line == "-S":  # lists the table (to stdout), changes nothing
                self.listed += 1
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                if chain in BUILTIN_CHAINS.get(name, ()):
                    continue
                table[chain] = []  # declaring a chain in a restore flushes it, also with --noflush
            else:
                args = shlex.split(line)
                op, chain, rest = args[0], args[1], tuple(args[2:])
                if chain not in table:
                    raise FakeApplyError("ENOENT", f"{where}: no chain {chain}")
                repeated = _repeated_base_option(rest)
                if repeated:
                    # iptables: "multiple -d flags not allowed" (each base match once per rule)
                    raise FakeApplyError("EINVAL", f"{where}: multiple {repeated} flags not allowed")
                wrong = _family_error(rest, self.family) or _interface_error(rest)
                if wrong:
                    raise FakeApplyError("EINVAL", f"{where}: {wrong}")
                if op == "-A":
                    target = _target(rest)
                    if target and target not in BUILTIN_TARGETS and target not in table:
                        raise FakeApplyError("ENOENT", f"{where}: no chain/target {target}")
                    table[chain].append(rest)
                elif op == "-X":
                    if table[chain]:
                        raise FakeApplyError("ENOTEMPTY", f"{where}: chain {chain} is not empty")
                    if self._referenced(table, chain):
                        raise FakeApplyError("EBUSY", f"{where}: chain {chain} is referenced")
                    del table[chain]
                elif op == "-F":
                    table[chain] = []
                elif op == "-I":
                    target = _target(rest[1:])
                    if target and target not in BUILTIN_TARGETS and target not in table:
                        raise FakeApplyError("ENOENT", f"{where}: no chain/target {target}")
                    table[chain].insert(int(rest[0]) - 1, rest[1:])
                else:
                    raise FakeApplyError("EINVAL", f"{where}: unsupported {op}")
        if table is not None:
            raise FakeApplyError("EINVAL", "missing COMMIT")
        self.tables = work
        self.restores += 1

    @staticmethod
    def _referenced(table: dict[str, list[tuple[str, ...]]], chain: str) -> bool:
        return any(_target(r) == chain for rules in table.values() for r in rules)

    @staticmethod
    def _check_targets(table: dict[str, list[tuple[str, ...]]], name: str) -> None:
        for chain, rules in table.items():
            for r in rules:
                t = _target(r)
                if t and t not in BUILTIN_TARGETS and t not in table:
                    raise FakeApplyError("ENOENT", f"{name} {chain}: jump to missing chain {t}")

    def restore_lines(self, chunks: Iterable[str]) -> None:
        self.restore("".join(chunks))

    def exists(self, table: str, chain: str, args: Sequence[str]) -> bool:
        return tuple(args) in self.tables[table].get(chain, [])

    def insert(self, table: str, chain: str, args: Sequence[str]) -> None:
        if chain not in self.tables[table]:
            raise FakeApplyError("ENOENT", f"no chain {chain}")
        target = _target(args)
        if target and target not in BUILTIN_TARGETS and target not in self.tables[table]:
            raise FakeApplyError("ENOENT", f"no chain/target {target}")
        self.tables[table][chain].insert(0, tuple(args))

    def delete(self, table: str, chain: str, args: Sequence[str]) -> None:
        rules = self.tables[table].get(chain, [])
        if tuple(args) in rules:
            rules.remove(tuple(args))

    def save(self) -> dict[str, tuple[set[str], list[tuple[str, tuple[str, ...]]]]]:
        return {t: (set(chains), [(c, r) for c in BUILTIN_CHAINS[t] for r in chains[c]])
                for t, chains in self.tables.items()}

    def builtin_rules(self, table: str, chains: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
        return [(c, r) for c in chains for r in self.tables[table].get(c, [])]

    def chain_exists(self, table: str, chain: str) -> bool:
        return chain in self.tables[table]

    def flush_all(self, table: str) -> None:
        """What ``iptables -t table -F`` does: empty every chain, keep them."""
        for rules in self.tables[table].values():
            rules.clear()

    def dump(self, tables: Sequence[str] = ("filter", "nat")) -> str:
        """iptables-save-like text, chains sorted by name, rules in order."""
        out = []
        for t in tables:
            out.append(f"*{t}")
            chains = self.tables[t]
            out += [f":{c}" for c in sorted(chains)]
            for c in sorted(chains):
                out += ["-A " + c + " " + " ".join(shlex.quote(a) for a in r) for r in chains[c]]
            out.append("COMMIT")
        return "\n".join(out) + "\n"


_BASE_OPTIONS = ("-s", "-d", "-p", "-i", "-o", "-j")


def _repeated_base_option(rule: tuple[str, ...]) -> str | None:
    for opt in _BASE_OPTIONS:
        if rule.count(opt) > 1:
            return opt
    return None


def _interface_error(rule: tuple[str, ...]) -> str | None:
    """iptables refuses an interface name (a "+" wildcard included) of IFNAMSIZ (16) characters or more."""
    for i, opt in enumerate(rule[:-1]):
        if opt in ("-i", "-o", "--in-interface", "--out-interface") and len(rule[i + 1]) >= 16:
            return f"interface name `{rule[i + 1]}' must be shorter than IFNAMSIZ (15)"
    return None


# The values of a rule that ip(6)tables parses as addresses of its family, and its REJECT types.
_REJECT_TYPES = {
    4: {"icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable", "icmp-proto-unreachable",
        "icmp-net-prohibited", "icmp-host-prohibited", "icmp-admin-prohibited", "tcp-reset"},
    6: {"icmp6-no-route", "no-route", "icmp6-adm-prohibited", "adm-prohibited", "icmp6-addr-unreachable",
        "addr-unreach", "icmp6-port-unreachable", "port-unreach", "icmp6-policy-fail", "icmp6-reject-route",
        "tcp-reset"},
}


def _family_error(rule: tuple[str, ...], family: int) -> str | None:
    """What ip(6)tables says of an address, prefix, xt_recent mask, DNAT destination or reject type of the
    other family (or none at all); None when the rule is fine."""
    for i, opt in enumerate(rule[:-1]):
        value = rule[i + 1]
        try:
            if opt in ("-s", "-d", "--source", "--destination"):
                if ip_network(value, strict=False).version != family:
                    return f"host/network `{value}' not found"
            elif opt == "--mask":
                if ip_address(value).version != family:
                    return f"bad mask `{value}'"
            elif opt == "--to-destination":
                # IPv4 "addr[:port]"; IPv6 "[addr]:port" or a bare "addr" (an unbracketed ":80" is address)
                if family == 6 and value.startswith("["):
                    addr, _, port = value[1:].partition("]")
                    if port and not port.startswith(":"):
                        return f"Bad IP address \"{value}\""
                else:
                    addr = value.partition(":")[0] if family == 4 else value
                if ip_address(addr).version != family:
                    return f"Bad IP address \"{value}\""
            elif opt == "--reject-with" and value not in _REJECT_TYPES[family]:
                return f"unknown reject type \"{value}\""
        except ValueError:
            return f"host/network `{value}' not found"
    return None

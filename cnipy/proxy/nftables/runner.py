"""The nftables seam: ``Nft`` runs a Transaction with one ``nft -f -`` (atomic); ``FakeNft`` applies it to a copy
of an in-memory table and commits only on success, enforcing what the kernel enforces."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import re
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cnipy.proxy.errors import ApplyError, FakeApplyError
from cnipy.proxy.nftables.transaction import (
    Chain,
    Element,
    Elements,
    Entries,
    Entry,
    RenderedElements,
    Rule,
    Set,
    Table,
    Transaction,
    Verb,
)
from cnipy.proxy.pipe import write_batched

_PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size


class NftInterface(Protocol):
    family: str
    table: str

    def run(self, tx: Transaction) -> None:
        """Apply all of ``tx`` or nothing; raise ApplyError on failure."""

    def list_rules(self, chain: str) -> list[str] | None:
        """The rules of one chain of our table, or None when the chain (or table) does not exist."""

    def has_element(self, set_name: str, key: str) -> bool:
        """Is this key in the set or map (False also when the set or table is missing)?"""

    def list_map(self, name: str) -> list[Entry] | None:
        """The elements of a map with their timers, or None when the map (or table) does not exist."""

    def list_sets(self, prefix: str) -> dict[str, list[Entry]]:
        """The elements (value "") of every set whose name starts with ``prefix``, by set; {} without a table."""


class Nft:
    """The real thing. ``prefix`` runs nft elsewhere, e.g. ``("ip", "netns", "exec", "ns1")``."""

    def __init__(self, family: str = "ip", table: str = "cnipy", *, prefix: Sequence[str] = (),
                 binary: str = "nft", timeout: float = 300) -> None:
        self.family, self.table = family, table
        self.prefix = list(prefix)
        self.binary = binary
        self.timeout = timeout

    def run(self, tx: Transaction) -> None:
        self.run_lines(tx.iter_lines())

    def run_lines(self, lines: Iterable[str]) -> None:
        """Pipe the text to ``nft -f -``; nft commits only once it has read all of it."""
        argv = [*self.prefix, self.binary, "-f", "-"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            raise ApplyError(f"nft could not run: {exc}") from exc
        assert proc.stdin is not None and proc.stderr is not None
        # nft reads all of its input before it parses any: a bigger pipe means fewer round trips between us
        # and nft (5 MB for 10k services; the default pipe holds 64 kB).
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            write_batched(proc.stdin, lines)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # nft stopped reading: it failed; its exit status and stderr say why
        except BaseException:
            proc.kill()  # killed before the end of its input, nft applies nothing
            proc.wait()
            raise
        # nft's stderr ends when nft does: wait for that, then reap it with a blocking wait. (Popen.wait with a
        # timeout polls with sleeps of up to 50 ms, a lot against a 20 ms partial sync.)
        reader.join(timeout=self.timeout)
        if reader.is_alive():
            proc.kill()
            proc.wait()
            raise ApplyError(f"nft -f timed out after {self.timeout}s")
        rc = proc.wait()
        if rc != 0:
            raise ApplyError(f"nft -f failed (rc={rc}): {''.join(errors).strip()[:2000]}")

    def has_element(self, set_name: str, key: str) -> bool:
        proc = subprocess.run([*self.prefix, self.binary, "get", "element", self.family, self.table, set_name,
                               f"{{ {key} }}"], text=True, capture_output=True, timeout=self.timeout)
        return proc.returncode == 0

    def list_map(self, name: str) -> list[Entry] | None:
        try:
            proc = subprocess.run([*self.prefix, self.binary, "-j", "list", "map", self.family, self.table, name],
                                  text=True, capture_output=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError(f"nft could not list map {name}: {exc}") from exc
        if proc.returncode != 0:
            return None
        try:
            return parse_map_json(proc.stdout)
        except (ValueError, KeyError, TypeError) as exc:
            raise ApplyError(f"nft -j list map {name}: unexpected output: {exc}") from exc

    def list_sets(self, prefix: str) -> dict[str, list[Entry]]:
        # One listing of the table: a set is listed by name only, and there may be thousands of them.
        try:
            proc = subprocess.run([*self.prefix, self.binary, "-j", "list", "table", self.family, self.table],
                                  text=True, capture_output=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError(f"nft could not list table {self.table}: {exc}") from exc
        if proc.returncode != 0:
            return {}
        try:
            return parse_sets_json(proc.stdout, prefix)
        except (ValueError, KeyError, TypeError) as exc:
            raise ApplyError(f"nft -j list table: unexpected output: {exc}") from exc

    def list_rules(self, chain: str) -> list[str] | None:
        proc = subprocess.run([*self.prefix, self.binary, "list", "chain", self.family, self.table, chain],
                              text=True, capture_output=True, timeout=self.timeout)
        if proc.returncode != 0:
            return None
        lines = [ln.strip() for ln in proc.stdout.splitlines()]
        return [ln for ln in lines if ln and not ln.startswith(("table ", "chain ", "type ", "}"))]


def _text(part: object) -> str:
    """A JSON key or value (a plain value or a concatenation) in nft's element syntax."""
    if isinstance(part, dict) and "concat" in part:
        return " . ".join(map(str, part["concat"]))
    if isinstance(part, str | int):
        return str(part)
    raise ValueError(f"element part {part!r}")


def parse_map_json(text: str) -> list[Entry]:
    """The elements of ``nft -j list map`` output (nft 1.0.6: timeout and expires in whole seconds)."""
    entries = []
    for obj in json.loads(text)["nftables"]:
        for key, value in obj.get("map", {}).get("elem", []):
            elem = key.get("elem", {"val": key}) if isinstance(key, dict) else {"val": key}
            entries.append(Entry(_text(elem["val"]), _text(value), elem.get("timeout"), elem.get("expires")))
    return entries


def parse_sets_json(text: str, prefix: str) -> dict[str, list[Entry]]:
    """The elements of the sets named ``prefix``... in ``nft -j list table`` output (nft 1.0.6)."""
    out: dict[str, list[Entry]] = {}
    for obj in json.loads(text)["nftables"]:
        s = obj.get("set")
        if s is None or not s["name"].startswith(prefix):
            continue
        entries = out.setdefault(s["name"], [])
        for item in s.get("elem", []):
            elem = item.get("elem", {"val": item}) if isinstance(item, dict) else {"val": item}
            entries.append(Entry(_text(elem["val"]), "", elem.get("timeout"), elem.get("expires")))
    return out


_REF_CHAIN = re.compile(r"\b(?:jump|goto)\s+([A-Za-z][A-Za-z0-9_.-]*)")
_REF_SET = re.compile(r"@([A-Za-z][A-Za-z0-9_.-]*)")
_IFNAME = re.compile(r'\b[io]ifname (?:!= )?"([^"]*)"')  # nft: at most 15 characters, a wildcard "*" included


@dataclass
class _Chain:
    spec: Chain
    rules: list[str] = field(default_factory=list)


@dataclass
class _Set:
    spec: Set
    elements: dict[str, str | None] = field(default_factory=dict)
    timers: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (timeout, deadline)


@dataclass
class _Table:
    chains: dict[str, _Chain] = field(default_factory=dict)
    sets: dict[str, _Set] = field(default_factory=dict)


class FakeNft:
    """In-memory nftables for one table with kernel semantics: all-or-nothing transactions, ENOENT for missing
    objects and for jump/goto/@set targets, EEXIST for a map key re-added with a different value, EBUSY for
    deleting a chain or set still referenced."""

    def __init__(self, family: str = "ip", table: str = "cnipy") -> None:
        self.family, self.table = family, table
        self.state: _Table | None = None
        self.transactions = 0
        self.fail_next: str | None = None  # make the next run fail, as a flaky nft would
        self.now = 0.0  # the clock element timeouts run on; tests move it forward

    def _expire(self, t: _Table | None) -> None:
        for s in t.sets.values() if t else ():
            for key in [k for k, (_, deadline) in s.timers.items() if deadline <= self.now]:
                del s.timers[key], s.elements[key]

    def record(self, set_name: str, key: str, value: str | None, timeout: int) -> None:
        """What an ``update @map { key timeout Ns : value }`` rule (``update @set { key timeout Ns }``: value
        None) does for a packet: add the element, or restart the timer of the one there (keeping its value)."""
        self._expire(self.state)
        assert self.state is not None
        s = self.state.sets[set_name]
        if "dynamic" not in s.spec.flags or "timeout" not in s.spec.flags:
            raise FakeApplyError("EOPNOTSUPP", f"{set_name} is not a dynamic set or map with timeouts")
        if s.spec.is_map != (value is not None):
            raise FakeApplyError("EINVAL", f"{set_name}: a map needs a value, a set none")
        s.elements.setdefault(key, value)
        s.timers[key] = (timeout, self.now + timeout)

    def list_map(self, name: str) -> list[Entry] | None:
        self._expire(self.state)
        if self.state is None or name not in self.state.sets:
            return None
        s = self.state.sets[name]
        out = []
        for key, value in s.elements.items():
            timeout, deadline = s.timers.get(key, (None, None))
            out.append(Entry(key, value or "", timeout, None if deadline is None else int(deadline - self.now)))
        return out

    def list_sets(self, prefix: str) -> dict[str, list[Entry]]:
        self._expire(self.state)
        if self.state is None:
            return {}
        return {name: [Entry(key, "", *((s.timers[key][0], int(s.timers[key][1] - self.now))
                                        if key in s.timers else (None, None))) for key in s.elements]
                for name, s in self.state.sets.items() if name.startswith(prefix) and not s.spec.is_map}

    def run(self, tx: Transaction) -> None:
        if (tx.family, tx.table) != (self.family, self.table):
            raise FakeApplyError("EINVAL", f"transaction for {tx.family} {tx.table}, fake holds {self.table}")
        if self.fail_next is not None:
            msg, self.fail_next = self.fail_next, None
            raise FakeApplyError("EIO", msg)
        self._expire(self.state)
        work = copy.deepcopy(self.state)
        for verb, obj in tx.iter_ops():
            work = self._apply(work, verb, obj)
        self.state = work
        self.transactions += 1

    def has_element(self, set_name: str, key: str) -> bool:
        self._expire(self.state)
        return self.state is not None and key in self.state.sets.get(set_name, _Set(Set(set_name, ""))).elements

    def list_rules(self, chain: str) -> list[str] | None:
        if self.state is None or chain not in self.state.chains:
            return None
        return list(self.state.chains[chain].rules)

    # The operations, on the working copy.
    def _apply(self, t: _Table | None, verb: Verb, obj: object) -> _Table | None:
        if isinstance(obj, Table):
            if verb is Verb.ADD:
                return t or _Table()
            if t is None:
                raise FakeApplyError("ENOENT", f"{verb} table: no such table")
            if verb is Verb.DELETE:
                return None
            for c in t.chains.values():
                c.rules.clear()
            return t
        if t is None:
            raise FakeApplyError("ENOENT", f"{verb} {obj}: table does not exist")
        match obj:
            case Chain():
                self._chain(t, verb, obj)
            case Rule():
                self._rule(t, obj)
            case Set():
                self._set(t, verb, obj)
            case Element():
                self._elements(t, verb, obj.set, ((obj.key, obj.value),))
            case Elements():
                self._elements(t, verb, obj.set, obj.items)
            case RenderedElements():
                parsed = [item.partition(" : ") for item in obj.items]
                self._elements(t, verb, obj.set, [(k, v if sep else None) for k, sep, v in parsed])
            case Entries():
                self._entries(t, obj)
        return t

    def _entries(self, t: _Table, obj: Entries) -> None:
        self._elements(t, Verb.ADD, obj.set, [(e.key, e.value or None) for e in obj.items])
        s = t.sets[obj.set]
        for e in obj.items:
            if e.timeout is None:
                continue
            if "timeout" not in s.spec.flags:
                raise FakeApplyError("EINVAL", f"element {e.key} of {obj.set}: timeout on a set without timeouts")
            left = e.timeout if e.expires is None else min(max(e.expires, 1), e.timeout)  # as Entry.text sends it
            s.timers[e.key] = (e.timeout, self.now + left)

    def _chain(self, t: _Table, verb: Verb, obj: Chain) -> None:
        have = t.chains.get(obj.name)
        if verb is Verb.ADD:
            if have is None:
                t.chains[obj.name] = _Chain(obj)
            elif have.spec != obj:
                raise FakeApplyError("EEXIST", f"chain {obj.name} exists with another type or hook")
            return
        if have is None:
            raise FakeApplyError("ENOENT", f"{verb} chain {obj.name}: no such chain")
        if verb is Verb.FLUSH:
            have.rules.clear()
            return
        if self._chain_referenced(t, obj.name):
            raise FakeApplyError("EBUSY", f"delete chain {obj.name}: still referenced")
        del t.chains[obj.name]

    @staticmethod
    def _chain_referenced(t: _Table, name: str) -> bool:
        for c in t.chains.values():
            if c.spec.name != name and any(name in _REF_CHAIN.findall(r) for r in c.rules):
                return True
        target = (f"goto {name}", f"jump {name}")
        return any(v in target for s in t.sets.values() if s.spec.is_map for v in s.elements.values())

    def _rule(self, t: _Table, obj: Rule) -> None:
        chain = t.chains.get(obj.chain)
        if chain is None:
            raise FakeApplyError("ENOENT", f"add rule: no chain {obj.chain}")
        for target in _REF_CHAIN.findall(obj.rule):
            if target not in t.chains:
                raise FakeApplyError("ENOENT", f"rule {obj.rule!r}: no chain {target}")
        for ref in _REF_SET.findall(obj.rule):
            if ref not in t.sets:
                raise FakeApplyError("ENOENT", f"rule {obj.rule!r}: no set {ref}")
        for name in _IFNAME.findall(obj.rule):
            if len(name) > 15:
                raise FakeApplyError("EINVAL", f"rule {obj.rule!r}: String exceeds maximum length of 16")
        chain.rules.append(obj.rule)

    def _set(self, t: _Table, verb: Verb, obj: Set) -> None:
        have = t.sets.get(obj.name)
        if verb is Verb.ADD:
            if have is None:
                t.sets[obj.name] = _Set(obj)
            elif have.spec != obj:
                raise FakeApplyError("EEXIST", f"set {obj.name} exists with another type")
            return
        if have is None:
            raise FakeApplyError("ENOENT", f"{verb} set {obj.name}: no such set")
        if verb is Verb.FLUSH:
            have.elements.clear()
            return
        if any(obj.name in _REF_SET.findall(r) for c in t.chains.values() for r in c.rules):
            raise FakeApplyError("EBUSY", f"delete set {obj.name}: used by a rule")
        del t.sets[obj.name]

    def _elements(self, t: _Table, verb: Verb, set_name: str,
                  items: Sequence[tuple[str, str | None]] | tuple[tuple[str, str | None], ...]) -> None:
        s = t.sets.get(set_name)
        if s is None:
            raise FakeApplyError("ENOENT", f"{verb} element: no set {set_name}")
        if verb is Verb.FLUSH:
            raise FakeApplyError("EINVAL", "flush element is not a command")
        for key, value in items:
            if verb is Verb.DELETE:
                if key not in s.elements:
                    raise FakeApplyError("ENOENT", f"delete element {set_name} {{ {key} }}: not present")
                del s.elements[key]
                s.timers.pop(key, None)
                continue
            if s.spec.is_map != (value is not None):
                raise FakeApplyError("EINVAL", f"element {key} of {set_name}: map needs a value, set none")
            if value is not None and (m := _REF_CHAIN.match(value)) and m.group(1) not in t.chains:
                raise FakeApplyError("ENOENT", f"element {key} : {value}: no chain {m.group(1)}")
            if key in s.elements and s.elements[key] != value:
                raise FakeApplyError("EEXIST", f"element {key} of {set_name} exists with another value")
            s.elements[key] = value

    def dump(self) -> str:
        """Canonical text: sets and chains sorted by name, elements sorted, rules in order."""
        self._expire(self.state)
        if self.state is None:
            return ""
        out = [f"table {self.family} {self.table}"]
        for name in sorted(self.state.sets):
            s = self.state.sets[name]
            out.append(f"  {'map' if s.spec.is_map else 'set'} {name} {{ {s.spec.type}"
                       f"{' flags ' + ','.join(s.spec.flags) if s.spec.flags else ''} }}")
            for key in sorted(s.elements):
                value = s.elements[key]
                timer = f" timeout {s.timers[key][0]}s" if key in s.timers else ""
                out.append(f"    {key}{timer}" + ("" if value is None else f" : {value}"))
        for name in sorted(self.state.chains):
            c = self.state.chains[name]
            out.append(f"  chain {name}{c.spec.spec()}")
            out.extend(f"    {r}" for r in c.rules)
        return "\n".join(out) + "\n"

    def elements(self, set_name: str) -> dict[str, str | None]:
        self._expire(self.state)
        assert self.state is not None
        return dict(self.state.sets[set_name].elements)

"""Typed nftables objects queued into one Transaction and rendered as ``nft -f`` text (knftables' shape).

All objects live in one table, named by the Transaction. Each object is validated when it is queued, so a
malformed name or rule fails at the call site rather than inside ``nft``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")


class Verb(StrEnum):
    ADD = "add"
    DELETE = "delete"
    FLUSH = "flush"


@dataclass(frozen=True)
class Table:
    pass


@dataclass(frozen=True)
class Chain:
    name: str
    type: str | None = None  # "nat" / "filter" for base chains
    hook: str | None = None
    priority: str | None = None

    def spec(self) -> str:
        if self.type is None:
            return ""
        return f" {{ type {self.type} hook {self.hook} priority {self.priority}; policy accept; }}"


@dataclass(frozen=True)
class Rule:
    chain: str
    rule: str


@dataclass(frozen=True)
class Set:
    """A set, or a map when ``is_map``; ``type`` is the full "type ..." or "typeof ..." clause."""

    name: str
    type: str
    flags: tuple[str, ...] = ()
    is_map: bool = False
    size: int | None = None

    def spec(self) -> str:
        flags = f" flags {','.join(self.flags)} ;" if self.flags else ""
        size = f" size {self.size} ;" if self.size else ""
        return f" {{ {self.type} ;{flags}{size} }}"


@dataclass(frozen=True)
class Element:
    set: str
    key: str
    value: str | None = None  # maps only

    def text(self) -> str:
        return self.key if self.value is None else f"{self.key} : {self.value}"


@dataclass(frozen=True)
class Elements:
    """Many elements of one set in one command (what a full sync queues: 100k elements cost one object)."""

    set: str
    items: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class RenderedElements:
    """Many elements of one set already rendered as nft element text ("key" or "key : value"): what a full sync
    queues, so 100k elements cost neither a tuple each nor a second formatting pass."""

    set: str
    items: Sequence[str]


@dataclass(frozen=True)
class Entry:
    """An element of a dynamic map (or set: ``value`` "") with its timer: what ``list_map`` and ``list_sets``
    read and a full sync re-adds."""

    key: str
    value: str
    timeout: int | None = None  # seconds
    expires: int | None = None  # seconds left

    def text(self) -> str:
        timer = "" if self.timeout is None else f" timeout {self.timeout}s"
        if self.timeout is not None and self.expires is not None:
            timer += f" expires {min(max(self.expires, 1), self.timeout)}s"  # the kernel: ERANGE past the timeout
        return f"{self.key}{timer} : {self.value}" if self.value else f"{self.key}{timer}"


@dataclass(frozen=True)
class Entries:
    set: str
    items: tuple[Entry, ...]


Object = Table | Chain | Rule | Set | Element | Elements | RenderedElements | Entries


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"invalid nftables name {name!r}")


def validate(verb: Verb, obj: Object) -> None:
    match obj:
        case Chain() | Set():
            _check_name(obj.name)
            if isinstance(obj, Chain) and (obj.type is None) != (obj.hook is None):
                raise ValueError(f"chain {obj.name}: base chains need both type and hook")
        case Rule():
            _check_name(obj.chain)
            if verb is not Verb.ADD or not obj.rule or "\n" in obj.rule:
                raise ValueError(f"rule {obj.rule!r}: only single-line rules can be added")
        case Element():
            _check_name(obj.set)
            if not obj.key or "\n" in obj.key or (obj.value is not None and "\n" in obj.value):
                raise ValueError(f"element {obj.key!r}: empty or multi-line")
        case Elements():
            _check_name(obj.set)
            if any(not k or "\n" in k or (v is not None and "\n" in v) for k, v in obj.items):
                raise ValueError(f"elements of {obj.set}: empty or multi-line key or value")
        case Entries():
            _check_name(obj.set)
            if verb is not Verb.ADD or any("\n" in e.key + e.value or not e.key for e in obj.items):
                raise ValueError(f"entries of {obj.set}: only additions of single-line elements")
        case RenderedElements():
            _check_name(obj.set)
            if "" in obj.items or "\n" in "".join(obj.items):  # both scans run in C
                raise ValueError(f"elements of {obj.set}: empty or multi-line element")


class Transaction:
    """Queued operations on one table, applied all-or-nothing."""

    def __init__(self, family: str, table: str) -> None:
        self.family = family
        self.table = table
        self.ops: list[tuple[Verb, Object]] = []

    def add(self, obj: Object) -> None:
        validate(Verb.ADD, obj)
        self.ops.append((Verb.ADD, obj))

    def delete(self, obj: Object) -> None:
        validate(Verb.DELETE, obj)
        self.ops.append((Verb.DELETE, obj))

    def flush(self, obj: Chain | Set | Table) -> None:
        validate(Verb.FLUSH, obj)
        self.ops.append((Verb.FLUSH, obj))

    def add_elements(self, set_name: str, items: Iterable[tuple[str, str | None]]) -> None:
        batch = tuple(items)
        if batch:
            self.add(Elements(set_name, batch))

    def delete_elements(self, set_name: str, keys: Iterable[str]) -> None:
        batch = tuple((k, None) for k in keys)
        if batch:
            self.delete(Elements(set_name, batch))

    def iter_ops(self) -> Iterator[tuple[Verb, Object]]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def render(self) -> str:
        return "".join(self.iter_lines())

    def iter_lines(self) -> Iterator[str]:
        where = f"{self.family} {self.table}"
        # Consecutive single Elements of one set and verb become one command.
        pending: tuple[Verb, str] | None = None
        items: list[tuple[str, str | None]] = []
        for verb, obj in self.iter_ops():
            if isinstance(obj, Element):
                if pending != (verb, obj.set):
                    if pending is not None:
                        yield from _element_lines(pending[0], where, pending[1], items)
                    pending, items = (verb, obj.set), []
                items.append((obj.key, obj.value))
                continue
            if pending is not None:
                yield from _element_lines(pending[0], where, pending[1], items)
                pending, items = None, []
            match obj:
                case Elements():
                    yield from _element_lines(verb, where, obj.set, obj.items)
                case Entries():
                    for start in range(0, len(obj.items), _CHUNK):
                        body = ", ".join(e.text() for e in obj.items[start:start + _CHUNK])
                        yield f"{verb} element {where} {obj.set} {{ {body} }}\n"
                case RenderedElements():
                    for start in range(0, len(obj.items), _CHUNK):
                        body = ", ".join(obj.items[start:start + _CHUNK])
                        yield f"{verb} element {where} {obj.set} {{ {body} }}\n"
                case Table():
                    yield f"{verb} table {where}\n"
                case Chain():
                    yield f"{verb} chain {where} {obj.name}{obj.spec() if verb is Verb.ADD else ''}\n"
                case Rule():
                    yield f"add rule {where} {obj.chain} {obj.rule}\n"
                case Set():
                    kind = "map" if obj.is_map else "set"
                    yield f"{verb} {kind} {where} {obj.name}{obj.spec() if verb is Verb.ADD else ''}\n"
        if pending is not None:
            yield from _element_lines(pending[0], where, pending[1], items)


_CHUNK = 20000  # elements per command: keeps lines a sane length without costing parse time


def _element_lines(verb: Verb, where: str, set_name: str,
                   items: list[tuple[str, str | None]] | tuple[tuple[str, str | None], ...]) -> Iterator[str]:
    for start in range(0, len(items), _CHUNK):
        chunk = items[start:start + _CHUNK]
        if verb is Verb.ADD:
            body = ", ".join(k if v is None else f"{k} : {v}" for k, v in chunk)
        else:
            body = ", ".join(k for k, _ in chunk)
        yield f"{verb} element {where} {set_name} {{ {body} }}\n"

"""Kubernetes label keys, values and selectors (equality- and set-based), validated as Kubernetes does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from cnipy.proxy.errors import SelectorError

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")


def validate_key(key: str) -> str:
    """A label key: optional DNS-subdomain prefix (<= 253) and '/', then a name (<= 63, [A-Za-z0-9-_.])."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise SelectorError(f"label key {key!r}: prefix must be a DNS subdomain of at most 253 characters")
    if not _NAME.match(name):
        raise SelectorError(f"label key {key!r}: name must be 1-63 characters of [A-Za-z0-9-_.], "
                            "alphanumeric at both ends")
    return key


def validate_value(value: str) -> str:
    """A label value: empty, or a name of at most 63 characters as for keys."""
    if value and not _NAME.match(value):
        raise SelectorError(f"label value {value!r}: must be empty or 1-63 characters of [A-Za-z0-9-_.], "
                            "alphanumeric at both ends")
    return value


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {validate_key(k): validate_value(v) for k, v in labels.items()}


class Op(StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case Op.EQUALS | Op.IN:
                return present and value in self.values
            case Op.NOT_EQUALS | Op.NOT_IN:
                return not present or value not in self.values
            case Op.EXISTS:
                return present
            case Op.DOES_NOT_EXIST:
                return not present


@dataclass(frozen=True)
class Selector:
    """All requirements must hold (AND). An empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def from_map(cls, match_labels: Mapping[str, str]) -> Selector:
        """A Service's ``spec.selector`` or a ``matchLabels`` map: key == value for each entry."""
        return cls(tuple(Requirement(validate_key(k), Op.EQUALS, frozenset({validate_value(v)}))
                         for k, v in sorted(match_labels.items())))

    @classmethod
    def parse(cls, text: str) -> Selector:
        """The string form: ``a=b,c!=d,e in (f,g),h notin (i),j,!k`` (``==`` is the same as ``=``)."""
        return cls(tuple(_parse_requirement(part) for part in _split_top(text)))


_SET_EXPR = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_EXPR = re.compile(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(\S*)\s*$")


def _split_top(text: str) -> list[str]:
    # Split on commas that are not inside parentheses.
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise SelectorError(f"selector {text!r}: unbalanced parentheses")
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _parse_requirement(part: str) -> Requirement:
    if m := _SET_EXPR.match(part):
        values = [validate_value(v.strip()) for v in m.group(3).split(",") if v.strip()]
        if not values:
            raise SelectorError(f"selector {part.strip()!r}: {m.group(2)} needs at least one value")
        return Requirement(validate_key(m.group(1)), Op(m.group(2)), frozenset(values))
    if m := _EQ_EXPR.match(part):
        op = Op.NOT_EQUALS if m.group(2) == "!=" else Op.EQUALS
        return Requirement(validate_key(m.group(1)), op, frozenset({validate_value(m.group(3))}))
    stripped = part.strip()
    if stripped.startswith("!"):
        return Requirement(validate_key(stripped[1:].strip()), Op.DOES_NOT_EXIST)
    return Requirement(validate_key(stripped), Op.EXISTS)


_EXPR_OPS = {"In": Op.IN, "NotIn": Op.NOT_IN, "Exists": Op.EXISTS, "DoesNotExist": Op.DOES_NOT_EXIST}


def from_label_selector(obj: Mapping[str, object]) -> Selector:
    """A ``metav1.LabelSelector`` object: ``matchLabels`` plus ``matchExpressions``."""
    match_labels = obj.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError("matchLabels must be a map")
    reqs = list(Selector.from_map({str(k): str(v) for k, v in match_labels.items()}).requirements)
    exprs = obj.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SelectorError("matchExpressions must be a list")
    for expr in exprs:
        if not isinstance(expr, Mapping) or expr.get("operator") not in _EXPR_OPS:
            raise SelectorError(f"matchExpressions entry {expr!r}: operator must be one of {sorted(_EXPR_OPS)}")
        op = _EXPR_OPS[str(expr["operator"])]
        values = frozenset(validate_value(str(v)) for v in (expr.get("values") or []))
        if op in (Op.IN, Op.NOT_IN) and not values:
            raise SelectorError(f"matchExpressions {expr!r}: {expr['operator']} needs values")
        reqs.append(Requirement(validate_key(str(expr.get("key", ""))), op, values))
    return Selector(tuple(reqs))

"""A little nftables helper: read one table as JSON, apply a script atomically with one `nft -f`."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cnipy.cni.errors import RuleError
from cnipy.plugins.common.run import run, try_run


@dataclass(frozen=True)
class NftRule:
    chain: str
    handle: int
    comment: str


@dataclass(frozen=True)
class NftTable:
    chains: frozenset[str]
    rules: tuple[NftRule, ...]


def read_table(family: str, table: str) -> NftTable | None:
    """The chains and rules of a table; None when the table does not exist (or nft is missing)."""
    out = try_run(["nft", "-j", "list", "table", family, table])
    if out is None:
        return None
    try:
        items = json.loads(out).get("nftables", [])
    except ValueError as exc:
        raise RuleError(f"cannot parse nft output for table {family} {table}", str(exc)[:200]) from exc
    chains: set[str] = set()
    rules: list[NftRule] = []
    for item in items:
        if "chain" in item:
            chains.add(item["chain"]["name"])
        elif "rule" in item:
            r = item["rule"]
            rules.append(NftRule(r["chain"], int(r["handle"]), r.get("comment", "")))
    return NftTable(frozenset(chains), tuple(rules))


def apply(script: str, what: str) -> None:
    """Apply an nft script in one transaction: all of it or nothing."""
    if script.strip():
        run(["nft", "-f", "-"], script, what=what)


def quote(comment: str) -> str:
    """A comment as an nft string (our comments hold only validated names; quotes are dropped anyway)."""
    return '"' + comment.replace('"', "").replace("\\", "")[:127] + '"'

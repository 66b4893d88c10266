"""MAC spoof check (`macspoofchk`): frames entering the bridge from a pod's port must carry the pod's MAC.

Like the reference: an nftables bridge-family table with a prerouting filter chain (priority -300) that jumps,
for the pod's host-side veth, to a per-attachment chain that returns for the pod's source MAC and drops anything
else. Ours lives in its own table `bridge cnipy_macspoofchk`; chain names and rule comments derive from (network,
ifname, containerID), so DEL and GC find them without the namespace.
"""

from __future__ import annotations

from collections.abc import Iterable

from cnipy.plugins.common import nft
from cnipy.plugins.common.masq import Attachment

TABLE = "cnipy_macspoofchk"
BASE = "prerouting"


def chain_of(att: Attachment) -> str:
    return f"sc-{att.tag}"


def render_setup(att: Attachment, host_veth: str, mac: str, stale: Iterable[int]) -> str:
    t = f"bridge {TABLE}"
    chain = chain_of(att)
    comment = nft.quote(f"{att.tag} macspoofchk {att.comment}")
    lines = [f"add table {t}",
             f"add chain {t} {BASE} {{ type filter hook prerouting priority -300; policy accept; }}",
             f"add chain {t} {chain}", f"flush chain {t} {chain}"]
    lines += [f"delete rule {t} {BASE} handle {h}" for h in stale]
    lines += [f"add rule {t} {chain} ether saddr {mac} return comment {comment}",
              f"add rule {t} {chain} drop comment {comment}",
              f'add rule {t} {BASE} iifname "{host_veth}" jump {chain} comment {comment}']
    return "\n".join(lines) + "\n"


def _remove_script(table: nft.NftTable, chains: set[str], tags: set[str]) -> str:
    t = f"bridge {TABLE}"
    lines = [f"delete rule {t} {BASE} handle {r.handle}" for r in table.rules
             if r.chain == BASE and r.comment.split(" ", 1)[0] in tags]
    lines += [f"delete chain {t} {c}" for c in sorted(chains) if c in table.chains]
    return "\n".join(lines) + "\n" if lines else ""


def setup(att: Attachment, host_veth: str, mac: str) -> None:
    table = nft.read_table("bridge", TABLE)
    stale = [r.handle for r in table.rules if r.chain == BASE and r.comment.startswith(att.tag)] if table else []
    nft.apply(render_setup(att, host_veth, mac, stale), "setting up the MAC spoof check")


def teardown(att: Attachment) -> None:
    table = nft.read_table("bridge", TABLE)
    if table is not None:
        nft.apply(_remove_script(table, {chain_of(att)}, {att.tag}), "removing the MAC spoof check")


def gc(network: str, valid: Iterable[tuple[str, str]]) -> None:
    table = nft.read_table("bridge", TABLE)
    if table is None:
        return
    keep = {Attachment(network, ifname, cid).tag for cid, ifname in valid}
    prefix = Attachment(network, "", "").tag.split("-")[0] + "-"
    tags = {c[3:] for c in table.chains if c.startswith("sc-" + prefix)} - keep
    tags |= {r.comment.split(" ", 1)[0] for r in table.rules
             if r.chain == BASE and r.comment.startswith(prefix)} - keep
    nft.apply(_remove_script(table, {f"sc-{t}" for t in tags}, tags), "garbage-collecting the MAC spoof check")


def present(att: Attachment) -> bool:
    table = nft.read_table("bridge", TABLE)
    return table is not None and chain_of(att) in table.chains and any(
        r.chain == BASE and r.comment.startswith(att.tag) for r in table.rules)

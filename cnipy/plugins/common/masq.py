"""IP masquerade for pod addresses, in rule sets we own, named per network + attachment.

iptables back end: one nat chain per attachment, `CNIPY-<net hash>-<attachment hash>` (28 chars, the iptables
limit), holding "ACCEPT to the pod's own subnet" and "MASQUERADE unless multicast", jumped to from POSTROUTING by
source address. Applied with one `iptables-restore --noflush` per family (declaring the chain flushes it).

nftables back end: table `inet cnipy_masq`, chain `postrouting` (nat hook); one rule per pod address whose comment
starts with `<net hash16>-<attachment hash16>`. Applied with one `nft -f`.

Because every name derives from (network, ifname, containerID), DEL removes the rules without knowing the pod's
addresses (so also when its namespace is gone), and GC finds the rules of attachments no longer valid.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cnipy.cni.errors import InvalidConfig
from cnipy.plugins.common import nft
from cnipy.plugins.common.run import run, try_run, which

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
BACKENDS = ("iptables", "nftables")
IPT_PREFIX = "CNIPY-"
NFT_TABLE = "cnipy_masq"
NFT_CHAIN = "postrouting"
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/ -]")
IPT_TOOLS = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}


def _hash(text: str, n: int) -> str:
    return hashlib.sha512(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Attachment:
    network: str
    ifname: str
    container_id: str

    @property
    def chain(self) -> str:
        return f"{IPT_PREFIX}{_hash(self.network, 8)}-{_hash(f'{self.ifname}:{self.container_id}', 13)}"

    @property
    def tag(self) -> str:
        return f"{_hash(self.network, 16)}-{_hash(f'{self.ifname}:{self.container_id}', 16)}"

    @property
    def comment(self) -> str:
        """Human-readable, and safe inside a quoted iptables-restore or nft word whatever the ifname holds."""
        text = f"cnipy masq net: {self.network} if: {self.ifname} id: {self.container_id}"
        return _UNSAFE.sub("_", text)[:250]


def default_backend() -> str:
    """iptables unless only nftables is there (the reference's choice)."""
    if which("iptables-restore") is None and which("nft") is not None:
        return "nftables"
    return "iptables"


def backend_of(value: object) -> str:
    if value is None:
        return default_backend()
    if value not in BACKENDS:
        raise InvalidConfig(f"unknown ipMasqBackend {value!r}", "use iptables or nftables")
    return str(value)


# -- iptables -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NatState:
    chains: frozenset[str]
    postrouting: tuple[str, ...]  # rule specs after "-A POSTROUTING "


def parse_save(text: str) -> NatState:
    chains: set[str] = set()
    post: list[str] = []
    for line in text.splitlines():
        if line.startswith(":"):
            chains.add(line[1:].split(" ", 1)[0])
        elif line.startswith("-A POSTROUTING "):
            post.append(line[len("-A POSTROUTING "):])
    return NatState(frozenset(chains), tuple(post))


def jumps_to(state: NatState, chain: str) -> list[str]:
    return [spec for spec in state.postrouting if spec.split()[-2:] == ["-j", chain]]


def render_ipt_setup(att: Attachment, addrs: Sequence[IPInterface], stale: Iterable[str]) -> str:
    c = f'-m comment --comment "{att.comment}"'
    lines = ["*nat", f":{att.chain} - [0:0]"]
    lines += [f"-D POSTROUTING {spec}" for spec in stale]
    lines += [f"-A {att.chain} -d {a.network} {c} -j ACCEPT" for a in addrs]
    lines.append(f"-A {att.chain} ! -d {MULTICAST[addrs[0].version]} {c} -j MASQUERADE")
    lines += [f"-A POSTROUTING -s {a.ip}/{a.max_prefixlen} {c} -j {att.chain}" for a in addrs]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_ipt_remove(state: NatState, chains: Iterable[str]) -> str:
    body: list[str] = []
    for chain in sorted(set(chains)):
        body += [f"-D POSTROUTING {spec}" for spec in jumps_to(state, chain)]
        if chain in state.chains:
            body += [f"-F {chain}", f"-X {chain}"]
    return "\n".join(["*nat", *body, "COMMIT"]) + "\n" if body else ""


def _nat_state(family: int) -> NatState | None:
    out = try_run([IPT_TOOLS[family][0], "-t", "nat"])
    return parse_save(out) if out is not None else None


def _restore(family: int, text: str, what: str) -> None:
    if text:
        run([IPT_TOOLS[family][1], "-w", "--noflush"], text, what=what)


def _ipt_setup(att: Attachment, addrs: Sequence[IPInterface]) -> None:
    for family in (4, 6):
        mine = [a for a in addrs if a.version == family]
        if not mine:
            continue
        state = _nat_state(family) or NatState(frozenset(), ())
        _restore(family, render_ipt_setup(att, mine, jumps_to(state, att.chain)), "setting up masquerade")


def _ipt_remove(chains_of: dict[int, list[str]] | None, att_prefix: str = "",
                keep: frozenset[str] = frozenset()) -> None:
    for family in (4, 6):
        state = _nat_state(family)
        if state is None:
            continue
        if chains_of is not None:
            chains = chains_of.get(family, [])
        else:
            chains = [c for c in state.chains if c.startswith(att_prefix) and c not in keep]
        _restore(family, render_ipt_remove(state, chains), "removing masquerade")


# -- nftables -------------------------------------------------------------------------------------------------
def render_nft_setup(att: Attachment, addrs: Sequence[IPInterface], stale: Iterable[int]) -> str:
    t = f"inet {NFT_TABLE}"
    lines = [f"add table {t}",
             f"add chain {t} {NFT_CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}"]
    lines += [f"delete rule {t} {NFT_CHAIN} handle {h}" for h in stale]
    comment = nft.quote(f"{att.tag} {att.comment}")
    for a in addrs:
        ip = "ip" if a.version == 4 else "ip6"
        lines.append(f"add rule {t} {NFT_CHAIN} {ip} saddr {a.ip} {ip} daddr != {a.network} "
                     f"{ip} daddr != {MULTICAST[a.version]} masquerade comment {comment}")
    return "\n".join(lines) + "\n"


def _nft_handles(prefix: str, keep_tags: frozenset[str] = frozenset()) -> list[int]:
    table = nft.read_table("inet", NFT_TABLE)
    if table is None:
        return []
    return [r.handle for r in table.rules
            if r.chain == NFT_CHAIN and r.comment.startswith(prefix) and r.comment.split(" ", 1)[0] not in keep_tags]


def _nft_delete(handles: list[int], what: str) -> None:
    nft.apply("".join(f"delete rule inet {NFT_TABLE} {NFT_CHAIN} handle {h}\n" for h in handles), what)


# -- the verbs --------------------------------------------------------------------------------------------------
def setup(backend: str, att: Attachment, addrs: Sequence[IPInterface]) -> None:
    """Masquerade traffic from `addrs` to anything outside their subnets (and not multicast). Idempotent."""
    if not addrs:
        return
    if backend == "nftables":
        nft.apply(render_nft_setup(att, addrs, _nft_handles(att.tag)), "setting up masquerade")
    else:
        _ipt_setup(att, addrs)


def teardown(att: Attachment) -> None:
    """Remove this attachment's rules from both back ends (the config may have changed since ADD)."""
    _ipt_remove({4: [att.chain], 6: [att.chain]})
    _nft_delete(_nft_handles(att.tag), "removing masquerade")


def gc(network: str, valid: Iterable[tuple[str, str]]) -> None:
    """Remove the rules of `network`'s attachments that are not in `valid` ((containerID, ifname) pairs)."""
    atts = [Attachment(network, ifname, cid) for cid, ifname in valid]
    probe = Attachment(network, "", "")
    _ipt_remove(None, probe.chain.rsplit("-", 1)[0] + "-", frozenset(a.chain for a in atts))
    _nft_delete(_nft_handles(probe.tag.split("-")[0] + "-", frozenset(a.tag for a in atts)),
                "garbage-collecting masquerade")


def missing(backend: str, att: Attachment, addrs: Sequence[IPInterface]) -> list[str]:
    """What of this attachment's masquerade is not in place (for CHECK); empty when all is there."""
    problems: list[str] = []
    if backend == "nftables":
        table = nft.read_table("inet", NFT_TABLE)
        n = 0 if table is None else sum(1 for r in table.rules if r.comment.startswith(att.tag))
        if n < len(addrs):
            problems.append(f"nftables masquerade rules for {att.tag}: {n} found, {len(addrs)} expected")
        return problems
    for family in (4, 6):
        mine = [a for a in addrs if a.version == family]
        if not mine:
            continue
        state = _nat_state(family) or NatState(frozenset(), ())
        if att.chain not in state.chains:
            problems.append(f"iptables chain {att.chain} (IPv{family} nat) is missing")
        for a in mine:
            if not any(f"-s {a.ip}/{a.max_prefixlen} " in s + " " for s in jumps_to(state, att.chain)):
                problems.append(f"POSTROUTING jump for {a.ip} to {att.chain} is missing")
    return problems

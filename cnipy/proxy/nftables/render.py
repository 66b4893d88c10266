"""The nftables layout: desired state for table ``ip cnipy`` (IPv4) or ``ip6 cnipy`` (IPv6) from a Plan.

Each IP family has its own table with the same layout (a dual-stack node has both, one proxier each): below,
``ip``/``ipv4_addr`` read ``ip6``/``ipv6_addr`` in the IPv6 table, rejects are ICMPv6, and IPv6 has no
localhost NodePorts (kube-proxy has none either; NodeConfig refuses them). ClientIP affinity differs: see
"IPv6 affinity" at the end of this docstring.

Packet path (O(1) whatever the number of services):

    nat-prerouting / nat-output -> services:
        ip daddr . l4proto . dport  vmap @service-ips       -> goto <dispatch chain>
        <local address> l4proto . dport vmap @service-nodeports -> goto <dispatch chain>
    dispatch chain "<kind>-<proto>-<mode>-<n>[-<c>][-a<timeout>]" (one per shape, shared by all services of
    that shape; kind ip|np, mode c = cluster IP, x = external, l = external with policy Local):
        masquerade marking for the mode, then
        dnat ip to <key> . numgen random mod n map @<kind>-<proto>-backends  (slot i -> backend i: equal shares)
        (ClientIP affinity: first "dnat ip to ip saddr . ip daddr . <proto> dport map @affinity-<proto>",
        which falls through to numgen when the client has no entry)
    affinity-prerouting / affinity-output (filter, priority -90: after DNAT) -> affinity-record, for the
    first packet of a DNATed connection only (ct state new ct status dnat):
        ct original ip daddr . l4proto . ct original proto-dst vmap @affinity-ips       -> goto record-<proto>-t<s>
        l4proto . ct original proto-dst vmap @affinity-nodeports                         -> goto record-<proto>-t<s>
    record chain "record-<proto>-t<timeout>" (one per protocol and timeout, shared):
        update @affinity-<proto> { ip saddr . ct original ip daddr . ct original proto-dst timeout <s>s
                                   : ip daddr . <proto> dport }
    filter-prerouting / filter-output (before DNAT): LB source ranges, then services without (local)
    endpoints: reject (none at all) or drop (Local policy, none on this node)
    filter-forward: drop ct state invalid (see base_chains: no accepts, they could not override a host firewall)
    cluster-ips-forward / cluster-ips-output (filter forward / output, priority -90: after DNAT) ->
    cluster-ips-check, for new connections: still addressed to a ClusterIP (set cluster-ips) after DNAT means a
    port no service has: reject; else to an address in --service-cidr: an unallocated ClusterIP, drop.
    nat-postrouting -> masquerading: hairpin (saddr . daddr in @hairpin), then the masquerade mark.

A service change touches only map elements (and creates a dispatch chain the first time a shape appears).

Hooks and priorities: the DNAT decision is made in the nat chains at -100 (prerouting, output). What must see
the service address (firewall, endpoints checks) runs before, at -110; what must know the DNAT outcome runs after
it, at -90: the affinity record chains (filter prerouting/output) and the ClusterIP check (filter output; the
forward hook comes after prerouting's DNAT whatever its priority, -90 only for symmetry). The ClusterIP check and
the affinity chains share hook and priority on output without an order between them, which needs none: the
check acts on connections nothing DNATed (their destination is still a ClusterIP), the record only on DNATed
ones. Nothing checks the input hook: a ClusterIP is no local address, so traffic to it is forwarded (from
elsewhere) or sent out (from the node). kube-proxy's nftables mode does the same (its cluster-ips-check chain,
jumped to from its filter-forward and filter-output-post-dnat chains); its iptables mode has no such check.

ClientIP affinity is remembered per ENDPOINT, as kube-proxy's ``recent`` lists do: the dynamic map
``affinity-<proto>`` maps (client, service address, service port) to the endpoint the connection was DNATed
to, recorded after DNAT with the service's timeout, restarted by every new connection. Slots may shift when
endpoints change; the entries do not. For NodePorts the key holds the node address the client used, so a client
sticks per node address (as with kube-proxy's per-service lists, only finer). The back end removes the entries
of an endpoint that leaves an affinity service in the same transaction (and once more after it, for entries
recorded meanwhile), and a full sync, which replaces the table, re-adds the entries whose endpoint is still a
backend of their service with their remaining time: a full resync or a restarted proxy keeps clients in place.

IPv6 affinity: nft 1.0.6 cannot generate the ``update @affinity-<proto>`` rule for IPv6 (see ``Family.affinity``),
so the IPv6 table remembers clients as kube-proxy's nftables mode does, per endpoint, for affinity destinations
only (``StickyDest``): a dynamic set of client addresses per (destination, endpoint) ``sticky-<hash>``, a
lookup chain ``stick-<hash>`` per destination (``service-ips``/``service-nodeports`` go there: masquerade
marking, one "client in the endpoint's set: DNAT to it" rule per endpoint, then goto the shared dispatch chain)
and a record chain ``stkrec-<hash>`` (``affinity-ips``/``affinity-nodeports`` go there after DNAT: one
"to this endpoint: add the client to its set" rule per endpoint). An endpoint that leaves takes its set, and its
entries, with it; a full sync carries over the entries of the sets it keeps (their names hash the destination
and endpoint, so a kept name is a still valid entry). A NodePort client sticks per NodePort, whichever node
address it used. The IPv6 table still declares the affinity-<proto> maps (unused) to keep one layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from socket import inet_ntoa

from cnipy.proxy.model import IPAddress, IPNetwork, Protocol
from cnipy.proxy.nftables.transaction import Chain, Set
from cnipy.proxy.plan import AnyNodeConfig, Backend, PortPlan, ipv4_text


@dataclass(frozen=True)
class Family:
    """What differs between the IPv4 and the IPv6 table."""

    table_family: str  # nft's table family, also the address expression: "ip daddr", "ip6 daddr"
    addr_type: str  # the set key type of an address
    loopback: str  # never a NodePort address unless localhost NodePorts are on (IPv4 only)
    unspecified: str  # the canary element's address
    reject: str  # the ICMP error for a service without endpoints (TCP gets a reset)
    text: Callable[[IPAddress], str]  # an address as nft writes it
    # True: ClientIP affinity in the dynamic maps affinity-<proto> (client . service address . port -> endpoint).
    # nft 1.0.6 cannot generate an "update @map { key : data }" whose concatenated key or data exceeds 16 bytes
    # (netlink_linearize.c: "Assertion `dreg < ctx->reg_low' failed", nft aborts), and IPv6 needs 36 and 20:
    # False, per-endpoint client sets instead (StickyDest).
    affinity: bool = True

    @property
    def ip_key(self) -> str:
        return f"{self.table_family} daddr . meta l4proto . th dport"


IPV4 = Family("ip", "ipv4_addr", "127.0.0.0/8", "0.0.0.0", "reject", ipv4_text)  # ICMP port unreachable
IPV6 = Family("ip6", "ipv6_addr", "::1", "::", "reject with icmpv6 type port-unreachable", str, affinity=False)


def family_of(cfg: AnyNodeConfig) -> Family:
    return IPV6 if cfg.ip_family == 6 else IPV4


FAMILY = IPV4.table_family  # the IPv4 table; family_of(config).table_family in general
TABLE = "cnipy"

IP_KEY = IPV4.ip_key
NP_KEY = "meta l4proto . th dport"
REJECT_CHAIN = "reject-packet"
CLUSTER_IPS_SET = "cluster-ips"
CLUSTER_IPS_CHECK = "cluster-ips-check"
DROP_EXTERNAL_CHAIN = "drop-external"


def _cidrs(nets: Sequence[IPNetwork]) -> str:
    return str(nets[0]) if len(nets) == 1 else "{ " + ", ".join(map(str, nets)) + " }"


def local_match(cfg: AnyNodeConfig, negate: bool = False) -> str | None:
    """The match of local (pod) traffic, or of all other traffic (negate), by --detect-local-mode: the source
    address (``ip saddr``) or the incoming interface (``iifname``, "veth*" for a prefix); None when local traffic
    is not told apart (ClusterCIDR without cluster CIDRs). Locally generated traffic has no incoming interface:
    never local by interface, as with kube-proxy."""
    op = "!= " if negate else ""
    if cfg.local_cidrs:
        return f"{family_of(cfg).table_family} saddr {op}{_cidrs(cfg.local_cidrs)}"
    if (iface := cfg.local_interface) is not None:
        name, prefix = iface
        return f'iifname {op}"{name}{"*" if prefix else ""}"'
    return None


PROTOCOLS = ("tcp", "udp", "sctp")


def sets(fam: Family = IPV4) -> tuple[Set, ...]:
    ipk = f"{fam.addr_type} . inet_proto . inet_service"
    ip = fam.table_family
    # One backend map per protocol: the data part must name a transport header, and "th dport" trips nft
    # 1.0.6 when it evaluates a new rule against a map read back from the kernel ("conflicting protocols ip
    # vs. th"), while "tcp dport" makes nft add a "meta l4proto tcp" dependency to the rule.
    slot = "typeof {key} . numgen random mod 1 : {ip} daddr . {proto} dport"
    backend_maps = [
        Set(f"{kind}-{proto}-{table}", slot.format(key=fam.ip_key if kind == "ip" else NP_KEY, ip=ip, proto=proto),
            is_map=True)
        for kind in ("ip", "np") for proto in PROTOCOLS for table in ("backends", "cluster-backends")]
    # ClientIP affinity: (client . service address . port) -> endpoint, written by the packet path.
    affinity_maps = [
        Set(affinity_map_name(proto),
            f"typeof {ip} saddr . {ip} daddr . {proto} dport : {ip} daddr . {proto} dport",
            flags=("dynamic", "timeout"), is_map=True, size=AFFINITY_SET_SIZE)
        for proto in PROTOCOLS]
    return (
        Set("service-ips", f"type {ipk} : verdict", is_map=True),
        Set("service-nodeports", "type inet_proto . inet_service : verdict", is_map=True),
        *backend_maps,
        Set("no-endpoint-services", f"type {ipk} : verdict", is_map=True),
        Set("no-endpoint-nodeports", "type inet_proto . inet_service : verdict", is_map=True),
        Set("firewall-ips", f"type {ipk}"),
        Set("firewall-allow", f"type {ipk} . {fam.addr_type}", flags=("interval",)),
        Set("hairpin", f"type {fam.addr_type} . {fam.addr_type}"),
        *affinity_maps,
        # The service keys of affinity services, as seen after DNAT: which record chain (timeout) to use.
        Set("affinity-ips", f"type {ipk} : verdict", is_map=True),
        Set("affinity-nodeports", "type inet_proto . inet_service : verdict", is_map=True),
        Set(CLUSTER_IPS_SET, f"type {fam.addr_type}"),  # every ClusterIP: see cluster_ips_chains
    )


AFFINITY_SET_SIZE = 262144


def affinity_map_name(proto: str) -> str:
    return f"affinity-{proto}"


SETS = sets(IPV4)


def _nodeport_match(cfg: AnyNodeConfig) -> str:
    fam = family_of(cfg)
    parts = []
    if cfg.node_port_addresses:
        parts.append(f"{fam.table_family} daddr {_cidrs(cfg.node_port_addresses)}")
    parts.append("fib daddr type local")
    if not cfg.localhost_nodeports:
        parts.append(f"{fam.table_family} daddr != {fam.loopback}")
    return " ".join(parts)


def base_chains(cfg: AnyNodeConfig) -> dict[str, tuple[Chain, tuple[str, ...]]]:
    fam = family_of(cfg)
    ip, ip_key = fam.table_family, fam.ip_key
    mark = f"0x{cfg.masquerade_mark:x}"
    np = _nodeport_match(cfg)
    chains: list[tuple[Chain, tuple[str, ...]]] = [
        (Chain("services"), (f"{ip_key} vmap @service-ips", f"{np} {NP_KEY} vmap @service-nodeports")),
        (Chain("nat-prerouting", "nat", "prerouting", "-100"), ("jump services",)),
        (Chain("nat-output", "nat", "output", "-100"), ("jump services",)),
        (Chain("masquerading"), (
            f"ct status dnat {ip} saddr . {ip} daddr @hairpin masquerade",
            f"meta mark & {mark} == 0 return",
            f"meta mark set meta mark ^ {mark}",
            "masquerade fully-random",
        )),
        (Chain("nat-postrouting", "nat", "postrouting", "100"), ("jump masquerading",)),
        (Chain("firewall-check"), (
            f"{ip_key} @firewall-ips {ip_key} . {ip} saddr != @firewall-allow drop",)),
        # TCP gets a reset: ICMP errors are rate-limited per peer, so a burst of connects would see timeouts.
        (Chain(REJECT_CHAIN), ("meta l4proto tcp reject with tcp reset", fam.reject)),
        (Chain(DROP_EXTERNAL_CHAIN), (
            *([f"{local} return"] if (local := local_match(cfg)) else []),
            "fib saddr type local return",
            "drop",
        )),
        (Chain("endpoints-check"), (
            f"{ip_key} vmap @no-endpoint-services",
            f"{np} {NP_KEY} vmap @no-endpoint-nodeports",
        )),
        (Chain("filter-prerouting", "filter", "prerouting", "-110"),
         ("ct state new jump firewall-check", "ct state new jump endpoints-check")),
        (Chain("filter-output", "filter", "output", "-110"),
         ("ct state new jump firewall-check", "ct state new jump endpoints-check")),
    ]
    # iptables mode's KUBE-FORWARD, as far as a table of our own can go: the INVALID drop (unless conntrack is
    # liberal; kube-proxy's nftables mode removed it, kubernetes#122663, and relies on tcp_be_liberal instead).
    # Its accepts (and KUBE-NODEPORTS') are left out, as kube-proxy's nftables mode leaves them out (KEP-3866):
    # an accept ends only this table's base chain, so it cannot get a packet past a drop in another table
    # (iptables-nft's FORWARD policy DROP included); the host firewall has to allow service traffic itself.
    chains.append((Chain("filter-forward", "filter", "forward", "-110"),
                   () if cfg.conntrack_tcp_liberal else ("ct state invalid drop",)))
    if cfg.localhost_nodeports:
        # CVE-2020-8558: with route_localnet on, drop packets for 127/8 from elsewhere unless we DNATed them.
        chains.append((Chain("filter-input", "filter", "input", "0"), (
            "ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 ct state != { established, related } "
            "ct status & dnat == 0 drop",)))
    return {c.name: (c, rules) for c, rules in chains}


def affinity_chains(fam: Family = IPV4) -> dict[str, tuple[Chain, tuple[str, ...]]]:
    """Record the endpoint of each new connection to an affinity service, after DNAT (nat chains see only the
    first packet, and the DNAT decision is made at -100). ``ct original proto-dst`` needs the protocol fixed
    by the rule for nft 1.0.6 to type it, hence a pair of rules per protocol.

    The NodePort rule also records connections to a service address (of a service without affinity) whose port
    equals an affinity NodePort: nothing here can tell them apart after DNAT ("!= @service-ips" would bind the
    verdict map to a filter hook, and the kernel refuses its dnat chains there). Such entries are never looked
    up; the back end drops them when that service gains affinity."""
    ipk = f"ct original {fam.table_family} daddr . meta l4proto . ct original proto-dst"
    rules = [rule for proto in PROTOCOLS for rule in (
        f"meta l4proto {proto} {ipk} vmap @affinity-ips",
        f"meta l4proto {proto} meta l4proto . ct original proto-dst vmap @affinity-nodeports")]
    record = ("ct state new ct status dnat jump affinity-record",)
    chains = [
        (Chain("affinity-record"), tuple(rules)),
        (Chain("affinity-prerouting", "filter", "prerouting", "-90"), record),
        (Chain("affinity-output", "filter", "output", "-90"), record),
    ]
    return {c.name: (c, r) for c, r in chains}


def cluster_ips_chains(cfg: AnyNodeConfig) -> dict[str, tuple[Chain, tuple[str, ...]]]:
    """kube-proxy's cluster-ips-check, after DNAT (see "Hooks and priorities" above): a new connection still
    addressed to a ClusterIP went to a port no service has (reject: TCP reset, ICMP port unreachable); one to an
    address in the service CIDRs that no service has is dropped, as a ClusterIP not allocated yet (or any more)
    would be, rather than routed on (the node's default route would take it). Without service CIDRs only the
    reject is installed."""
    ip = family_of(cfg).table_family
    rules = [f"{ip} daddr @{CLUSTER_IPS_SET} goto {REJECT_CHAIN}"]
    if cfg.service_cidrs:
        rules.append(f"{ip} daddr {_cidrs(cfg.service_cidrs)} drop")
    check = (f"ct state new jump {CLUSTER_IPS_CHECK}",)
    chains = [
        (Chain(CLUSTER_IPS_CHECK), tuple(rules)),
        (Chain("cluster-ips-forward", "filter", "forward", "-90"), check),
        (Chain("cluster-ips-output", "filter", "output", "-90"), check),
    ]
    return {c.name: (c, r) for c, r in chains}


def record_chain_name(proto: str, timeout: int) -> str:
    return f"record-{proto}-t{timeout}"


def _parse(name: str) -> tuple[str, str, str, int, int, int | None]:
    """``<kind>-<proto>-<mode>-<n>[-<c>][-a<timeout>]`` -> kind, proto, mode, n, c, affinity timeout."""
    parts = name.split("-")
    timeout = None
    if parts[-1].startswith("a"):
        timeout = int(parts[-1][1:])
        parts = parts[:-1]
    c = int(parts[4]) if parts[2] == "l" else 0
    return parts[0], parts[1], parts[2], int(parts[3]), c, timeout


def dispatch_rules(name: str, cfg: AnyNodeConfig) -> tuple[str, ...]:
    """The rules of a dispatch chain follow from its name (see ``_parse``).

    Without affinity, ``numgen random mod n`` picks slot i of the service's n slots: equal shares. With ClientIP
    affinity a lookup of (client, service) in ``affinity-<proto>`` comes first and DNATs straight to the
    endpoint recorded there; without an entry it falls through to numgen (one lookup more, whatever n)."""
    kind, proto, mode, n, c, timeout = _parse(name)
    ip = family_of(cfg).table_family
    key = f"{ip} daddr . meta l4proto . th dport" if kind == "ip" else NP_KEY
    mark = f"meta mark set meta mark | 0x{cfg.masquerade_mark:x}"
    rules: list[str] = []

    def pick(cond: str, count: int, table: str) -> list[str]:
        prefix = f"{cond} " if cond else ""
        numgen = f"{prefix}dnat {ip} to {key} . numgen random mod {count} map @{kind}-{proto}-{table}"
        if timeout is None:
            return [numgen]
        return [f"{prefix}dnat {ip} to {ip} saddr . {ip} daddr . {proto} dport map @{affinity_map_name(proto)}",
                numgen]

    if mode == "c":
        if cfg.masquerade_all:
            rules.append(mark)
        elif not_local := local_match(cfg, negate=True):
            rules.append(f"{not_local} {mark}")
        rules += pick("", n, "backends")
    elif mode == "x":
        rules += [mark, *pick("", n, "backends")]
    else:  # "l": external traffic policy Local; pods and the node itself still reach every endpoint
        if c:
            if local := local_match(cfg):
                rules += pick(local, c, "cluster-backends")
            rules += [f"fib saddr type local {mark}", *pick("fib saddr type local", c, "cluster-backends")]
        if n:
            rules += pick("", n, "backends")
    return tuple(rules)


def record_chain(name: str, fam: Family = IPV4) -> tuple[Chain, tuple[str, ...]] | None:
    """The record chain the services of a dispatch chain with affinity use (shared by every dispatch chain of
    that protocol and timeout)."""
    _, proto, _, _, _, timeout = _parse(name)
    if timeout is None:
        return None
    ip = fam.table_family
    return Chain(record_chain_name(proto, timeout)), (
        # "meta l4proto" lets nft 1.0.6 type "ct original proto-dst".
        f"meta l4proto {proto} update @{affinity_map_name(proto)} {{ {ip} saddr . ct original {ip} daddr . "
        f"ct original proto-dst timeout {timeout}s : {ip} daddr . {proto} dport }}",)


# Which endpoints an affinity entry may point to: (protocol, service address or None for a NodePort, port).
StickyKey = tuple[str, str | None, int]


def sticky_key(entry_key: str, proto: str) -> tuple[StickyKey, StickyKey]:
    """The two service keys an ``affinity-<proto>`` entry ("client . address . port") may belong to: a
    service address, else a NodePort on a node address."""
    _, addr, port = entry_key.split(" . ")
    return (proto, addr, int(port)), (proto, None, int(port))


@dataclass(frozen=True)
class StickyDest:
    """An affinity destination of the IPv6 table (see "IPv6 affinity" above): its key in ``service-ips`` (or
    ``service-nodeports``), the dispatch chain that picks for new clients, the endpoints ("addr . port")."""

    key: str
    proto: str
    dispatch: str
    endpoints: tuple[str, ...]
    timeout: int

    @property
    def chain(self) -> str:
        return f"stick-{_digest(self.key)}"

    @property
    def record(self) -> str:
        return f"stkrec-{_digest(self.key)}"

    def set_name(self, endpoint: str) -> str:
        return sticky_set_name(self.key, endpoint)

    def sets(self, fam: Family) -> tuple[Set, ...]:
        return tuple(Set(self.set_name(e), f"typeof {fam.table_family} saddr", flags=("dynamic", "timeout"),
                         size=STICKY_SET_SIZE) for e in self.endpoints)

    def chains(self, fam: Family, cfg: AnyNodeConfig) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(chain, rules) of the lookup chain and the record chain."""
        ip = fam.table_family
        marks = tuple(r for r in dispatch_rules(self.dispatch, cfg) if "dnat " not in r)
        lookup, record = [], []
        for e in self.endpoints:
            addr, port = e.split(" . ")
            target = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            lookup.append(f"meta l4proto {self.proto} {ip} saddr @{self.set_name(e)} dnat {ip} to {target}")
            record.append(f"{ip} daddr {addr} {self.proto} dport {port} "
                          f"update @{self.set_name(e)} {{ {ip} saddr timeout {self.timeout}s }}")
        return (self.chain, (*marks, *lookup, f"goto {self.dispatch}")), (self.record, tuple(record))


STICKY_SET_SIZE = 65536
STICKY_SET_PREFIX = "sticky-"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def sticky_set_name(dest_key: str, endpoint: str) -> str:
    return f"{STICKY_SET_PREFIX}{_digest(f'{dest_key}|{endpoint}')}"


_PROTO = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.SCTP: "sctp"}


class _Walk:
    """Turns a service's port plans into the elements they need. Two stores share the walk, so they cannot
    disagree: ``Contribution`` (elements by key, what partial syncs diff) and ``ElementText`` (nft text, what
    a full sync sends)."""

    def __init__(self, fam: Family = IPV4) -> None:
        self.text_of = fam.text  # an address as nft lists it
        self.affinity_ok = fam.affinity
        self.sticky_dests: dict[str, StickyDest] = {}  # IPv6 affinity destinations by key (see StickyDest)
        self.hairpin: set[str] = set()  # kept apart from the elements: services share hairpin entries
        self.cluster_ips: set[str] = set()  # the same: ports share their service's, manifests may share them too
        self.chains: set[str] = set()  # the dispatch chains the elements jump to
        self.sticky: dict[StickyKey, set[str]] = {}  # affinity destinations -> their endpoints

    def _put(self, set_name: str, key: str, value: str | None) -> None:
        raise NotImplementedError

    def _slots(self, table: str, key: str, backends: tuple[Backend, ...]) -> None:
        raise NotImplementedError

    def dest(self, kind: str, proto: str, key: str, mode: str, backends: tuple[Backend, ...],
             cluster: tuple[Backend, ...], affinity: int | None, no_endpoints: str | None) -> None:
        n = len(backends)
        if n or (mode == "l" and cluster):
            name = f"{kind}-{proto}-l-{n}-{len(cluster)}" if mode == "l" else f"{kind}-{proto}-{mode}-{n}"
            if affinity is not None and not self.affinity_ok:  # IPv6: per-endpoint sets, see StickyDest
                dest = StickyDest(key, proto, name, tuple(sorted(
                    {f"{self.text_of(b.ip)} . {b.port}" for b in (*backends, *cluster)})), affinity)
                self.sticky_dests[key] = dest
                self._put("service-ips" if kind == "ip" else "service-nodeports", key, f"goto {dest.chain}")
                self._put("affinity-ips" if kind == "ip" else "affinity-nodeports", key, f"goto {dest.record}")
                affinity = None  # the dispatch chain only picks for new clients
            else:
                if affinity is not None:
                    name = f"{name}-a{affinity}"
                self._put("service-ips" if kind == "ip" else "service-nodeports", key, f"goto {name}")
            self.chains.add(name)
            if affinity is not None:
                self._put("affinity-ips" if kind == "ip" else "affinity-nodeports", key,
                          f"goto {record_chain_name(proto, affinity)}")
                parts = key.split(" . ")
                where: StickyKey = (proto, parts[0], int(parts[2])) if kind == "ip" else (proto, None, int(parts[1]))
                self.sticky.setdefault(where, set()).update(
                    f"{self.text_of(b.ip)} . {b.port}" for b in (*backends, *cluster))
            self._slots(f"{kind}-{proto}-backends", key, backends)
            if mode == "l":
                self._slots(f"{kind}-{proto}-cluster-backends", key, cluster)
        if no_endpoints is not None:
            self._put("no-endpoint-services" if kind == "ip" else "no-endpoint-nodeports", key, no_endpoints)

    def port(self, p: PortPlan) -> None:
        proto = _PROTO[p.protocol]
        affinity = p.affinity_timeout
        all_backends, local_backends = p.all_backends, p.local_backends
        internal = local_backends if p.internal_local else all_backends
        no_internal = None if internal else (f"goto {REJECT_CHAIN}" if not all_backends else "drop")
        text = self.text_of
        for ip in p.cluster_ips:
            addr = text(ip)
            self.cluster_ips.add(addr)
            self.dest("ip", proto, f"{addr} . {proto} . {p.port}", "c", internal, (), affinity, no_internal)
        for b in local_backends:  # hairpin only happens on the endpoint's own node
            self.hairpin.add(f"{text(b.ip)} . {text(b.ip)}")
        if p.node_port is None and not p.external_ips and not p.load_balancer_ips:
            return
        external = local_backends if p.external_local else all_backends
        if not all_backends:
            no_external: str | None = f"goto {REJECT_CHAIN}"
        elif not external:
            no_external = f"goto {DROP_EXTERNAL_CHAIN}"
        else:
            no_external = None
        mode = "l" if p.external_local else "x"
        cluster = all_backends if p.external_local else ()
        for ip in (*p.external_ips, *p.load_balancer_ips):
            self.dest("ip", proto, f"{ip!s} . {proto} . {p.port}", mode, external, cluster, affinity, no_external)
        if p.source_ranges:
            for ip in p.load_balancer_ips:
                key = f"{ip} . {proto} . {p.port}"
                self._put("firewall-ips", key, None)
                for net in p.source_ranges:
                    self._put("firewall-allow", f"{key} . {net}", None)
        if p.node_port is not None:
            self.dest("np", proto, f"{proto} . {p.node_port}", mode, external, cluster, affinity, no_external)


class Contribution(_Walk):
    """What one service adds to the table, by set and key (hairpin and dispatch chains apart)."""

    def __init__(self, fam: Family = IPV4) -> None:
        super().__init__(fam)
        self.elements: dict[str, dict[str, str | None]] = {}

    def _put(self, set_name: str, key: str, value: str | None) -> None:
        self.elements.setdefault(set_name, {})[key] = value

    def _slots(self, table: str, key: str, backends: tuple[Backend, ...]) -> None:
        m = self.elements.setdefault(table, {})
        for i, b in enumerate(backends):
            m[f"{key} . {i}"] = f"{self.text_of(b.ip)} . {b.port}"


class ElementText(_Walk):
    """The elements of many services as nft element text ("key" or "key : value") by set, for a full sync:
    one string per element and no per-element tuples or dicts (a 10k-service sync renders 110k of them).
    ``chains``, ``hairpin`` and ``cluster_ips`` are those of the service walked last (``start`` clears them);
    ``sticky`` is that of all services."""

    def __init__(self, fam: Family = IPV4) -> None:
        super().__init__(fam)
        self.text: dict[str, list[str]] = {}
        self.v4 = fam is IPV4

    def start(self) -> None:
        self.chains, self.hairpin, self.cluster_ips = set(), set(), set()

    def _put(self, set_name: str, key: str, value: str | None) -> None:
        self.text.setdefault(set_name, []).append(key if value is None else f"{key} : {value}")

    def _slots(self, table: str, key: str, backends: tuple[Backend, ...]) -> None:
        if not self.v4:
            self.text.setdefault(table, []).extend([f"{key} . {i} : {ip} . {port}"
                                                    for i, (ip, port, _) in enumerate(backends)])
            return
        # ipv4_text inlined: this line runs once per endpoint.
        self.text.setdefault(table, []).extend([
            f"{key} . {i} : {inet_ntoa(int(ip).to_bytes(4, 'big'))} . {port}"
            for i, (ip, port, _) in enumerate(backends)])


def contribution(ports: Sequence[PortPlan], fam: Family = IPV4) -> Contribution:
    c = Contribution(fam)
    for p in ports:
        c.port(p)
    return c

"""kube-proxy's iptables layout, rendered per service so that a partial sync rewrites only what changed.

nat:    PREROUTING/OUTPUT -> KUBE-SERVICES -> KUBE-SVC-* (cluster IP) | KUBE-EXT-* (external IP, LB IP) |
        KUBE-FW-* (LB IP with source ranges); last rule -> KUBE-NODEPORTS -> KUBE-EXT-*.
        KUBE-SVC-* / KUBE-SVL-* (local endpoints) pick a KUBE-SEP-* with statistic probabilities 1/n, 1/(n-1), ...
        (ClientIP affinity: xt_recent per endpoint first); KUBE-SEP-* marks hairpin traffic and DNATs.
        POSTROUTING -> KUBE-POSTROUTING masquerades what KUBE-MARK-MASQ marked. Cluster IP traffic that is not
        local (--detect-local-mode: "! -s <cluster or node CIDR>", "! -i <bridge>", "! -i <prefix>+") is marked;
        with several such CIDRs, via KUBE-MASQ-OFF-CLUSTER (ours: kube-proxy takes one).
filter: KUBE-SERVICES / KUBE-EXTERNAL-SERVICES reject services without endpoints and drop Local-policy traffic
        on nodes without local endpoints; KUBE-PROXY-FIREWALL drops LB traffic from outside the source ranges;
        KUBE-FIREWALL protects 127/8 when localhost NodePorts are on (CVE-2020-8558; IPv4 only). Then the accepts
        that let service traffic past a host firewall whose policy is DROP: KUBE-FORWARD (FORWARD: drop ct state INVALID
        unless nf_conntrack_tcp_be_liberal is set, accept the masquerade mark and RELATED,ESTABLISHED) and
        KUBE-NODEPORTS (INPUT: accept healthCheckNodePorts). Built-in chains run them after the drops above.

One rendering per IP family (``NodeConfig.ip_family``; ip6tables-restore takes the IPv6 one), as kube-proxy runs
one proxier per family. IPv6 differs in its addresses only: /128 hosts, endpoints "[addr]:port" (in SEP chain
names, comments and DNAT), the default ICMPv6 reject, the whole-address xt_recent mask, and no localhost NodePorts
(the NodePort jump excludes ::1; route_localnet is IPv4 only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import NamedTuple

from cnipy.proxy.iptables import names as n
from cnipy.proxy.model import IPNetwork
from cnipy.proxy.plan import AnyNodeConfig, Backend, PortPlan, ipv4_text

NAT_BASE = (n.KUBE_SERVICES, n.KUBE_NODEPORTS, n.KUBE_POSTROUTING, n.KUBE_MARK_MASQ, n.KUBE_PROXY_CANARY)
FILTER_BASE = (n.KUBE_SERVICES, n.KUBE_EXTERNAL_SERVICES, n.KUBE_PROXY_FIREWALL, n.KUBE_FIREWALL,
               n.KUBE_FORWARD, n.KUBE_NODEPORTS, n.KUBE_PROXY_CANARY)

# (table, built-in chain, rule args) jumps into our chains, kept in place by the proxier. Each missing one is
# inserted at the top of its chain, in this order, so in a built-in chain they run in reverse order: the
# filter accepts (KUBE-FORWARD, KUBE-NODEPORTS) after every filter drop or reject of ours.
JUMPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("nat", "PREROUTING", ("-m", "comment", "--comment", "kubernetes service portals", "-j", n.KUBE_SERVICES)),
    ("nat", "OUTPUT", ("-m", "comment", "--comment", "kubernetes service portals", "-j", n.KUBE_SERVICES)),
    ("nat", "POSTROUTING", ("-m", "comment", "--comment", "kubernetes postrouting rules", "-j",
                            n.KUBE_POSTROUTING)),
    ("filter", "FORWARD", ("-m", "comment", "--comment", "kubernetes forwarding rules", "-j", n.KUBE_FORWARD)),
    ("filter", "INPUT", ("-m", "comment", "--comment", "kubernetes health check service ports", "-j",
                         n.KUBE_NODEPORTS)),
    *((("filter", c, ("-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                      "kubernetes load balancer firewall", "-j", n.KUBE_PROXY_FIREWALL)))
      for c in ("INPUT", "FORWARD", "OUTPUT")),
    *((("filter", c, ("-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                      "kubernetes service portals", "-j", n.KUBE_SERVICES))) for c in ("FORWARD", "OUTPUT")),
    *((("filter", c, ("-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                      "kubernetes externally-visible service portals", "-j", n.KUBE_EXTERNAL_SERVICES)))
      for c in ("INPUT", "FORWARD")),
    *((("filter", c, ("-j", n.KUBE_FIREWALL))) for c in ("INPUT", "OUTPUT")),
)


class Family(NamedTuple):
    """What the rules of one IP family spell differently."""

    host: str  # the prefix length of one address: "-d 10.96.0.10/32", "-d fd00:96::10/128"
    recent_mask: str  # xt_recent --mask that keeps the whole source address (as iptables-save prints it)
    reject: str  # REJECT of non-TCP traffic, as iptables-save prints the default
    loopback: IPNetwork


FAMILIES = {4: Family("/32", "255.255.255.255", "REJECT", IPv4Network("127.0.0.0/8")),
            6: Family("/128", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                      "REJECT --reject-with icmp6-port-unreachable", IPv6Network("::1/128"))}


def _reject(proto: str, fam: Family = FAMILIES[4]) -> str:
    # TCP gets a reset: ICMP errors are rate-limited per peer, so a burst of connects would see timeouts.
    return "REJECT --reject-with tcp-reset" if proto == "tcp" else fam.reject


def _q(text: str) -> str:
    return f'"{text}"' if " " in text else text


@dataclass
class IptContribution:
    """One service's share: its own nat chains, and its lines in the shared chains."""

    chains: dict[str, list[str]] = field(default_factory=dict)  # nat KUBE-SVC/SVL/EXT/FW/SEP chains
    nat_services: list[str] = field(default_factory=list)
    nat_nodeports: list[str] = field(default_factory=list)
    filter_services: list[str] = field(default_factory=list)
    filter_external: list[str] = field(default_factory=list)
    filter_firewall: list[str] = field(default_factory=list)
    filter_nodeports: list[str] = field(default_factory=list)  # healthCheckNodePort accepts


def base_rules(cfg: AnyNodeConfig) -> dict[tuple[str, str], list[str]]:
    mark = f"0x{cfg.masquerade_mark:x}"
    fw: list[str] = []
    if cfg.localhost_nodeports:
        fw.append(f'-A {n.KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" '
                  "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
    # Forwarded service traffic gets past a FORWARD policy of DROP (docker hosts set one): the first packet by
    # the masquerade mark, the rest by conntrack. INVALID packets are dropped first (kube-proxy's fix for
    # connection resets, kubernetes#74839) unless the kernel is told to be liberal, as kube-proxy decides.
    forward = [] if cfg.conntrack_tcp_liberal else [f"-A {n.KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP"]
    forward += [
        f'-A {n.KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} '
        "-j ACCEPT",
        f'-A {n.KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    return {
        ("nat", n.KUBE_MARK_MASQ): [f"-A {n.KUBE_MARK_MASQ} -j MARK --or-mark {mark}"],
        ("nat", n.KUBE_POSTROUTING): [
            f"-A {n.KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A {n.KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
            f'-A {n.KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully",
        ],
        ("filter", n.KUBE_FIREWALL): fw,
        ("filter", n.KUBE_FORWARD): forward,
        **({("nat", n.KUBE_MASQ_OFF_CLUSTER): [
            *(f"-A {n.KUBE_MASQ_OFF_CLUSTER} -s {net} -j RETURN" for net in cfg.local_cidrs),
            f"-A {n.KUBE_MASQ_OFF_CLUSTER} -j {n.KUBE_MARK_MASQ}"]} if len(cfg.local_cidrs) > 1 else {}),
    }


def _interface(cfg: AnyNodeConfig) -> str | None:
    """``-i`` of local (pod) traffic told by interface (--detect-local-mode), "veth+" for a prefix; None when it is
    told by source address. Locally generated traffic has no incoming interface: never local this way."""
    if (iface := cfg.local_interface) is None:
        return None
    name, prefix = iface
    return f"-i {name}{'+' if prefix else ''}"


def nodeports_jumps(cfg: AnyNodeConfig) -> list[str]:
    comment = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    loopback = FAMILIES[cfg.ip_family].loopback  # IPv6: never localhost NodePorts (NodeConfig refuses them)
    not_lo = "" if cfg.localhost_nodeports else f" ! -d {loopback}"
    every_local = f"-A {n.KUBE_SERVICES} {comment} -m addrtype --dst-type LOCAL{not_lo} -j {n.KUBE_NODEPORTS}"
    if not cfg.node_port_addresses:
        return [every_local]
    rules: list[str] = []
    for net in cfg.node_port_addresses:
        if not net.overlaps(loopback):
            rules.append(f"-A {n.KUBE_SERVICES} {comment} -d {net} -j {n.KUBE_NODEPORTS}")
        elif net.subnet_of(loopback):  # type: ignore[arg-type]  # both of the config's family
            if cfg.localhost_nodeports:  # loopback NodePorts only when asked for (CVE-2020-8558)
                rules.append(f"-A {n.KUBE_SERVICES} {comment} -d {net} -j {n.KUBE_NODEPORTS}")
        elif every_local not in rules:  # a range wider than 127/8 (0.0.0.0/0): every local address
            rules.append(every_local)
    return rules


def _balance(c: IptContribution, chain: str, p: PortPlan, backends: tuple[Backend, ...], proto: str,
             head: list[str], fam: Family) -> None:
    """A KUBE-SVC/KUBE-SVL chain: optional head rules, affinity checks, then statistic probabilities."""
    name, count = p.name, len(backends)
    rules = list(head)
    host, mask = fam.host, fam.recent_mask
    if fam is FAMILIES[4]:
        ips = [(ipv4_text(b.ip), b.port) for b in backends]
        texts = ((ip, f"{ip}:{port}") for ip, port in ips)
    else:  # kube-proxy's endpoint string (net.JoinHostPort): "[addr]:port"
        texts = ((ip, f"[{ip}]:{port}") for ip, port in [(str(b.ip), b.port) for b in backends])
    seps = [(ip, text, n.sep_chain(name, proto, text)) for ip, text in texts]
    comment = _q(name)  # the per-endpoint strings below are most of a full sync's rendering: build them once
    if p.affinity_timeout is not None:
        for _, text, sep in seps:
            rules.append(f'-A {chain} -m comment --comment "{name} -> {text}" -m recent --name {sep} '
                         f"--mask {mask} --rsource --rcheck --seconds {p.affinity_timeout} --reap -j {sep}")
    for i, (ip, text, sep) in enumerate(seps):
        prob = "" if i == count - 1 else f" -m statistic --mode random --probability {1.0 / (count - i):.10f}"
        rules.append(f'-A {chain} -m comment --comment "{name} -> {text}"{prob} -j {sep}')
        if sep not in c.chains:
            recent = "" if p.affinity_timeout is None else \
                f" -m recent --name {sep} --mask {mask} --rsource --set"
            c.chains[sep] = [
                f"-A {sep} -m comment --comment {comment} -s {ip}{host} -j {n.KUBE_MARK_MASQ}",
                f"-A {sep} -m comment --comment {comment} -m {proto} -p {proto}{recent} -j DNAT "
                f"--to-destination {text}",
            ]
    c.chains[chain] = rules


def port_rules(c: IptContribution, p: PortPlan, cfg: AnyNodeConfig) -> None:
    name, proto = p.name, p.protocol.value.lower()
    fam = FAMILIES[cfg.ip_family]
    host = fam.host
    if p.health_check_node_port is not None:  # accepted whether or not this node has local endpoints
        c.filter_nodeports.append(f'-A {n.KUBE_NODEPORTS} -m comment --comment "{name} health check node port" '
                                  f"-m tcp -p tcp --dport {p.health_check_node_port} -j ACCEPT")
    svc, svl, ext, fw = n.service_chains(name, proto)
    match = f"-m {proto} -p {proto}"
    internal_chain = svl if p.internal_local else svc
    internal = p.internal_backends

    masq_head = []
    for ip in p.cluster_ips:
        dest = f'-m comment --comment "{name} cluster IP" {match} -d {ip}{host} --dport {p.port}'
        if internal:
            c.nat_services.append(f"-A {n.KUBE_SERVICES} {dest} -j {internal_chain}")
            if cfg.masquerade_all:
                masq_head.append(f"-A {internal_chain} {dest} -j {n.KUBE_MARK_MASQ}")
            elif len(cfg.local_cidrs) == 1:
                masq_head.append(f"-A {internal_chain} {dest} ! -s {cfg.local_cidrs[0]} -j {n.KUBE_MARK_MASQ}")
            elif cfg.local_cidrs:  # "from none of them" takes a chain: one "! -s" rule per CIDR marks all
                masq_head.append(f"-A {internal_chain} {dest} -j {n.KUBE_MASQ_OFF_CLUSTER}")
            elif iface := _interface(cfg):
                masq_head.append(f"-A {internal_chain} {dest} ! {iface} -j {n.KUBE_MARK_MASQ}")
        elif not p.all_backends:
            c.filter_services.append(f'-A {n.KUBE_SERVICES} -m comment --comment "{name} has no endpoints" '
                                     f"{match} -d {ip}{host} --dport {p.port} -j {_reject(proto, fam)}")
        else:
            c.filter_services.append(f'-A {n.KUBE_SERVICES} -m comment --comment "{name} has no local endpoints" '
                                     f"{match} -d {ip}{host} --dport {p.port} -j DROP")

    # KUBE-SVC serves cluster-policy internal traffic and every external path (Local policy short-circuits
    # pods and the node itself to all endpoints).
    uses_svc = bool(p.all_backends) and (not p.internal_local or p.has_external)
    uses_svl = bool(p.local_backends) and (p.internal_local or (p.has_external and p.external_local))
    if uses_svc:
        _balance(c, svc, p, p.all_backends, proto, masq_head if internal_chain == svc else [], fam)
    if uses_svl:
        _balance(c, svl, p, p.local_backends, proto, masq_head if internal_chain == svl else [], fam)

    if not p.has_external:
        return
    if not p.all_backends:
        verdict, why = _reject(proto, fam), "has no endpoints"
    elif not p.external_backends:
        verdict, why = "DROP", "has no local endpoints"
    else:
        verdict = why = ""
    if p.all_backends:
        if p.external_local:
            rules = [f'-A {ext} -m comment --comment "pod traffic for {name} external destinations" '
                     f"-s {net} -j {svc}" for net in cfg.local_cidrs]
            if iface := _interface(cfg):
                rules.append(f'-A {ext} -m comment --comment "pod traffic for {name} external destinations" '
                             f"{iface} -j {svc}")
            rules += [
                f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {name} external destinations" '
                f"-m addrtype --src-type LOCAL -j {n.KUBE_MARK_MASQ}",
                f'-A {ext} -m comment --comment "route LOCAL traffic for {name} external destinations" '
                f"-m addrtype --src-type LOCAL -j {svc}",
            ]
            if p.local_backends:
                rules.append(f"-A {ext} -j {svl}")
        else:
            rules = [f'-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" '
                     f"-j {n.KUBE_MARK_MASQ}", f"-A {ext} -j {svc}"]
        c.chains[ext] = rules
    for kind, ips in (("external IP", p.external_ips), ("loadbalancer IP", p.load_balancer_ips)):
        for ip in ips:
            dest = f"{match} -d {ip}{host} --dport {p.port}"
            if p.all_backends:
                target = fw if kind == "loadbalancer IP" and p.source_ranges else ext
                c.nat_services.append(f'-A {n.KUBE_SERVICES} -m comment --comment "{name} {kind}" {dest} -j {target}')
            if verdict:
                c.filter_external.append(f'-A {n.KUBE_EXTERNAL_SERVICES} -m comment --comment "{name} {why}" '
                                         f"{dest} -j {verdict}")
    if p.source_ranges and p.load_balancer_ips:
        if p.all_backends:
            c.chains[fw] = [f'-A {fw} -m comment --comment "{name} loadbalancer IP" -s {net} -j {ext}'
                            for net in p.source_ranges] + [
                f'-A {fw} -m comment --comment "other traffic to {name} loadbalancer IP will be dropped by '
                f'{n.KUBE_PROXY_FIREWALL}"']
        for ip in p.load_balancer_ips:
            c.filter_firewall.append(
                f'-A {n.KUBE_PROXY_FIREWALL} -m comment --comment "{name} traffic not accepted by {fw}" '
                f"{match} -d {ip}{host} --dport {p.port} -j DROP")
    if p.node_port is not None:
        if p.all_backends:
            c.nat_nodeports.append(f"-A {n.KUBE_NODEPORTS} -m comment --comment {_q(name)} {match} "
                                   f"--dport {p.node_port} -j {ext}")
        if verdict:
            c.filter_external.append(f'-A {n.KUBE_EXTERNAL_SERVICES} -m comment --comment "{name} {why}" '
                                     f"-m addrtype --dst-type LOCAL {match} --dport {p.node_port} -j {verdict}")


def contribution(ports: tuple[PortPlan, ...], cfg: AnyNodeConfig) -> IptContribution:
    c = IptContribution()
    for p in ports:
        port_rules(c, p, cfg)
    return c

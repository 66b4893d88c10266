"""``cnipy proxy``: the click command that assembles the daemon from its parts.

IP families: those of the --cluster-cidr values (IPv4, IPv6 or both), else --ip-family, else IPv4. A dual-stack
proxy runs one proxier per family (``dualstack.MetaProxier``) behind one daemon: for IPv6 the table ``ip6 cnipy``
(--mode nftables) or ip6tables (--mode iptables).
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import click

from cnipy.proxy.daemon import ManifestPoller, ProxyDaemon, Source, Timing
from cnipy.proxy.errors import ProxyError
from cnipy.proxy.health import HealthCheckServers, StatusServer
from cnipy.proxy.model import IPAddress, IPNetwork
from cnipy.proxy.plan import DETECT_LOCAL_MODES, AnyNodeConfig, NodeConfig, interface_name_problem
from cnipy.proxy.sync import Proxier

ALL_FAMILIES = (4, 6)  # both modes serve both; --cleanup removes the rules of both


def make_proxier(mode: str, config: AnyNodeConfig | Sequence[AnyNodeConfig], iptables_backend: str = "nft") -> Proxier:
    """The proxier of one NodeConfig, or a MetaProxier over one per IP family."""
    configs = (config,) if isinstance(config, NodeConfig) else tuple(config)
    if len(configs) > 1:
        from cnipy.proxy.dualstack import MetaProxier
        return MetaProxier({c.ip_family: make_proxier(mode, c, iptables_backend) for c in configs})
    (one,) = configs
    if mode == "nftables":
        from cnipy.proxy.nftables.backend import NftablesProxier
        from cnipy.proxy.nftables.render import family_of
        from cnipy.proxy.nftables.runner import Nft
        return NftablesProxier(Nft(family_of(one).table_family), one)
    from cnipy.proxy.iptables.backend import IptablesProxier
    from cnipy.proxy.iptables.runner import Iptables
    return IptablesProxier(Iptables(iptables_backend, family=one.ip_family), one)


def _conntrack(gone: Iterable[IPAddress], fresh: Iterable[tuple[IPAddress, int]],
               node_ports: Iterable[int]) -> int:
    from cnipy.netlink.conntrack import delete_udp_flows
    return delete_udp_flows(reply_sources=gone, destinations=fresh, destination_ports=node_ports)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)


def _cidrs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    out = []
    for v in values:
        try:
            net = ip_network(v)
        except ValueError as exc:
            raise click.BadParameter(f"{v!r} is not a CIDR: {exc}") from None
        out.append(net)
    return tuple(out)


def _interface(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := interface_name_problem(value)):
        raise click.BadParameter(f"{value!r} {problem}")
    return value


# --detect-local-mode: the option each mode needs (and only it takes).
_LOCAL_OPTIONS = {"NodeCIDR": "pod_cidr", "BridgeInterface": "pod_bridge_interface",
                  "InterfaceNamePrefix": "pod_interface_name_prefix"}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_detect_local(opts: dict[str, Any], fams: Sequence[int]) -> None:
    """UsageError unless --detect-local-mode has its option, and no other: NodeCIDR one --pod-cidr of each family
    served, BridgeInterface --pod-bridge-interface, InterfaceNamePrefix --pod-interface-name-prefix."""
    mode = opts["detect_local_mode"]
    needed = _LOCAL_OPTIONS.get(mode)
    for name in _LOCAL_OPTIONS.values():
        if opts[name] and name != needed:
            raise click.UsageError(f"{_option(name)} goes with --detect-local-mode "
                                   f"{next(m for m, o in _LOCAL_OPTIONS.items() if o == name)}, not {mode}")
    if needed is not None and not opts[needed]:
        raise click.UsageError(f"--detect-local-mode {mode} needs {_option(needed)}")
    if mode == "NodeCIDR":
        nets = opts["pod_cidr"]
        _served_only("--pod-cidr", nets, fams)
        for f in fams:
            if (count := sum(n.version == f for n in nets)) != 1:
                raise click.UsageError(f"--detect-local-mode NodeCIDR needs one --pod-cidr of each family served: "
                                       f"{count} of IPv{f}")


_IP_FAMILIES: dict[str, tuple[int, ...]] = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}


def _served_only(option: str, nets: Sequence[IPNetwork], fams: Sequence[int]) -> None:
    if stray := [str(n) for n in nets if n.version not in fams]:
        raise click.UsageError(f"{option} {', '.join(stray)}: this proxy serves "
                               f"{' and '.join(f'IPv{f}' for f in fams)} only (see --cluster-cidr, --ip-family)")


def families(ip_family: str | None, cluster_cidrs: Sequence[IPNetwork], nodeport_addresses: Sequence[IPNetwork],
             service_cidrs: Sequence[IPNetwork] = ()) -> tuple[int, ...]:
    """The IP families to serve: those of the cluster CIDRs, else --ip-family's, else IPv4 (UsageError when the
    options disagree)."""
    of_cidrs: tuple[int, ...] = tuple(sorted({n.version for n in cluster_cidrs}))
    if ip_family is None:
        fams = of_cidrs or (4,)
    else:
        fams = _IP_FAMILIES[ip_family]
        if stray := [str(n) for n in cluster_cidrs if n.version not in fams]:
            raise click.UsageError(f"--cluster-cidr {', '.join(stray)} is not of --ip-family {ip_family}")
    _served_only("--nodeport-address", nodeport_addresses, fams)
    _served_only("--service-cidr", service_cidrs, fams)
    return fams


def _address(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    try:
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected HOST:PORT with a port of 0-65535")
        if host:
            ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None
    return _hostport(value)


_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _node_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _NODE_NAME.match(value):
        raise click.BadParameter(f"{value!r} is not a Kubernetes node name (a DNS subdomain: lower-case "
                                 "letters, digits, '-' and '.', at most 253 characters)")
    return value


_PERIOD = click.FloatRange(min=0.0, min_open=True)


def _route_localnet() -> None:
    # Localhost NodePorts need the kernel to route 127/8 off the loopback device (CVE-2020-8558 is why
    # the nftables/iptables rules then drop 127/8 traffic that we did not DNAT).
    Path("/proc/sys/net/ipv4/conf/all/route_localnet").write_text("1\n")


def _conntrack_tcp_liberal() -> bool:
    # As kube-proxy: a liberal TCP conntrack marks only out-of-window RSTs INVALID, so INVALID is not dropped.
    try:
        return Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal").read_text().strip() not in ("", "0")
    except OSError:
        return False


@click.command("proxy")
@click.option("--mode", type=click.Choice(["nftables", "iptables"]), default="nftables", show_default=True,
              help="Rule back end.")
@click.option("--manifests", multiple=True, type=click.Path(exists=True),
              help="File or directory of Service/EndpointSlice/Pod manifests (repeatable); watched for changes.")
@click.option("--kubeconfig", type=click.Path(exists=True), help="Watch a Kubernetes API server instead.")
@click.option("--in-cluster", is_flag=True, help="Use the pod's service account to reach the API server.")
@click.option("--etcd", "etcd_url", help="Watch Services/EndpointSlices kept in etcd (http://host:port).")
@click.option("--etcd-prefix", default="/cnipy.io/proxy", show_default=True,
              help="Keys: <prefix>/services/<ns>/<name>, <prefix>/endpointslices/<ns>/<name> (JSON objects).")
@click.option("--node-name", default=lambda: socket.gethostname().lower(), show_default="hostname",
              callback=_node_name,
              help="This node's name: endpoints with this nodeName are local.")
@click.option("--zone", default=None, help="This node's topology zone: use EndpointSlice zone hints.")
@click.option("--cluster-cidr", multiple=True, callback=_cidrs,
              help="Pod CIDR(s), IPv4 and/or IPv6: traffic from elsewhere to a ClusterIP is masqueraded. Their "
              "families are the families served (both: dual-stack, one proxier per family).")
@click.option("--ip-family", type=click.Choice(sorted(_IP_FAMILIES)), default=None,
              help="Families to serve when no --cluster-cidr says it  [default: ipv4].")
@click.option("--service-cidr", multiple=True, callback=_cidrs,
              help="CIDR(s) ClusterIPs are allocated from, of the families served (repeatable). --mode nftables "
              "drops new connections to an address in them that no service has, rather than routing them on "
              "(a ClusterIP on a port it lacks is rejected with or without this). --mode iptables ignores it, "
              "as kube-proxy's iptables mode has no such check.")
@click.option("--masquerade-all", is_flag=True, help="Masquerade all service traffic.")
@click.option("--detect-local-mode", type=click.Choice(DETECT_LOCAL_MODES), default="ClusterCIDR",
              show_default=True,
              help="How pod (local) traffic is told from the rest: its source in --cluster-cidr (ClusterCIDR) or "
              "--pod-cidr (NodeCIDR), or its incoming interface: --pod-bridge-interface (BridgeInterface) or a "
              "name starting with --pod-interface-name-prefix (InterfaceNamePrefix). Other traffic to a ClusterIP "
              "is masqueraded; local traffic reaches every endpoint of an externalTrafficPolicy Local service.")
@click.option("--pod-cidr", multiple=True, callback=_cidrs,
              help="This node's pod CIDR (its podCIDRs: one per family served), for --detect-local-mode NodeCIDR.")
@click.option("--pod-bridge-interface", callback=_interface,
              help="The bridge this node's pods hang off, for --detect-local-mode BridgeInterface.")
@click.option("--pod-interface-name-prefix", callback=_interface,
              help="The name prefix of this node's pod interfaces (e.g. veth), for --detect-local-mode "
              "InterfaceNamePrefix.")
@click.option("--nodeport-address", multiple=True, callback=_cidrs,
              help="CIDR(s) of local addresses that serve NodePorts (default: every local address; a family "
              "none of them is of: every local address of that family).")
@click.option("--localhost-nodeports", is_flag=True, help="Serve NodePorts on 127.0.0.1 too (sets "
              "route_localnet and adds the CVE-2020-8558 protection). IPv4 only: IPv6 has no localhost NodePorts.")
@click.option("--iptables-backend", type=click.Choice(["nft", "legacy"]), default="nft", show_default=True,
              help="With --mode iptables: iptables-nft or iptables-legacy.")
@click.option("--min-sync-period", type=_PERIOD, default=1.0, show_default=True,
              help="Seconds between syncs at least; changes arriving meanwhile are applied together.")
@click.option("--full-sync-period", type=_PERIOD, default=3600.0, show_default=True,
              help="Seconds between full resyncs (rewrite everything we own, atomically).")
@click.option("--repair-period", type=_PERIOD, default=10.0, show_default=True,
              help="How often to check that our rules are still there.")
@click.option("--retry-period", type=_PERIOD, default=5.0, show_default=True,
              help="Seconds before retrying a failed apply (the previous rules stay in force meanwhile).")
@click.option("--poll-period", type=_PERIOD, default=0.2, show_default=True, help="How often to look for changes.")
@click.option("--healthz-address", default="0.0.0.0:10256", show_default=True, callback=_address,
              help="/healthz (and /metrics).")
@click.option("--metrics-address", default="127.0.0.1:10249", show_default=True, callback=_address,
              help="/metrics (and /healthz).")
@click.option("--once", is_flag=True, help="Sync once and exit (status 1 if it failed).")
@click.option("--cleanup", is_flag=True, help="Remove everything this proxy installed and exit.")
@click.option("-v", "--verbose", is_flag=True)
def proxy_command(**opts: Any) -> None:
    """The service proxy: Services -> nftables or iptables rules, kept in step with the manifests or API.

    \b
    Example:
        cnipy proxy --mode nftables --manifests /etc/cnipy/services --node-name n1 --cluster-cidr 10.244.0.0/16
    """
    logging.basicConfig(level=logging.DEBUG if opts["verbose"] else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _run(opts)
    except (ProxyError, OSError) as exc:  # a clear message and status 1, never a traceback
        raise click.ClickException(str(exc)) from None


def _tools(opts: dict[str, Any], fams: Sequence[int]) -> list[str]:
    if opts["mode"] == "nftables":
        return ["nft"]
    suffix = "legacy" if opts["iptables_backend"] == "legacy" else "nft"
    return [f"{'ip6' if f == 6 else 'ip'}tables-{suffix}-restore" for f in fams]


def _config(opts: dict[str, Any], family: int) -> AnyNodeConfig:
    """The NodeConfig of one family: the CIDRs of that family, localhost NodePorts for IPv4 only."""
    common: dict[str, Any] = {
        "node_name": opts["node_name"], "masquerade_all": opts["masquerade_all"],
        "conntrack_tcp_liberal": _conntrack_tcp_liberal(), "zone": opts["zone"], "ip_family": family,
        "detect_local": opts["detect_local_mode"],
        "node_cidrs": tuple(n for n in opts["pod_cidr"] if n.version == family),
        "pod_interface": opts["pod_bridge_interface"] or opts["pod_interface_name_prefix"] or ""}
    cidrs, nodeports = opts["cluster_cidr"], opts["nodeport_address"]
    if family == 4:
        return NodeConfig(cluster_cidrs=tuple(n for n in cidrs if isinstance(n, IPv4Network)),
                          node_port_addresses=tuple(n for n in nodeports if isinstance(n, IPv4Network)),
                          service_cidrs=tuple(n for n in opts["service_cidr"] if isinstance(n, IPv4Network)),
                          localhost_nodeports=opts["localhost_nodeports"], **common)
    return NodeConfig(cluster_cidrs=tuple(n for n in cidrs if isinstance(n, IPv6Network)),
                      node_port_addresses=tuple(n for n in nodeports if isinstance(n, IPv6Network)),
                      service_cidrs=tuple(n for n in opts["service_cidr"] if isinstance(n, IPv6Network)), **common)


def _run(opts: dict[str, Any]) -> None:
    fams = families(opts["ip_family"], opts["cluster_cidr"], opts["nodeport_address"], opts["service_cidr"])
    check_detect_local(opts, fams)
    if opts["localhost_nodeports"] and 4 not in fams:
        raise click.UsageError("--localhost-nodeports is IPv4 only (kube-proxy has no localhost NodePorts "
                               "for IPv6) and this proxy serves IPv6 only")
    for tool in _tools(opts, ALL_FAMILIES if opts["cleanup"] else fams):
        if shutil.which(tool) is None:
            raise click.ClickException(f"{tool} is not installed (needed by --mode {opts['mode']})")
    if opts["cleanup"]:  # every family this mode has tables for, whatever the options say
        make_proxier(opts["mode"], [NodeConfig(opts["node_name"], ip_family=f) for f in ALL_FAMILIES],
                     opts["iptables_backend"]).cleanup()
        return
    if opts["localhost_nodeports"] and 6 in fams:
        logging.getLogger("cnipy.proxy").info("--localhost-nodeports applies to IPv4 only (IPv6 has none)")
    configs = [_config(opts, f) for f in fams]
    proxier = make_proxier(opts["mode"], configs, opts["iptables_backend"])
    source: Source
    if opts["manifests"]:
        source = ManifestPoller(opts["manifests"])
    elif opts["etcd_url"]:
        from cnipy.overlay.etcd import Client
        from cnipy.proxy.etcdsource import EtcdSource
        source = EtcdSource(Client(opts["etcd_url"]), opts["etcd_prefix"])
    elif opts["kubeconfig"] or opts["in_cluster"]:
        from cnipy.proxy.kubeapi import KubeSource, load_kubeconfig
        source = KubeSource(load_kubeconfig(opts["kubeconfig"], in_cluster=opts["in_cluster"]))
    else:
        raise click.UsageError("give --manifests, --kubeconfig, --in-cluster or --etcd")
    if opts["localhost_nodeports"]:
        _route_localnet()
    hc = HealthCheckServers("::" if 6 in fams else "0.0.0.0")  # "::" takes IPv4 connections too
    timing = Timing(opts["min_sync_period"], opts["full_sync_period"], opts["repair_period"],
                    opts["retry_period"], opts["poll_period"])
    daemon = ProxyDaemon(source, proxier, configs, timing=timing, conntrack=_conntrack, healthchecks=hc.update)
    if opts["once"]:
        daemon.step()
        hc.close()
        sys.exit(0 if daemon.healthz()[0] else 1)
    servers = []
    for host, port in dict.fromkeys([opts["healthz_address"], opts["metrics_address"]]):
        server = StatusServer(host, port, daemon.healthz, daemon.metrics.render)
        logging.getLogger("cnipy.proxy").info("serving /healthz and /metrics on %s:%d", host, server.port)
        servers.append(server)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop())
    try:
        daemon.run()
    finally:
        for s in servers:
            s.close()
        hc.close()
        stop = getattr(source, "stop", None)
        if callable(stop):
            stop()

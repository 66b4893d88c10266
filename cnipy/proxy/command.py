"""``cnipy proxy``: the click command that assembles the daemon from its parts."""

from __future__ import annotations

import logging
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import click

from cnipy.proxy.daemon import ManifestPoller, ProxyDaemon, Source, Timing
from cnipy.proxy.errors import ProxyError
from cnipy.proxy.health import HealthCheckServers, StatusServer
from cnipy.proxy.plan import NodeConfig
from cnipy.proxy.sync import Proxier


def make_proxier(mode: str, config: NodeConfig, iptables_backend: str = "nft") -> Proxier:
    if mode == "nftables":
        from cnipy.proxy.nftables.backend import NftablesProxier
        from cnipy.proxy.nftables.runner import Nft
        return NftablesProxier(Nft(), config)
    from cnipy.proxy.iptables.backend import IptablesProxier
    from cnipy.proxy.iptables.runner import Iptables
    return IptablesProxier(Iptables(iptables_backend), config)


def _conntrack(gone: Iterable[IPv4Address], fresh: Iterable[tuple[IPv4Address, int]],
               node_ports: Iterable[int]) -> int:
    from cnipy.netlink.conntrack import delete_udp_flows
    return delete_udp_flows(reply_sources=gone, destinations=fresh, destination_ports=node_ports)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)


def _cidrs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[IPv4Network, ...]:
    out = []
    for v in values:
        try:
            net = ip_network(v)
        except ValueError as exc:
            raise click.BadParameter(f"{v!r} is not a CIDR: {exc}") from None
        if not isinstance(net, IPv4Network):
            raise click.BadParameter(f"{v}: IPv6 is not supported yet (the proxy serves IPv4 services only)")
        out.append(net)
    return tuple(out)


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
              help="Pod CIDR(s); traffic from elsewhere to a ClusterIP is masqueraded.")
@click.option("--masquerade-all", is_flag=True, help="Masquerade all service traffic.")
@click.option("--nodeport-address", multiple=True, callback=_cidrs,
              help="CIDR(s) of local addresses that serve NodePorts (default: every local address).")
@click.option("--localhost-nodeports", is_flag=True, help="Serve NodePorts on 127.0.0.1 too (sets "
              "route_localnet and adds the CVE-2020-8558 protection).")
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


def _tool(opts: dict[str, Any]) -> str:
    if opts["mode"] == "nftables":
        return "nft"
    return "iptables-legacy-restore" if opts["iptables_backend"] == "legacy" else "iptables-nft-restore"


def _run(opts: dict[str, Any]) -> None:
    tool = _tool(opts)
    if shutil.which(tool) is None:
        raise click.ClickException(f"{tool} is not installed (needed by --mode {opts['mode']})")
    config = NodeConfig(
        node_name=opts["node_name"],
        cluster_cidrs=opts["cluster_cidr"],
        masquerade_all=opts["masquerade_all"],
        node_port_addresses=opts["nodeport_address"],
        localhost_nodeports=opts["localhost_nodeports"],
        conntrack_tcp_liberal=_conntrack_tcp_liberal(),
        zone=opts["zone"],
    )
    proxier = make_proxier(opts["mode"], config, opts["iptables_backend"])
    if opts["cleanup"]:
        proxier.cleanup()
        return
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
    if config.localhost_nodeports:
        _route_localnet()
    hc = HealthCheckServers()
    timing = Timing(opts["min_sync_period"], opts["full_sync_period"], opts["repair_period"],
                    opts["retry_period"], opts["poll_period"])
    daemon = ProxyDaemon(source, proxier, config, timing=timing, conntrack=_conntrack, healthchecks=hc.update)
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

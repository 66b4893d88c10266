"""`cnipy agent`: the overlay node agent (see cnipy/overlay/agent.py)."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
from pathlib import Path
from typing import Any

import click


@click.command("agent")
@click.option("--node", default=socket.gethostname(), show_default=True, help="This node's name (lease owner).")
@click.option("--etcd", "etcd", metavar="URL", help="etcd endpoint, e.g. http://10.0.0.1:2379. Without it: "
              "static mode, leases in --static-store (one machine).")
@click.option("--network-config", type=click.Path(dir_okay=False, path_type=Path),
              help="Network config JSON (flannel net-conf format). Static mode: used instead of the embedded "
                   "default. etcd mode: stored under <prefix>/config if etcd has none.")
@click.option("--static-store", type=click.Path(dir_okay=False, path_type=Path),
              default="/var/lib/cnipy/overlay-leases.json", show_default=True)
@click.option("--prefix", default="/cnipy.io/network", show_default=True, help="etcd key prefix.")
@click.option("--public-ip", help="Underlay address to publish (default: the default route's interface).")
@click.option("--subnet-file", type=click.Path(dir_okay=False, path_type=Path),
              default="/run/cnipy/subnet.env", show_default=True)
@click.option("--lease-ttl", type=click.IntRange(min=2), default=24 * 3600, show_default=True,
              help="Seconds a lease outlives its node's last keep-alive.")
@click.option("--resync", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds between full reconciles (netlink events trigger one at once).")
@click.option("--listen", default="127.0.0.1:9867", show_default=True,
              help="Address for /healthz and /metrics ('' to disable).")
@click.option("--release-on-exit", is_flag=True,
              help="On SIGTERM give the subnet back and delete the device (node removal).")
@click.option("--no-masquerade-rules", is_flag=True, help="Never install the masquerade chain.")
@click.option("--remove-node", is_flag=True,
              help="Do not run: delete the leases of --node from the store (the node was removed while its "
                   "agent was not running) and exit.")
@click.option("-v", "--verbose", is_flag=True)
def agent_command(node: str, etcd: str | None, network_config: Path | None, static_store: Path, prefix: str,
                  public_ip: str | None, subnet_file: Path, lease_ttl: int, resync: float, listen: str,
                  release_on_exit: bool, no_masquerade_rules: bool, remove_node: bool, verbose: bool) -> None:
    """Run the overlay node agent: lease a pod subnet, write the subnet file for cnipy-overlay, program routes,
    neighbours and FDB entries for every peer (vxlan or host-gw), and repair them when removed."""
    from cnipy.overlay.agent import Agent, AgentOptions

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ip = ipaddress.ip_address(public_ip) if public_ip else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-ip") from exc
    opts = AgentOptions(node=node, etcd=etcd, static_store=static_store, network_config=network_config,
                        prefix=prefix, public_ip=ip, subnet_file=subnet_file, lease_ttl=lease_ttl, resync=resync,
                        listen=listen or None, release_on_exit=release_on_exit,
                        masquerade_rules=not no_masquerade_rules)
    if remove_node:
        from cnipy.overlay.agent import make_store
        from cnipy.overlay.leases import LeaseError

        try:
            gone = make_store(opts)[1].release_node(node)
        except LeaseError as exc:
            raise click.ClickException(f"removing node {node}: {exc}") from exc
        click.echo(f"node {node}: released {', '.join(map(str, gone)) or 'nothing (no lease)'}")
        return
    agent = Agent(opts)

    def on_signal(signum: int, frame: Any) -> None:
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    agent.wait()
    agent.stop()

"""`cnipy`: the top-level click group. Subcommands load lazily so that `cnipy --help` stays fast.

A subsystem adds its command by adding one line to `COMMANDS`: name -> "module:attribute" of a click command.
"""

from __future__ import annotations

import importlib

import click

COMMANDS: dict[str, tuple[str, str]] = {
    "lab": ("cnipy.cli.lab:lab", "A multi-node cluster in network namespaces: up, status, check, down, demo."),
    "agent": ("cnipy.cli.agent:agent_command",
              "Overlay node agent: subnet lease (etcd or static file), vxlan/host-gw routes, subnet file."),
    "cni-daemon": ("cnipy.cli.cni:cni_daemon",
                   "Node daemon serving CNI calls from the plugin executables (keeps the plugins warm)."),
    "proxy": ("cnipy.cli.proxy:proxy", "Service proxy (kube-proxy replacement): Services into nftables or iptables."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = COMMANDS[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise click.ClickException(f"{module_name}.{attr} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists the short texts from COMMANDS without importing the subsystems.
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in sorted(self.commands.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnipy")
def cli() -> None:
    """cnipy: a networking data-plane toolkit for container hosts (CNI plugins, node agent, service proxy,
    packet trace, and a multi-node lab in network namespaces)."""

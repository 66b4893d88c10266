"""`cnipy cni-daemon`: the node daemon that serves CNI calls forwarded by the plugin fronts."""

from __future__ import annotations

import click


@click.command("cni-daemon", context_settings={"ignore_unknown_options": True, "help_option_names": []},
               add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cni_daemon(args: tuple[str, ...]) -> None:
    """Serve CNI calls on a unix socket (options: see `cnipy cni-daemon --help`)."""
    from cnipy.cni.daemon import main

    raise SystemExit(main(list(args)))

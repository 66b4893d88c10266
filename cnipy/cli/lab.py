"""`cnipy lab ...`: bring a multi-node lab up, look at it, check it, tear it down; and the demo."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from cnipy.lab import backend as backends
from cnipy.lab.errors import LabError, ServicesNotReady
from cnipy.lab.model import PLUGIN_SETS, SERVICE_MODES, STATE_ROOT, LabSpec

DEFAULT_NAME = "cnipy"  # every lab command defaults to it, so `cnipy lab down` removes a kept demo
DEMO_NODES = 3
DEMO_PODS = 3
DEFAULT_SERVICES = "nftables"

services_option = click.option(
    "--services", type=click.Choice(SERVICE_MODES), default=DEFAULT_SERVICES, show_default=True,
    help="Demo Services (ClusterIP, NodePort, externalTrafficPolicy Local) over the pods, served by a "
         "`cnipy proxy` in this mode on every node; none: no Services.")

name_option = click.option("--name", default=DEFAULT_NAME, envvar="CNIPY_LAB", show_default=True,
                           help="Lab name (lower-case letters and digits); its namespaces are <name>-*.")
root_option = click.option("--state-root", type=click.Path(path_type=Path), default=STATE_ROOT,
                           envvar="CNIPY_LAB_STATE_ROOT", show_default=True, help="Where labs keep their state.")


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab creates network namespaces: run it as root")


def _fail(exc: LabError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def lab() -> None:
    """A multi-node cluster in network namespaces: nodes, an underlay, pods attached through CNI."""


@lab.command()
@name_option
@click.option("--nodes", default=3, show_default=True, help="Number of nodes.")
@click.option("--pods", "pods", default=2, show_default=True, help="Pods per node.")
@click.option("--segments", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: one L2 underlay; 2: two L2 segments joined by a router (cross-subnet paths).")
@click.option("--backend", default=backends.DEFAULT_BACKEND, show_default=True,
              help=f"Cross-node back end: {', '.join(sorted(backends.BACKENDS))}.")
@click.option("--plugins", type=click.Choice(sorted(PLUGIN_SETS)), default="cnipy", show_default=True,
              help="CNI plugins to attach pods with: cnipy's own, or the reference (Go) plugins.")
@click.option("--cni-daemon/--no-cni-daemon", default=True, show_default=True,
              help="Run cnipy's CNI daemon in every node, as a real node does (faster calls).")
@services_option
@root_option
def up(name: str, nodes: int, pods: int, segments: int, backend: str, plugins: str, cni_daemon: bool,
       services: str, state_root: Path) -> None:
    """Bring a lab up (idempotent: an up lab of the same shape is left as it is)."""
    from cnipy.lab.build import up as build
    from cnipy.lab.progress import TerminalProgress

    _need_root()
    try:
        spec = LabSpec(name=name, nodes=nodes, pods_per_node=pods, segments=segments, backend=backend,
                       plugins=plugins, state_root=state_root, cni_daemon=cni_daemon, services=services)
        click.echo(f"lab {name}: {spec.describe()}", err=True)
        build(spec, TerminalProgress())
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; `cnipy lab down --name {name}` removes what was built") from None
    except ServicesNotReady as exc:
        raise click.ClickException(f"lab {name} is up but its Services are not: {exc}\n"
                                   f"`cnipy lab check --name {name}` shows what works") from exc
    except LabError as exc:
        raise click.ClickException(f"{exc}\nwhat was built stays for inspection; "
                                   f"`cnipy lab down --name {name}` removes it") from exc
    click.echo(f"lab {name} is up: `cnipy lab status --name {name}`, `cnipy lab check --name {name}`")


@lab.command()
@name_option
@root_option
def status(name: str, state_root: Path) -> None:
    """Show a lab's nodes, addresses, pods and what is missing."""
    from cnipy.lab.report import status_text
    from cnipy.lab.status import status as lab_status

    try:
        st = lab_status(name, state_root)
    except LabError as exc:
        raise _fail(exc) from exc
    click.echo(status_text(st))
    if st.phase == "absent":
        from cnipy.lab.status import labs

        others = labs(state_root)
        if others:
            click.echo(f"labs recorded in {state_root}: {', '.join(others)} (use --name)")
    if st.missing or st.phase not in ("up", "absent"):
        sys.exit(1)


@lab.command()
@name_option
@root_option
@click.option("--timeout", default=3.0, show_default=True, help="Seconds per connection attempt.")
@click.option("--json", "as_json", is_flag=True, help="Print every probe as JSON.")
def check(name: str, state_root: Path, timeout: float, as_json: bool) -> None:
    """Run the connectivity matrix with real TCP traffic; exit 1 on any failure."""
    _need_root()
    lab_ = _lab_that_is_up(name, state_root)
    matrix = _check(lab_, timeout)
    if as_json:
        click.echo(json.dumps([_outcome_json(o) for o in matrix.outcomes], indent=2))
    else:
        _print_matrix(lab_, matrix)
    if not matrix.ok:
        sys.exit(1)


@lab.command()
@name_option
@root_option
@click.option("--no-detach", is_flag=True, help="Skip CNI DEL of the pods (faster; namespaces go anyway).")
def down(name: str, state_root: Path, no_detach: bool) -> None:
    """Remove a lab completely, also after a crash or an interrupted `up`."""
    _need_root()
    report = _down(name, state_root, detach=not no_detach)
    if report.leftovers:
        sys.exit(1)


@lab.command()
@name_option
@click.option("--keep", is_flag=True, help="Leave the lab up to explore; print how to look around and remove it.")
@click.option("--backend", default=backends.DEMO_BACKEND, show_default=True,
              help=f"Cross-node back end: {', '.join(sorted(backends.BACKENDS))}.")
@click.option("--plugins", type=click.Choice(sorted(PLUGIN_SETS)), default="cnipy", show_default=True,
              help="CNI plugins to attach pods with.")
@click.option("--segments", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: put the nodes on two subnets joined by a router.")
@services_option
@root_option
def demo(name: str, keep: bool, backend: str, plugins: str, segments: int, services: str,
         state_root: Path) -> None:
    """Build a 3-node lab, attach pods with cnipy's CNI plugins, add Services, show the connectivity matrix."""
    from cnipy.lab.build import up as build
    from cnipy.lab.model import plan
    from cnipy.lab.progress import TerminalProgress

    _need_root()
    try:
        spec = LabSpec(name=name, nodes=DEMO_NODES, pods_per_node=DEMO_PODS, segments=segments,
                       backend=backend, plugins=plugins, state_root=state_root, services=services)
    except LabError as exc:
        raise _fail(exc) from exc
    click.echo(f"cnipy lab demo: {spec.describe()}\n")
    started = time.monotonic()
    ok = False
    try:
        try:
            lab_ = build(spec, TerminalProgress(sys.stdout))
        except ServicesNotReady as exc:  # pods work; the matrix shows what the Services do
            click.echo(f"\nSERVICES NOT READY: {exc}")
            lab_ = plan(spec)
        click.echo(f"\nlab up in {time.monotonic() - started:.1f}s. Checking connectivity with real TCP traffic:\n")
        matrix = _check(lab_, 3.0)
        _print_matrix(lab_, matrix)
        click.echo("\npacket trace of a cross-node request: n/a (not yet: comes with `cnipy trace`)")
        ok = matrix.ok
    except LabError as exc:
        click.echo(f"\ndemo failed: {exc}", err=True)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
    finally:
        if keep:
            _print_keep_help(spec)
        else:
            try:
                click.echo("\ntearing the lab down (use --keep to explore it):")
                _down(name, state_root, detach=True, out=sys.stdout)
            except BrokenPipeError:  # `demo | head`: the reader is gone, the lab must go all the same
                with open(os.devnull, "w") as devnull:
                    _down(name, state_root, detach=True, out=devnull)
    if not ok:
        sys.exit(1)


def _lab_that_is_up(name: str, state_root: Path) -> Any:
    from cnipy.lab.status import status as lab_status

    try:
        st = lab_status(name, state_root)
    except LabError as exc:
        raise _fail(exc) from exc
    if st.lab is None or st.phase != "up":
        raise click.ClickException(f"lab {name} is not up ({st.phase}); `cnipy lab up --name {name}` first")
    if st.missing:
        raise click.ClickException(f"lab {name} is damaged, missing {', '.join(st.missing)}; run up again")
    return st.lab


def _check(lab_: Any, timeout: float) -> Any:
    from cnipy.lab.connectivity import run

    try:
        return run(lab_, timeout=timeout)
    except LabError as exc:
        raise _fail(exc) from exc


def _print_matrix(lab_: Any, matrix: Any) -> None:
    from cnipy.lab.report import failures, matrix_table, service_hints

    click.echo(matrix_table(lab_, matrix))
    if matrix.ok:
        click.echo("\nall probes passed")
    else:
        click.echo(f"\n{len(matrix.failures)} probe(s) FAILED:")
        click.echo("\n".join(failures(matrix)))
        click.echo("\n".join(service_hints(lab_, matrix)))


def _down(name: str, state_root: Path, *, detach: bool, out: Any = None) -> Any:
    from cnipy.lab.progress import TerminalProgress
    from cnipy.lab.teardown import down as teardown

    out = out or sys.stdout
    try:
        report = teardown(name, state_root=state_root, progress=TerminalProgress(out), detach=detach)
    except LabError as exc:
        raise _fail(exc) from exc
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.leftovers:
        click.echo(f"lab {name}: could not remove: {', '.join(report.leftovers)}", err=True)
    else:
        click.echo(f"lab {name} removed ({report.namespaces} namespaces, {report.processes} processes)",
                   file=out)
    return report


def _outcome_json(o: Any) -> dict[str, Any]:
    return {"kind": o.probe.kind, "from": o.probe.src.label, "to": o.probe.dst.label,
            "src_ip": str(o.probe.src.ip) if o.probe.src.ip else None,
            "dst_ip": str(o.probe.dst.ip) if o.probe.dst.ip else None,
            "port": o.probe.port, "connections": o.probe.tries, "answered_by": list(o.answers),
            "ok": o.ok, "detail": o.detail, "via_router": o.probe.via_router}


def _print_keep_help(spec: LabSpec) -> None:
    from cnipy.lab.model import plan
    from cnipy.lab.runtime import cached

    lab_ = plan(spec)
    n = spec.name
    named = "" if n == DEFAULT_NAME else f" --name {n}"
    cnipy = "cnipy" if shutil.which("cnipy") else _program()
    far = next((cached(node, pod) for node in lab_.nodes[1:2] for pod in lab_.pods_on(node)), None)
    far_ip = str(far.ip.ip) if far is not None and far.ip is not None else "10.244.2.2"
    rows = [
        (f"{cnipy} lab status{named}", "nodes, addresses, pods"),
        (f"{cnipy} lab check{named}", "the connectivity matrix again"),
        (f"ip netns list | grep '^{n}-'", "every namespace of the lab"),
        (f"ip netns exec {n}-n1 ip route", "a node's routes (pod CIDRs of the other nodes)"),
        (f"ip netns exec {n}-n1 bridge link", "the pods' veths on the node's bridge cni0"),
        (f"ip netns exec {n}-n1-p1 ip addr", "a pod's eth0 and its address"),
        (f"ip netns exec {n}-n1-p1 ping -c1 {far_ip}", "a pod on another node"),
        (f"cat {lab_.nodes[0].cni_conf_dir}/*.conflist", "the node's CNI configuration"),
    ]
    if spec.services != "none":
        from cnipy.lab.services import manifest_dir

        rules = ("nft list table ip cnipy" if spec.services == "nftables"
                 else "iptables-nft-save -t nat | grep KUBE-")
        rows += [
            (f"cat {manifest_dir(lab_)}/*.json", "the Services and EndpointSlices the proxies read"),
            (f"ip netns exec {n}-n1 {rules}", "the proxy's rules on a node"),
            (f"tail {lab_.state_dir}/logs/proxy-n1.log", "the proxy's log on a node"),
        ]
    width = max(len(cmd) for cmd, _ in rows) + 2
    click.echo("\nThe lab is kept. Look around (as root):")
    for cmd, what in rows:
        click.echo(f"  {cmd.ljust(width)}{what}")
    click.echo(f"Tear it down:\n  {cnipy} lab down{named}")


def _program() -> str:
    """How to run this cnipy again when it is not on PATH (e.g. .venv/bin/cnipy from the checkout)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "cnipy" and argv0.exists():
        try:
            return str(argv0.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(argv0.resolve())
    return "cnipy"

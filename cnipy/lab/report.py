"""Text renderings of lab results: the connectivity matrix table, the summary, the failures, the status."""

from __future__ import annotations

from collections import Counter

from cnipy.lab.connectivity import (
    CLIENT_LOCAL,
    CLIENT_NODE,
    CLIENT_NODEPORT,
    CROSS_NODE,
    KINDS,
    POD_CLUSTERIP,
    SAME_NODE,
    SERVICE_KINDS,
    Matrix,
    Outcome,
)
from cnipy.lab.model import Lab
from cnipy.lab.status import LabStatus

MAX_NODE_COLUMNS = 8


def _cell(outcomes: list[Outcome], connections: bool = False) -> str:
    """Probes passed / run; with `connections`, answered connections / made (Service probes make several)."""
    if not outcomes:
        return "-"
    if all(o.ok is None for o in outcomes):
        return outcomes[0].detail
    run = [o for o in outcomes if o.ok is not None]
    if connections:
        passed, total = sum(len(o.answers) for o in run), sum(o.probe.tries for o in run)
        bad = any(o.ok is False for o in run)
    else:
        passed, total = sum(1 for o in run if o.ok), len(run)
        bad = passed != total
    return f"{passed}/{total} FAIL" if bad else f"{passed}/{total} ok"


def matrix_table(lab: Lab, matrix: Matrix) -> str:
    """Rows: where traffic starts (the pods of each node, the client); columns: where it goes."""
    nodes = [n.name for n in lab.nodes]
    shown = nodes if len(nodes) <= MAX_NODE_COLUMNS else []
    header = ["from \\ to", *shown, "ClusterIP", "NodePort"]
    rows: list[list[str]] = []
    pod_kinds = (SAME_NODE, CROSS_NODE)
    for src in shown:
        row = [f"pods on {src}"]
        for dst in shown:
            row.append(_cell([o for o in matrix.outcomes if o.probe.kind in pod_kinds
                              and o.probe.src.node == src and o.probe.dst.node == dst]))
        row.append(_cell([o for o in matrix.by_kind(POD_CLUSTERIP) if o.probe.src.node == src], True))
        row.append("-")
        rows.append(row)
    if shown:
        client = ["client (outside)"]
        client += [_cell([o for o in matrix.by_kind(CLIENT_NODE) if o.probe.dst.node == dst]) for dst in shown]
        client += ["-", _cell(list(matrix.by_kind(CLIENT_NODEPORT)), True)]
        rows.append(client)
    lines = _grid([header, *rows]) if shown else []
    if shown:
        lines.append("  (a 'pods on' row reaches the pods of the node in the column; the client reaches the node;")
        lines.append("   ClusterIP and NodePort count connections, each answered by any endpoint of the Service)")
    lines.append("")
    lines += summary(matrix)
    spread = service_spread(matrix)
    if spread:
        lines += ["", "  Which endpoints answered:", *spread]
    return "\n".join(lines)


def service_spread(matrix: Matrix) -> list[str]:
    """Per source node (ClusterIP) or target node (NodePort): how many connections each endpoint answered."""
    lines = []
    for kind in SERVICE_KINDS:
        outcomes = [o for o in matrix.by_kind(kind) if o.ok is not None]
        groups: dict[str, list[Outcome]] = {}
        for o in outcomes:
            where = f"pods on {o.probe.src.node} -> {o.probe.dst.label}" if kind == POD_CLUSTERIP \
                else f"client -> {o.probe.dst.label}"
            groups.setdefault(where, []).append(o)
        for where, group in groups.items():
            made = sum(o.probe.tries for o in group)
            counts = Counter(a for o in group for a in o.answers)
            parts = [f"{label} {n}" for label, n in sorted(counts.items())]
            if kind == CLIENT_LOCAL and counts:
                parts.append("(client address kept)")
            elif all(o.probe.refused and o.ok for o in group):
                parts.append("no answer: this node has no local endpoint (expected)")
            if any(o.ok is False for o in group):
                parts.append(f"FAIL: {next(o.detail for o in group if o.ok is False)}")
            shown = "  ".join(parts)
            policy = " Local" if kind == CLIENT_LOCAL else ""
            count = "" if all(o.probe.refused for o in group) else f" ({sum(counts.values())}/{made})"
            lines.append(f"    {where}{policy}{count}: {shown}")
    return lines


def summary(matrix: Matrix) -> list[str]:
    lines = []
    for kind in KINDS:
        outcomes = list(matrix.by_kind(kind))
        note = ""
        if kind == CROSS_NODE:
            routed = sum(1 for o in outcomes if o.probe.via_router)
            note = f"  ({routed} through the router)" if routed else ""
        elif kind == CLIENT_NODE:
            note = "  (client namespace to each node's underlay address)"
        elif kind == CLIENT_LOCAL and outcomes and outcomes[0].ok is not None:
            note = "  (externalTrafficPolicy Local: client address kept; other nodes drop)"
        elif kind == CLIENT_LOCAL:
            continue
        lines.append(f"  {kind:<26} {_cell(outcomes, kind in (POD_CLUSTERIP, CLIENT_NODEPORT))}{note}")
    return lines


def failures(matrix: Matrix, limit: int = 20) -> list[str]:
    lines = [f"  FAIL {o.probe.kind}: {o.probe.src.label} ({o.probe.src.ip}) -> {o.probe.dst.label} "
             f"({o.probe.dst.ip}): {o.detail}" for o in matrix.failures[:limit]]
    if len(matrix.failures) > limit:
        lines.append(f"  ... and {len(matrix.failures) - limit} more failures")
    return lines


def service_hints(lab: Lab, matrix: Matrix) -> list[str]:
    """When a Service probe failed: each node's proxy health and where its log is."""
    if not any(o.probe.kind in SERVICE_KINDS for o in matrix.failures):
        return []
    from cnipy.lab.services import healthz, proxy_name

    lines = [f"Service probes failed; the cnipy proxy ({lab.spec.services}) on each node:"]
    for node in lab.nodes:
        info = healthz(node)
        state = ("healthy (last sync succeeded)" if info and info["healthy"] else
                 "NOT healthy (its last sync failed)" if info else "not answering /healthz")
        lines.append(f"  {node.name}: {state}; log {lab.state_dir / 'logs' / (proxy_name(node) + '.log')}")
    return lines


def status_text(st: LabStatus) -> str:
    if st.lab is None:
        if st.phase == "orphaned":
            return (f"lab {st.name}: no recorded state, but {len(st.stray)} namespaces with its prefix exist "
                    f"(an interrupted run?); `cnipy lab down --name {st.name}` removes them")
        return f"lab {st.name}: not up"
    lab = st.lab
    took = f" in {st.seconds:.1f}s" if st.seconds is not None else ""
    lines = [f"lab {lab.name}: {st.phase}{took}; {lab.spec.describe()}", f"state: {lab.state_dir}"]
    rows = [["node", "netns", "underlay", "segment", "pod CIDR (plan)", "pods"]]
    for node in lab.nodes:
        pods = [p for p in st.pods if p.node == node.name]
        shown = ", ".join(f"{p.name}={p.ip or '?'}{'' if p.present else ' (missing)'}" for p in pods)
        rows.append([node.name, node.netns, str(node.underlay_ip), str(node.segment), str(node.pod_cidr),
                     shown or "-"])
    lines += _grid(rows)
    hosts = [f"{h.name} {h.netns} {h.underlay_ip}" for h in lab.hosts()]
    lines.append("hosts: " + "; ".join(hosts))
    if lab.spec.services != "none":
        lines.append(f"Services (cnipy proxy, {lab.spec.services}): " + "; ".join(_service_text(lab)))
    if st.daemons:
        lines.append("daemons: " + ", ".join(f"{k} (pid {v})" for k, v in sorted(st.daemons.items())))
    if st.missing:
        lines.append(f"MISSING namespaces: {', '.join(st.missing)}")
    if st.stray:
        lines.append(f"stray namespaces: {', '.join(st.stray)}")
    return "\n".join(lines)


def _service_text(lab: Lab) -> list[str]:
    from cnipy.lab.services import lab_services

    out = []
    for svc in lab_services(lab):
        port = f" node port {svc.node_port}" if svc.node_port else ""
        local = " Local" if svc.local else ""
        if svc.health_check_node_port is not None:
            port += f" (health check {svc.health_check_node_port})"
        out.append(f"{svc.name} {svc.type}{local} {svc.cluster_ip}:{svc.port}{port} -> {len(svc.backends)} pods")
    return out


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, row in enumerate(rows):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out

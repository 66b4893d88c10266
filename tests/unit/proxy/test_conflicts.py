"""Services claiming what another serves: the one in force keeps it, the newcomer is skipped and reported."""

from __future__ import annotations

from pathlib import Path

from cnipy.proxy.conflicts import resolve
from cnipy.proxy.manifests import ManifestSource
from cnipy.proxy.model import ServiceKey
from cnipy.proxy.store import ObjectStore
from tests.unit.proxy.builders import endpoints, service, state

A = service("a", "10.96.0.1", type="NodePort", node_port=30080)
B_SAME_NODEPORT = service("b", "10.96.0.2", type="NodePort", node_port=30080)
C_SAME_EXTERNAL = service("c", "10.96.0.3", external_ips=("192.0.2.1",))
D_SAME_EXTERNAL = service("d", "10.96.0.4", external_ips=("192.0.2.1",))
E_OTHER_PORT = service("e", "10.96.0.5", 81, external_ips=("192.0.2.1",))
F_HC_ON_NODEPORT = service("f", "10.96.0.6", type="LoadBalancer", node_port=30081, etp="Local", hc_port=30080)
G_UDP = service("g", "10.96.0.7", protocol="UDP", type="NodePort", node_port=30080)


def test_no_conflict_keeps_the_state_object() -> None:
    st = state((A, endpoints(A, "10.244.1.2")), (C_SAME_EXTERNAL, None), (E_OTHER_PORT, None), (G_UDP, None))
    kept, problems = resolve(st)
    assert kept is st and problems == ()  # same address on another port, same port on another protocol: fine


def test_first_by_name_wins_among_new_services_and_the_loser_is_skipped_whole() -> None:
    st = state((B_SAME_NODEPORT, endpoints(B_SAME_NODEPORT, "10.244.1.3")), (A, endpoints(A, "10.244.1.2")),
               (C_SAME_EXTERNAL, None), (D_SAME_EXTERNAL, None), (F_HC_ON_NODEPORT, None))
    kept, problems = resolve(st, origins={ServiceKey("default", "b"): ("/etc/svc/b.yaml", "[1].")})
    assert set(kept.services) == {A.key, C_SAME_EXTERNAL.key}
    assert set(kept.slices) == {A.key}
    msgs = {(p.file, p.field, p.message) for p in problems}
    assert msgs == {
        ("/etc/svc/b.yaml", "[1].spec.ports[0].nodePort",
         "nodePort 30080/TCP is already served by service default/a; this service is skipped"),
        ("service default/d", "spec.externalIPs[0]",
         "192.0.2.1:80/TCP is already served by service default/c; this service is skipped"),
        ("service default/f", "spec.healthCheckNodePort",
         "nodePort 30080/TCP is already served by service default/a; this service is skipped"),
    }


def test_the_service_in_force_keeps_its_claim() -> None:
    before, _ = resolve(state((B_SAME_NODEPORT, None)))
    kept, problems = resolve(state((A, None), (B_SAME_NODEPORT, None)), before)
    assert set(kept.services) == {B_SAME_NODEPORT.key}  # "a" sorts first but "b" was there
    assert [p.field for p in problems] == ["spec.ports[0].nodePort"] and "default/b" in problems[0].message


def _write(path: Path, name: str, ip: str, node_port: int) -> None:
    path.write_text(f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{type: NodePort, clusterIP: {ip}, ports: [{{port: 80, nodePort: {node_port}}}]}}
""")


def test_manifests_report_duplicates_and_conflicts_with_their_file(tmp_path: Path) -> None:
    _write(tmp_path / "1-a.yaml", "a", "10.96.0.1", 30080)
    _write(tmp_path / "2-a-again.yaml", "a", "10.96.0.9", 30089)
    _write(tmp_path / "3-b.yaml", "b", "10.96.0.2", 30080)
    src = ManifestSource([tmp_path])
    result = src.load()
    assert list(result.state.services) == [ServiceKey("default", "a")]
    assert result.state.services[ServiceKey("default", "a")].ports[0].node_port == 30080  # the first file's
    got = sorted((Path(p.file).name, p.field) for p in result.problems)
    assert got == [("2-a-again.yaml", "metadata.name"), ("3-b.yaml", "spec.ports[0].nodePort")]
    assert "already defined in " + str(tmp_path / "1-a.yaml") in next(
        p.message for p in result.problems if p.field == "metadata.name")
    # "b" takes the NodePort once "a" lets it go; "a" (from the second file now) keeps running.
    (tmp_path / "1-a.yaml").unlink()
    assert src.changed()
    result = src.load()
    assert set(result.state.services) == {ServiceKey("default", "a"), ServiceKey("default", "b")}
    assert result.problems == ()


def test_manifest_source_parses_only_changed_files(tmp_path: Path, monkeypatch: object) -> None:
    import cnipy.proxy.manifests as m
    for i in range(3):
        _write(tmp_path / f"s{i}.yaml", f"s{i}", f"10.96.0.{i + 1}", 30080 + i)
    parsed: list[str] = []
    real = m.parse_file

    def counting(path: Path) -> m.FileObjects:
        parsed.append(path.name)
        return real(path)

    monkeypatch.setattr(m, "parse_file", counting)  # type: ignore[attr-defined]
    src = ManifestSource([tmp_path])
    assert len(src.load().state.services) == 3 and sorted(parsed) == ["s0.yaml", "s1.yaml", "s2.yaml"]
    parsed.clear()
    _write(tmp_path / "s1.yaml", "s1", "10.96.0.2", 30099)
    result = src.load()
    assert parsed == ["s1.yaml"]
    assert result.state.services[ServiceKey("default", "s1")].ports[0].node_port == 30099


def test_object_store_resolves_conflicts_against_its_last_snapshot() -> None:
    store = ObjectStore("api:")

    def svc(name: str, node_port: int) -> dict[str, object]:
        return {"metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.1" if name == "z" else "10.96.0.2",
                         "ports": [{"port": 80, "nodePort": node_port}]}}

    store.replace("services", [svc("z", 30080)])
    store.replace("endpointslices", [])
    first = store.snapshot()
    assert first is not None and list(first[0].services) == [ServiceKey("default", "z")]
    store.put("services", svc("a", 30080))
    second = store.snapshot()
    assert second is not None
    st, problems = second
    assert list(st.services) == [ServiceKey("default", "z")]
    assert [(p.file, p.field) for p in problems] == [("api:/services/default/a", "spec.ports[0].nodePort")]


def test_idle_polls_do_not_walk_the_tree_and_changes_are_seen(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "a", "10.96.0.1", 30080)
    src = ManifestSource([tmp_path])
    assert src.watcher is not None  # this kernel has inotify
    walks = 0
    real = src._current_stamp

    def counting() -> tuple[tuple[str, int, int], ...]:
        nonlocal walks
        walks += 1
        return real()

    src._current_stamp = counting  # type: ignore[method-assign]
    assert src.changed()
    src.load()
    walks = 0
    for _ in range(50):
        assert not src.changed()
    assert walks == 0
    sub = tmp_path / "team" / "x"
    sub.mkdir(parents=True)  # a new directory: an event, and watched from the next load on
    assert src.changed() is False  # no manifest in it yet: the walk confirms nothing changed
    src.load()
    _write(sub / "b.yaml", "b", "10.96.0.2", 30081)
    assert src.changed()
    assert set(src.load().state.services) == {ServiceKey("default", "a"), ServiceKey("default", "b")}
    (tmp_path / "a.yaml").unlink()
    assert src.changed()
    assert set(src.load().state.services) == {ServiceKey("default", "b")}
    src.close()


def test_without_inotify_every_poll_walks(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "a", "10.96.0.1", 30080)
    src = ManifestSource([tmp_path])
    src.close()
    src.watcher = None
    src.load()
    assert not src.changed()
    _write(tmp_path / "a.yaml", "a", "10.96.0.1", 30090)
    assert src.changed()


def test_a_conflict_inside_one_file_names_the_document(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text("""
kind: Service
metadata: {name: a, namespace: default}
spec: {type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}
---
kind: Service
metadata: {name: b, namespace: default}
spec: {type: NodePort, clusterIP: 10.96.0.2, ports: [{port: 80, nodePort: 30080}]}
""")
    result = ManifestSource([tmp_path]).load()
    assert [(Path(p.file).name, p.field) for p in result.problems] == [("all.yaml", "[1].spec.ports[0].nodePort")]

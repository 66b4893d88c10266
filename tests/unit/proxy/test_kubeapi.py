"""The API source against a local HTTP server replaying list and watch responses shaped like the real API's."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cnipy.proxy.kubeapi import ENDPOINT_SLICES_PATH as ENDPOINT_SLICES
from cnipy.proxy.kubeapi import SERVICES_PATH as SERVICES
from cnipy.proxy.kubeapi import KubeConfig, KubeSource, load_kubeconfig
from cnipy.proxy.model import ServiceKey


def svc(name: str, ip: str, rv: str, port: Any = 80) -> dict[str, Any]:
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv, "uid": f"uid-{name}"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "internalTrafficPolicy": "Cluster",
                     "ipFamilies": ["IPv4"], "ports": [{"port": port, "protocol": "TCP", "targetPort": 8080}],
                     "sessionAffinity": "None"},
            "status": {"loadBalancer": {}}}


def eps(name: str, ip: str, rv: str) -> dict[str, Any]:
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": f"{name}-x1", "namespace": "default", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": "node1"}],
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}


class Script:
    """What the fake API server answers, per resource: list pages and a queue of watch streams."""

    def __init__(self) -> None:
        self.lists: dict[str, list[list[dict[str, Any]]]] = {}
        self.relists: dict[str, list[list[list[dict[str, Any]]]]] = {}  # later list responses, in order
        self.list_calls: dict[str, int] = {}
        self.list_rv: dict[str, str] = {}
        self.watches: dict[str, list[list[dict[str, Any]] | int]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()


def serve(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            with script.lock:
                script.requests.append((url.path, q))
            if self.headers.get("Authorization") != "Bearer t0ken":
                return self._send(401, {"kind": "Status", "code": 401})
            if q.get("watch") == "1":
                with script.lock:
                    queue = script.watches.get(url.path, [])
                    stream = queue.pop(0) if queue else []
                if isinstance(stream, int):
                    return self._send(stream, {"kind": "Status", "code": stream})
                return self._stream(stream)
            page = int(q.get("continue", "0"))
            with script.lock:
                if page == 0:
                    calls = script.list_calls[url.path] = script.list_calls.get(url.path, 0) + 1
                    later = script.relists.get(url.path, [])
                    if calls > 1 and later:
                        script.lists[url.path] = later.pop(0)
                pages = script.lists[url.path]
            meta: dict[str, Any] = {"resourceVersion": script.list_rv[url.path]}
            if page + 1 < len(pages):
                meta["continue"] = str(page + 1)
            self._send(200, {"kind": "List", "metadata": meta, "items": pages[page]})

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, events: list[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for ev in events:
                line = (json.dumps(ev) + "\n").encode()
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def api() -> Iterator[tuple[Script, ThreadingHTTPServer]]:
    script = Script()
    server = serve(script)
    yield script, server
    server.shutdown()
    server.server_close()


def wait_for(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_list_watch_bookmark_and_relist_on_410(api: tuple[Script, ThreadingHTTPServer]) -> None:
    script, server = api
    script.lists[SERVICES] = [[svc("a", "10.96.0.1", "10")], [svc("bad", "10.96.0.9", "11", port=0)]]
    script.list_rv[SERVICES] = "100"
    script.lists[ENDPOINT_SLICES] = [[eps("a", "10.244.1.2", "12")]]
    script.list_rv[ENDPOINT_SLICES] = "100"
    script.watches[SERVICES] = [
        [{"type": "ADDED", "object": svc("b", "10.96.0.2", "101")},
         {"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {"resourceVersion": "150"}}}],
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                      "message": "too old resource version: 150 (200)"}}],
    ]
    script.relists[SERVICES] = [[[svc("a", "10.96.0.1", "10"), svc("c", "10.96.0.3", "201")]]]
    script.watches[ENDPOINT_SLICES] = [
        [{"type": "MODIFIED", "object": eps("a", "10.244.1.3", "102")}],
    ]
    src = KubeSource(KubeConfig(f"http://127.0.0.1:{server.server_address[1]}", token="t0ken"),
                     min_backoff=0.05, max_backoff=0.2, watch_timeout=2)
    try:
        # the second services watch resumes from the bookmark's version, gets 410 and lists again
        wait_for(lambda: src.watchers[0].lists >= 2)
        wait_for(lambda: ("default", "c") in src.store.objects["services"])
        got = src.poll()
        assert got is not None
        st, problems = got
        assert set(st.services) == {ServiceKey("default", "a"), ServiceKey("default", "c")}
        (sl,) = st.slices[ServiceKey("default", "a")]
        assert str(sl.endpoints[0].addresses[0]) == "10.244.1.3"
        assert problems == ()  # "bad" was in the first list only
        svc_watches = [q for p, q in script.requests if p == SERVICES and q.get("watch") == "1"]
        assert svc_watches[0]["resourceVersion"] == "100" and svc_watches[0]["allowWatchBookmarks"] == "true"
        assert svc_watches[1]["resourceVersion"] == "150"
        first_lists = [q for p, q in script.requests if p == SERVICES and "watch" not in q]
        assert first_lists[0] == {"limit": "500"} and first_lists[1]["continue"] == "1"
    finally:
        src.stop()


def test_bad_object_is_reported_with_api_path_and_field(api: tuple[Script, ThreadingHTTPServer]) -> None:
    script, server = api
    script.lists[SERVICES] = [[svc("a", "10.96.0.1", "10"), svc("bad", "10.96.0.9", "11", port=0)]]
    script.list_rv[SERVICES] = "100"
    script.lists[ENDPOINT_SLICES] = [[]]
    script.list_rv[ENDPOINT_SLICES] = "100"
    src = KubeSource(KubeConfig(f"http://127.0.0.1:{server.server_address[1]}", token="t0ken"),
                     min_backoff=0.05, max_backoff=0.2, watch_timeout=1)
    try:
        wait_for(lambda: src.store.listed == {"services", "endpointslices"})
        got = src.poll()
        assert got is not None
        st, problems = got
        assert list(st.services) == [ServiceKey("default", "a")]
        (p,) = problems
        assert p.file == "api:/services/default/bad" and p.field == "spec.ports[0].port"
    finally:
        src.stop()


def test_backoff_on_errors(api: tuple[Script, ThreadingHTTPServer]) -> None:
    script, server = api
    src = KubeSource(KubeConfig(f"http://127.0.0.1:{server.server_address[1]}", token="wrong"),
                     min_backoff=0.05, max_backoff=0.1, watch_timeout=1)
    try:
        wait_for(lambda: src.watchers[0].errors >= 3)
        assert src.poll() is None  # never listed: no (empty) snapshot that would reject every service
    finally:
        src.stop()


def test_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "config").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c1",
                      "cluster": {"server": "https://10.0.0.1:6443/", "certificate-authority": "ca.crt"}}],
        "users": [{"name": "u1", "user": {"token": "abc"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c1", "user": "u1"}}],
    }))
    cfg = load_kubeconfig(str(tmp_path / "config"))
    assert cfg.server == "https://10.0.0.1:6443" and cfg.token == "abc"
    assert cfg.ca_file == str(tmp_path / "ca.crt")

"""The Kubernetes API source: list + watch Services and EndpointSlices, stdlib HTTP only.

Each resource has a watcher thread: list (paginated) -> watch from the list's resourceVersion with bookmarks
-> on "410 Gone" (the version was compacted away) list again; on connection errors back off exponentially
(with jitter) up to ``max_backoff``. The daemon polls ``KubeSource`` for snapshots.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import random
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from cnipy.proxy.errors import ManifestError, SourceError
from cnipy.proxy.model import ClusterState
from cnipy.proxy.store import SERVICES, SLICES, ObjectStore, object_key

log = logging.getLogger("cnipy.proxy.kubeapi")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICES_PATH = "/api/v1/services"
ENDPOINT_SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"


@dataclass(frozen=True)
class KubeConfig:
    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


def _data_file(data: str, suffix: str) -> str:
    f = tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False)  # noqa: SIM115 (kept for ssl)
    with f:
        f.write(base64.b64decode(data))
    os.chmod(f.name, 0o600)
    return f.name


def load_kubeconfig(path: str | None, *, in_cluster: bool = False) -> KubeConfig:
    """In-cluster credentials (service account files and KUBERNETES_SERVICE_* variables) or a kubeconfig's
    current context."""
    if in_cluster:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise SourceError("in-cluster: KUBERNETES_SERVICE_HOST is not set")
        return KubeConfig(f"https://{host}:{port}", token=(SA_DIR / "token").read_text().strip(),
                          ca_file=str(SA_DIR / "ca.crt"))
    if path is None:
        raise SourceError("no kubeconfig given")
    doc = yaml.safe_load(Path(path).read_text()) or {}
    base = Path(path).parent

    def named(kind: str, name: str) -> Mapping[str, Any]:
        for item in doc.get(f"{kind}s") or []:
            if item.get("name") == name:
                return item.get(kind) or {}
        raise SourceError(f"kubeconfig {path}: no {kind} named {name!r}")

    ctx_name = doc.get("current-context")
    ctx = named("context", ctx_name) if ctx_name else (doc.get("contexts") or [{}])[0].get("context", {})
    cluster = named("cluster", ctx.get("cluster", ""))
    user = named("user", ctx["user"]) if ctx.get("user") else {}

    def file_or_data(obj: Mapping[str, Any], key: str, suffix: str) -> str | None:
        if obj.get(f"{key}-data"):
            return _data_file(obj[f"{key}-data"], suffix)
        if obj.get(key):
            return str((base / obj[key]).resolve())
        return None

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return KubeConfig(
        server=str(cluster.get("server", "")).rstrip("/"),
        token=token,
        ca_file=file_or_data(cluster, "certificate-authority", ".crt"),
        cert_file=file_or_data(user, "client-certificate", ".crt"),
        key_file=file_or_data(user, "client-key", ".key"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


class Gone(SourceError):
    """The resourceVersion is too old (HTTP 410 or a watch ERROR event with code 410): list again."""


class ApiClient:
    def __init__(self, config: KubeConfig, timeout: float = 30) -> None:
        self.config = config
        url = urllib.parse.urlsplit(config.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SourceError(f"API server URL {config.server!r} must be http(s)://host[:port]")
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname, url.port or (443 if self.https else 80)
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if self.https:
            ctx = ssl.create_default_context(cafile=config.ca_file)
            if config.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if config.cert_file:
                ctx.load_cert_chain(config.cert_file, config.key_file)
            self.context = ctx

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _request(self, path: str, params: Mapping[str, str], timeout: float
                 ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connect(timeout)
        headers = {"Accept": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        try:
            conn.request("GET", f"{path}?{urllib.parse.urlencode(params)}", headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SourceError(f"GET {path}: {exc}") from exc
        if resp.status == 410:
            conn.close()
            raise Gone(f"GET {path}: 410 Gone")
        if resp.status != 200:
            body = resp.read(2000).decode(errors="replace")
            conn.close()
            raise SourceError(f"GET {path}: HTTP {resp.status}: {body}")
        return conn, resp

    def list(self, path: str, limit: int = 500) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        params = {"limit": str(limit)}
        while True:
            conn, resp = self._request(path, params, self.timeout)
            try:
                doc = json.loads(resp.read())
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise SourceError(f"GET {path}: bad list response: {exc}") from exc
            finally:
                conn.close()
            items += doc.get("items") or []
            meta = doc.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            params = {"limit": str(limit), "continue": meta["continue"]}

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        conn, resp = self._request(path, params, timeout_seconds + 30)
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise SourceError(f"watch {path}: {exc}") from exc
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


class ResourceWatcher:
    """List, then watch, one resource type, forever (until ``stop``), calling back with objects."""

    def __init__(self, client: ApiClient, path: str, *, on_list: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, dict[str, Any]], None], max_backoff: float = 30.0,
                 min_backoff: float = 0.5, watch_timeout: int = 300) -> None:
        self.client, self.path = client, path
        self.on_list, self.on_event = on_list, on_event
        self.min_backoff, self.max_backoff, self.watch_timeout = min_backoff, max_backoff, watch_timeout
        self.stop_event = threading.Event()
        self.lists = 0
        self.errors = 0
        self.thread = threading.Thread(target=self.run, name=f"watch{path}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        backoff = self.min_backoff
        while not self.stop_event.is_set():
            try:
                items, rv = self.client.list(self.path)
                self.lists += 1
                self.on_list(items)
                backoff = self.min_backoff
                while not self.stop_event.is_set():
                    rv = self._watch_once(rv)
            except Gone:
                log.info("%s: resourceVersion expired, listing again", self.path)
                continue
            except (SourceError, ValueError) as exc:
                self.errors += 1
                log.warning("%s: %s; retrying in %.1fs", self.path, exc, backoff)
                self.stop_event.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.max_backoff)

    def _watch_once(self, rv: str) -> str:
        for event in self.client.watch(self.path, rv, self.watch_timeout):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone(f"watch {self.path}: {obj.get('message', '410 Gone')}")
                raise SourceError(f"watch {self.path}: error event {obj}")
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            if kind != "BOOKMARK":
                self.on_event(str(kind), obj)
            if self.stop_event.is_set():
                break
        return rv


class KubeSource:
    """Keeps Services and EndpointSlices from the API; ``poll`` returns a snapshot after changes."""

    def __init__(self, config: KubeConfig, *, start: bool = True, **watch_opts: Any) -> None:
        self.client = ApiClient(config)
        self.store = ObjectStore("api:")

        def watcher(path: str, kind: str) -> ResourceWatcher:
            return ResourceWatcher(
                self.client, path, on_list=lambda items: self.store.replace(kind, items),
                on_event=lambda ev, obj: self.store.delete(kind, object_key(obj)) if ev == "DELETED"
                else self.store.put(kind, obj), **watch_opts)

        self.watchers = [watcher(SERVICES_PATH, SERVICES), watcher(ENDPOINT_SLICES_PATH, SLICES)]
        if start:
            for w in self.watchers:
                w.start()

    def poll(self) -> tuple[ClusterState, tuple[ManifestError, ...]] | None:
        return self.store.snapshot()

    def stop(self) -> None:
        for w in self.watchers:
            w.stop()

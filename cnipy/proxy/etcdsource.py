"""The etcd source, for clusters run by cnipy's agent: Service and EndpointSlice objects (the Kubernetes JSON)
stored under ``<prefix>/services/<namespace>/<name>`` and ``<prefix>/endpointslices/<namespace>/<name>``.

One thread: range the prefix, then watch it from the next revision; when the watch fails (etcd down, or the
revision compacted away) back off and range again. Uses the overlay's etcd v3 JSON-gateway client.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from typing import Any

from cnipy.overlay.etcd import Etcd, EtcdError, KeyValue
from cnipy.proxy.errors import ManifestError
from cnipy.proxy.model import ClusterState
from cnipy.proxy.store import SERVICES, SLICES, Key, ObjectStore

log = logging.getLogger("cnipy.proxy.etcd")

DEFAULT_PREFIX = "/cnipy.io/proxy"


def _split(prefix: str, key: str) -> tuple[str, Key] | None:
    """``<prefix>/<kind>/<ns>/<name>`` -> (kind, (ns, name)); None for keys of another shape."""
    parts = key[len(prefix):].strip("/").split("/")
    if len(parts) != 3 or parts[0] not in (SERVICES, SLICES):
        return None
    return parts[0], (parts[1], parts[2])


class EtcdSource:
    def __init__(self, etcd: Etcd, prefix: str = DEFAULT_PREFIX, *, start: bool = True,
                 min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.etcd, self.prefix = etcd, prefix.rstrip("/")
        self.store = ObjectStore(f"etcd:{self.prefix}")
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.stop_event = threading.Event()
        self.watch: Any = None
        self.lists = 0
        self.errors = 0
        self.thread = threading.Thread(target=self.run, name="etcd-source", daemon=True)
        if start:
            self.thread.start()

    def _decode(self, kv: KeyValue) -> tuple[str, dict[str, Any]] | None:
        where = _split(self.prefix, kv.key)
        if where is None:
            return None
        kind, (ns, name) = where
        try:
            obj = json.loads(kv.value)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            obj = {"metadata": {"namespace": ns, "name": name}, "spec": "(not a JSON object)"}
        # The key names the object, whatever its metadata says.
        obj.setdefault("metadata", {}).update({"namespace": ns, "name": name})
        return kind, obj

    def _list(self) -> int:
        kvs, revision = self.etcd.get(self.prefix + "/", prefix=True)
        by_kind: dict[str, list[dict[str, Any]]] = {SERVICES: [], SLICES: []}
        for kv in kvs:
            decoded = self._decode(kv)
            if decoded is not None:
                by_kind[decoded[0]].append(decoded[1])
        for kind, items in by_kind.items():
            self.store.replace(kind, items)
        self.lists += 1
        return revision

    def run(self) -> None:
        backoff = self.min_backoff
        while not self.stop_event.is_set():
            try:
                revision = self._list()
                backoff = self.min_backoff
                self.watch = self.etcd.watch(self.prefix + "/", prefix=True, start_revision=revision + 1)
                for events in self.watch:
                    for ev in events:
                        where = _split(self.prefix, ev.kv.key)
                        if where is None:
                            continue
                        if ev.type == "DELETE":
                            self.store.delete(*where)
                        elif (decoded := self._decode(ev.kv)) is not None:
                            self.store.put(*decoded)
                    if self.stop_event.is_set():
                        break
            except EtcdError as exc:
                if self.stop_event.is_set():
                    break
                self.errors += 1
                log.warning("etcd source: %s; listing again in %.1fs", exc, backoff)
                self.stop_event.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.max_backoff)

    def poll(self) -> tuple[ClusterState, tuple[ManifestError, ...]] | None:
        return self.store.snapshot()

    def stop(self) -> None:
        self.stop_event.set()
        if self.watch is not None:
            self.watch.close()

"""The object store behind the API and etcd sources: decoded Services and EndpointSlices by (namespace, name),
replaced by lists and updated by watch events from other threads, read by the daemon as snapshots."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from cnipy.proxy.conflicts import resolve
from cnipy.proxy.errors import ManifestError
from cnipy.proxy.model import ClusterState, EndpointSlice, Service
from cnipy.proxy.objects import FieldError, build_state, parse_endpoint_slice, parse_service

SERVICES, SLICES = "services", "endpointslices"
Key = tuple[str, str]


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


class ObjectStore:
    def __init__(self, origin: str) -> None:
        self.origin = origin  # how problems name where an object came from, e.g. "api:" or "etcd:/cnipy/proxy"
        self.lock = threading.Lock()
        self.objects: dict[str, dict[Key, Service | EndpointSlice | ManifestError | None]] = {
            SERVICES: {}, SLICES: {}}
        self.listed: set[str] = set()
        self.generation = 0
        self.seen_generation = -1
        self.last: ClusterState | None = None  # the previous snapshot: its services win conflicts

    def _parse(self, kind: str, obj: Mapping[str, Any]) -> Service | EndpointSlice | ManifestError | None:
        ns, name = object_key(obj)
        try:
            return parse_service(obj) if kind == SERVICES else parse_endpoint_slice(obj)
        except FieldError as exc:
            return ManifestError(f"{self.origin}/{kind}/{ns}/{name}", exc.field, exc.message)

    def replace(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        parsed = {object_key(o): self._parse(kind, o) for o in items}
        with self.lock:
            self.objects[kind] = parsed
            self.listed.add(kind)
            self.generation += 1

    def put(self, kind: str, obj: Mapping[str, Any]) -> None:
        value = self._parse(kind, obj)
        with self.lock:
            self.objects[kind][object_key(obj)] = value
            self.generation += 1

    def delete(self, kind: str, key: Key) -> None:
        with self.lock:
            self.objects[kind].pop(key, None)
            self.generation += 1

    def snapshot(self) -> tuple[ClusterState, tuple[ManifestError, ...]] | None:
        """A new state after changes; None when nothing changed or not every kind was listed yet (an empty
        state would make the proxy drop every service)."""
        with self.lock:
            if self.listed != {SERVICES, SLICES} or self.generation == self.seen_generation:
                return None
            self.seen_generation = self.generation
            values = [*self.objects[SERVICES].values(), *self.objects[SLICES].values()]
        services = [v for v in values if isinstance(v, Service)]
        slices = [v for v in values if isinstance(v, EndpointSlice)]
        problems = tuple(v for v in values if isinstance(v, ManifestError))
        origins = {s.key: (f"{self.origin}/{SERVICES}/{s.key.namespace}/{s.key.name}", "") for s in services}
        state, clashes = resolve(build_state(services, slices, ()), self.last, origins)
        self.last = state
        return state, (*problems, *clashes)

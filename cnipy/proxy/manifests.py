"""The manifest source: YAML or JSON files (or directories of them) holding Services, EndpointSlices and Pods.

A bad object is reported with its file and field and skipped; everything else still loads. So is a service
defined twice (the later definition is skipped) or one claiming an address and port another serves (see
conflicts.py). ``ManifestSource`` learns of changes from inotify (an idle poll is one read, not a walk of the
tree), confirms them by the files' modification times and sizes, and re-reads only the files that changed.
Without inotify it walks and compares on every poll; with it, it still does every ``backstop`` seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from cnipy.proxy.conflicts import resolve
from cnipy.proxy.errors import ManifestError
from cnipy.proxy.inotify import Watcher
from cnipy.proxy.model import ClusterState, EndpointSlice, Pod, Service, ServiceKey
from cnipy.proxy.objects import FieldError, build_state, parse_endpoint_slice, parse_pod, parse_service

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class LoadResult:
    state: ClusterState
    problems: tuple[ManifestError, ...]


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            yield path


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, object) for each object in the file, unwrapping ``kind: List`` items."""
    text = path.read_text()
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    for d, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"[{d}]" if len(docs) > 1 else ""
        if isinstance(doc, dict) and doc.get("kind", "").endswith("List"):
            for i, item in enumerate(doc.get("items") or []):
                yield f"{where}items[{i}].", item
        else:
            yield f"{where}." if where else "", doc


@dataclass(frozen=True)
class FileObjects:
    """What one file holds: its objects, parsed, and its problems."""

    services: tuple[tuple[str, Service], ...] = ()  # (field prefix, service)
    slices: tuple[EndpointSlice, ...] = ()
    pods: tuple[Pod, ...] = ()
    problems: tuple[ManifestError, ...] = ()


def parse_file(file: Path) -> FileObjects:
    services: list[tuple[str, Service]] = []
    slices: list[EndpointSlice] = []
    pods: list[Pod] = []
    problems: list[ManifestError] = []
    try:
        docs = list(_documents(file))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return FileObjects(problems=(ManifestError(str(file), "(document)", f"cannot parse: {exc}"),))
    for where, obj in docs:
        if not isinstance(obj, dict):
            problems.append(ManifestError(str(file), where.rstrip(".") or "(document)", "must be a map"))
            continue
        kind = obj.get("kind")
        try:
            if kind == "Service":
                svc = parse_service(obj)
                if svc is not None:
                    services.append((where, svc))
            elif kind == "EndpointSlice":
                slices.append(parse_endpoint_slice(obj))
            elif kind == "Pod":
                pods.append(parse_pod(obj))
        except FieldError as exc:
            problems.append(ManifestError(str(file), f"{where}{exc.field}", exc.message))
    return FileObjects(tuple(services), tuple(slices), tuple(pods), tuple(problems))


def combine(parsed: Sequence[tuple[Path, FileObjects]], previous: ClusterState | None = None) -> LoadResult:
    """The state of many files (in order): duplicate services and conflicting claims are reported and skipped."""
    services: dict[ServiceKey, Service] = {}
    origins: dict[ServiceKey, tuple[str, str]] = {}
    slices: list[EndpointSlice] = []
    pods: list[Pod] = []
    problems: list[ManifestError] = []
    for file, objs in parsed:
        problems += objs.problems
        for where, svc in objs.services:
            first = origins.get(svc.key)
            if first is not None:
                problems.append(ManifestError(str(file), f"{where}metadata.name", f"service {svc.key.namespace}/"
                                              f"{svc.key.name} is already defined in {first[0]}; skipped"))
                continue
            services[svc.key] = svc
            origins[svc.key] = (str(file), where)
        slices += objs.slices
        pods += objs.pods
    state, clashes = resolve(build_state(services.values(), slices, pods), previous, origins)
    return LoadResult(state, (*problems, *clashes))


def load(paths: Sequence[Path]) -> LoadResult:
    return combine([(f, parse_file(f)) for f in _files(paths)])


class ManifestSource:
    """Loads manifests and reports whether they changed since the last load (by path, mtime and size). A load
    re-parses only the files whose stamp changed; services in force win conflicts against new ones."""

    def __init__(self, paths: Sequence[Path], *, backstop: float = 30.0) -> None:
        self.paths = [Path(p) for p in paths]
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._parsed: dict[tuple[str, int, int], FileObjects] = {}
        self._last: ClusterState | None = None
        self.backstop = backstop
        self._walked = 0.0
        try:
            self.watcher: Watcher | None = Watcher()
        except OSError:
            self.watcher = None

    def _directories(self) -> Iterator[Path]:
        for path in self.paths:
            if path.is_dir():
                yield path
                for root, dirs, _ in os.walk(path):
                    yield from (Path(root) / d for d in dirs)
            else:
                yield path.parent  # a file may be replaced by a rename: watch where that happens

    def _current_stamp(self) -> tuple[tuple[str, int, int], ...]:
        self._walked = time.monotonic()
        out = []
        for f in _files(self.paths):
            try:
                st = os.stat(f)
            except OSError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def changed(self) -> bool:
        if self.watcher is not None and self._stamp is not None and not self.watcher.pending() \
                and time.monotonic() - self._walked < self.backstop:
            return False
        return self._current_stamp() != self._stamp

    def load(self) -> LoadResult:
        if self.watcher is not None:
            try:  # before the walk: a change made after it is then an event
                self.watcher.rewatch(self._directories())
            except OSError:
                self.watcher.close()
                self.watcher = None
        self._stamp = self._current_stamp()
        parsed = {stamp: self._parsed.get(stamp) or parse_file(Path(stamp[0])) for stamp in self._stamp}
        self._parsed = parsed  # files that went away or changed are forgotten
        result = combine([(Path(stamp[0]), objs) for stamp, objs in parsed.items()], self._last)
        self._last = result.state
        return result

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()

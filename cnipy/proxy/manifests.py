"""The manifest source: YAML or JSON files (or directories of them) holding Services, EndpointSlices and Pods.

A bad object is reported with its file and field and skipped; everything else still loads. ``ManifestSource``
polls the files' modification times, so edits are picked up without inotify.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from cnipy.proxy.errors import ManifestError
from cnipy.proxy.model import ClusterState, EndpointSlice, Pod, Service
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


def load(paths: Sequence[Path]) -> LoadResult:
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    pods: list[Pod] = []
    problems: list[ManifestError] = []
    for file in _files(paths):
        try:
            docs = list(_documents(file))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(ManifestError(str(file), "(document)", f"cannot parse: {exc}"))
            continue
        for where, obj in docs:
            if not isinstance(obj, dict):
                problems.append(ManifestError(str(file), where.rstrip(".") or "(document)", "must be a map"))
                continue
            kind = obj.get("kind")
            try:
                if kind == "Service":
                    svc = parse_service(obj)
                    if svc is not None:
                        services.append(svc)
                elif kind == "EndpointSlice":
                    slices.append(parse_endpoint_slice(obj))
                elif kind == "Pod":
                    pods.append(parse_pod(obj))
            except FieldError as exc:
                problems.append(ManifestError(str(file), f"{where}{exc.field}", exc.message))
    return LoadResult(build_state(services, slices, pods), tuple(problems))


class ManifestSource:
    """Loads manifests and reports whether they changed since the last load (by path, mtime and size)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._stamp: tuple[tuple[str, int, int], ...] | None = None

    def _current_stamp(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for f in _files(self.paths):
            try:
                st = os.stat(f)
            except OSError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def changed(self) -> bool:
        return self._current_stamp() != self._stamp

    def load(self) -> LoadResult:
        self._stamp = self._current_stamp()
        return load(self.paths)

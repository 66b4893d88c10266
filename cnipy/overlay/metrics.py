"""A tiny Prometheus registry (text exposition format 0.0.4) and the agent's HTTP endpoint: /healthz for
readiness (200 when ready, 503 with the reason otherwise) and /metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cnipy import httpd


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._help: dict[str, tuple[str, str]] = {}

    def declare(self, name: str, kind: str, text: str) -> None:
        with self._lock:
            self._help[name] = (kind, text)
            self._values.setdefault(name, 0.0)

    def inc(self, name: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0.0) + by

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value

    def get(self, name: str) -> float:
        with self._lock:
            return self._values.get(name, 0.0)

    def render(self) -> str:
        with self._lock:
            lines = []
            for name in sorted(self._values):
                kind, text = self._help.get(name, ("untyped", ""))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {self._values[name]:.17g}"]
            return "\n".join(lines) + "\n"


class StatusServer:
    """Serves /healthz and /metrics on `address` ("host:port") in a daemon thread."""

    def __init__(self, address: str, metrics: Metrics, readiness: Callable[[], tuple[bool, str]]) -> None:
        host, _, port = address.rpartition(":")

        def respond(path: str) -> tuple[int, str, str]:
            path = path.split("?")[0]
            if path == "/metrics":
                return 200, "text/plain; version=0.0.4", metrics.render()
            if path in ("/healthz", "/readyz"):
                ok, why = readiness()
                return (200 if ok else 503), "text/plain", ("ok" if ok else f"not ready: {why}") + "\n"
            return 404, "text/plain", "not found\n"

        self.server = httpd.serve(host.strip("[]") or "127.0.0.1", int(port), respond, start=False)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        httpd.start_thread(self.server)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

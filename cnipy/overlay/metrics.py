"""A tiny Prometheus registry (text exposition format 0.0.4) and the agent's HTTP endpoint: /healthz for
readiness (200 when ready, 503 with the reason otherwise) and /metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
        metrics_ref, ready_ref = metrics, readiness

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path == "/metrics":
                    self._reply(200, metrics_ref.render(), "text/plain; version=0.0.4")
                elif self.path in ("/healthz", "/readyz"):
                    ok, why = ready_ref()
                    self._reply(200 if ok else 503, ("ok" if ok else f"not ready: {why}") + "\n", "text/plain")
                else:
                    self._reply(404, "not found\n", "text/plain")

            def _reply(self, code: int, body: str, ctype: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="status-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

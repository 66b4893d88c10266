"""HTTP endpoints: /healthz and /metrics on one server, and one server per healthCheckNodePort.

A load balancer polls a service's healthCheckNodePort to learn whether this node has local endpoints
(externalTrafficPolicy Local): 200 with the count when it has, 503 when it has none.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from cnipy import httpd
from cnipy.proxy.model import ServiceKey


class StatusServer:
    """/healthz (200 when the last sync succeeded and is recent enough) and /metrics."""

    def __init__(self, host: str, port: int, healthz: Callable[[], tuple[bool, dict[str, object]]],
                 metrics: Callable[[], str]) -> None:
        def respond(path: str) -> tuple[int, str, str]:
            if path.split("?")[0] == "/healthz":
                ok, info = healthz()
                return (200 if ok else 503), "application/json", json.dumps(info)
            if path.split("?")[0] == "/metrics":
                return 200, "text/plain; version=0.0.4", metrics()
            return 404, "text/plain", "not found\n"

        self.server = httpd.serve(host, port, respond)
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HealthCheckServers:
    """Keeps one HTTP server per healthCheckNodePort, answering with the local endpoint count."""

    def __init__(self, host: str = "0.0.0.0") -> None:
        self.host = host
        self.servers: dict[int, httpd.StatusHTTPServer] = {}
        self.state: dict[int, tuple[ServiceKey, int]] = {}
        self.errors: dict[int, str] = {}

    def update(self, wanted: dict[int, tuple[ServiceKey, int]]) -> None:
        self.state = dict(wanted)
        for port in list(self.servers):
            if port not in wanted:
                server = self.servers.pop(port)
                server.shutdown()
                server.server_close()
        for port in wanted:
            if port not in self.servers:
                try:
                    self.servers[port] = httpd.serve(self.host, port, functools.partial(self._respond, port))
                    self.errors.pop(port, None)
                except OSError as exc:  # port taken: report it, keep proxying
                    self.errors[port] = str(exc)

    def _respond(self, port: int, _path: str) -> tuple[int, str, str]:
        key, count = self.state.get(port, (ServiceKey("", ""), 0))
        body = json.dumps({"service": {"namespace": key.namespace, "name": key.name},
                           "localEndpoints": count, "serviceProxyHealthy": True})
        return (200 if count else 503), "application/json", body

    def close(self) -> None:
        self.update({})

"""A tiny threaded HTTP server for status endpoints (/healthz, /metrics, health-check node ports).

`respond(path) -> (status, content type, body)` decides every answer; the server runs in a daemon thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Responder = Callable[[str], tuple[int, str, str]]


class StatusHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StatusHTTPServer6(StatusHTTPServer):
    """An IPv6 host; "::" takes IPv4 connections too (IPV6_V6ONLY off, whatever net.ipv6.bindv6only says)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(host: str, port: int, respond: Responder, *, start: bool = True) -> StatusHTTPServer:
    """Bind `host:port` (port 0: any free port; an IPv6 host such as "::" serves both families) and, unless
    start=False, serve in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            code, ctype, body = respond(self.path)
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = (StatusHTTPServer6 if ":" in host else StatusHTTPServer)((host, port), Handler)
    if start:
        start_thread(server)
    return server


def start_thread(server: StatusHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name=f"http-{server.server_address[1]}", daemon=True)
    thread.start()
    return thread

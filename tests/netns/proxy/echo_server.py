"""Run inside an endpoint namespace: answer each TCP connection / UDP datagram with "<ident> <peer ip>".
Listens on both families ("::" with IPV6_V6ONLY off); an IPv4 peer is reported as IPv4, not ::ffff:a.b.c.d."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading


def _peer(address: str) -> str:
    return address.removeprefix("::ffff:") if "." in address else address


def main() -> None:
    ident, port = sys.argv[1], int(sys.argv[2])

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(f"{ident} {_peer(self.client_address[0])}\n".encode())

    class Server(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 512

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    tcp = Server(("::", port), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))
    print("ready", flush=True)
    while True:
        _, peer = udp.recvfrom(2048)
        udp.sendto(f"{ident} {_peer(peer[0])}\n".encode(), peer)


if __name__ == "__main__":
    main()

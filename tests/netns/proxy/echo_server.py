"""Run inside an endpoint namespace: answer each TCP connection / UDP datagram with "<ident> <peer ip>"."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading


def main() -> None:
    ident, port = sys.argv[1], int(sys.argv[2])

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(f"{ident} {self.client_address[0]}\n".encode())

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 512

    tcp = Server(("0.0.0.0", port), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        _, peer = udp.recvfrom(2048)
        udp.sendto(f"{ident} {peer[0]}\n".encode(), peer)


if __name__ == "__main__":
    main()

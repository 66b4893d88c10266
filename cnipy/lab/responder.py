"""A pod's standing TCP server for nodes outside one process (Vagrant VMs): `python -m cnipy.lab.responder NAME`.

Answers every connection with `cnipy-lab NAME PEER` (the format the check parses), then closes it. No shell is
involved, so NAME is never interpreted.
"""

from __future__ import annotations

import socket
import sys
import threading

from cnipy.lab.connectivity import PORT


def answer(conn: socket.socket, name: str, peer: str) -> None:
    with conn:
        conn.sendall(f"cnipy-lab {name} {peer}\n".encode())


def serve(name: str, port: int = PORT) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("0.0.0.0", port))
        lsock.listen(128)
        while True:
            conn, addr = lsock.accept()
            threading.Thread(target=answer, args=(conn, name, addr[0]), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isprintable() or " " in args[0]:
        print("usage: python -m cnipy.lab.responder NAME", file=sys.stderr)
        return 2
    serve(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())

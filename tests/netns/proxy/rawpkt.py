"""Run inside a namespace: send hand-made frames, or count the datagrams a local socket receives.

    rawpkt.py udp IFACE DSTMAC SRCIP DSTIP DPORT COUNT        -> one UDP datagram per Ethernet frame, straight
                                                               onto IFACE (no route lookup, so DSTIP may be 127/8)
    rawpkt.py tcp IFACE DSTMAC SRCIP DSTIP DPORT COUNT FLAGS  -> TCP segments with the given flag bits (e.g. 3:
                                                               SYN+FIN, which conntrack calls INVALID)
    rawpkt.py sink BINDIP PORT SECONDS                        -> prints "ready", then after SECONDS {"received": n}
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(src: str, dst: str, proto: int, body: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + body


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return _ip(src, dst, socket.IPPROTO_UDP,
               struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)  # checksum 0: none (IPv4)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    header = header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]
    return _ip(src, dst, socket.IPPROTO_TCP, header)


def main() -> None:
    mode = sys.argv[1]
    if mode in ("udp", "tcp"):
        iface, dst_mac, src, dst, dport, count = sys.argv[2:8]
        src_mac = bytes.fromhex(Path(f"/sys/class/net/{iface}/address").read_text().strip().replace(":", ""))
        ether = bytes.fromhex(dst_mac.replace(":", "")) + src_mac + struct.pack("!H", 0x0800)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((iface, 0))
            for i in range(int(count)):
                packet = udp(src, dst, 40000 + i, int(dport), f"raw {i}".encode()) if mode == "udp" else \
                    tcp(src, dst, 40000 + i, int(dport), int(sys.argv[8]))
                s.send(ether + packet)
        print(json.dumps({"sent": int(count)}))
        return
    bind, port, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((bind, port))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                s.recv(2048)
                received += 1
            except TimeoutError:
                break
    print(json.dumps({"received": received}), flush=True)


if __name__ == "__main__":
    main()

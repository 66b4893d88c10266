"""cnipy.netlink.conntrack: UDP flows deleted over netlink, inside a namespace of the test's own."""

from __future__ import annotations

import sys

from tests.support.netns import Netns

CODE = """
import socket, subprocess, time
from ipaddress import IPv4Address
from cnipy.netlink.conntrack import delete_udp_flows
subprocess.run(["nft", "add table ip t; add chain ip t c { type filter hook output priority 0; };"
                " add rule ip t c ct state new accept"], check=True)  # conntrack is on once a rule uses it
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in (5353, 5354, 5355):
    s.sendto(b"x", ("127.0.0.1", port))
time.sleep(0.1)
print(delete_udp_flows(destinations=[(IPv4Address("127.0.0.1"), 5353)]))
print(delete_udp_flows(reply_sources=[IPv4Address("127.0.0.2")]))
print(delete_udp_flows(destination_ports=[5355]))
print(subprocess.run(["conntrack", "-L", "-p", "udp"], capture_output=True, text=True).stdout)
"""


def test_delete_udp_flows_by_destination_and_reply_source(netns: Netns) -> None:
    out = netns.run(sys.executable, "-c", CODE).stdout.splitlines()
    assert out[0] == "1"  # the flow to :5353
    assert out[1] == "0"  # nothing replies from 127.0.0.2
    assert out[2] == "1"  # the flow to port 5355, whatever the address (a NodePort)
    assert "dport=5354" in out[3] and "dport=5353" not in out[3] and "dport=5355" not in out[3]

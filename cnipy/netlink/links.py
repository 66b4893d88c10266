"""Link verbs: plain values in, plain data out."""

from __future__ import annotations

from cnipy.netlink.route import guarded, ipr, link_index


def set_link_up(netns: str | None, name: str) -> None:
    with ipr(netns) as sock, guarded(f"set {name} up"):
        sock.link("set", index=link_index(sock, name), state="up")


def set_link_down(netns: str | None, name: str) -> None:
    with ipr(netns) as sock, guarded(f"set {name} down"):
        sock.link("set", index=link_index(sock, name), state="down")


def link_is_up(netns: str | None, name: str) -> bool:
    with ipr(netns) as sock, guarded(f"get {name}"):
        link = sock.get_links(link_index(sock, name))[0]
        return bool(link["flags"] & 1)

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from cnipy.proxy.iptables.backend import IptablesProxier
from cnipy.proxy.iptables.runner import Iptables
from cnipy.proxy.nftables.backend import NftablesProxier
from cnipy.proxy.nftables.runner import Nft
from cnipy.proxy.plan import AnyNodeConfig, NodeConfig
from cnipy.proxy.sync import Proxier
from tests.conftest import need
from tests.netns.proxy.topology import Topology, build
from tests.support.netns import Netns

MakeProxier = Callable[[Netns, NodeConfig], Proxier]


def make_proxier(mode: str, ns: Netns, cfg: AnyNodeConfig) -> Proxier:
    """The proxier of ``cfg``'s IP family: table ip/ip6 cnipy, or iptables/ip6tables."""
    prefix = ("ip", "netns", "exec", ns.name)
    if mode == "nftables":
        return NftablesProxier(Nft("ip6" if cfg.ip_family == 6 else "ip", prefix=prefix), cfg)
    return IptablesProxier(Iptables("legacy" if mode == "iptables-legacy" else "nft", prefix=prefix,
                                    family=cfg.ip_family), cfg)


@pytest.fixture(params=["nftables", "iptables"])
def mode(request: pytest.FixtureRequest) -> str:
    need("nft" if request.param == "nftables" else "iptables-restore")
    return str(request.param)


@pytest.fixture
def topo_factory(netns_factory: Callable[[], Netns]) -> Iterator[Callable[..., Topology]]:
    made: list[Topology] = []

    def factory(n_endpoints: int, **kw: object) -> Topology:
        t = build(netns_factory, n_endpoints, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield factory
    for t in made:
        t.close()

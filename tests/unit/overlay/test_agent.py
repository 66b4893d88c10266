"""Agents on the fakes (FakeEtcd, FakeKernel, a given underlay): no root, real threads and timing."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cnipy.netlink.vxlan import Underlay
from cnipy.overlay.agent import Agent, AgentOptions
from cnipy.overlay.etcd import FakeEtcd
from cnipy.overlay.kernel import FakeKernel
from cnipy.overlay.leases import LeaseStore
from cnipy.overlay.metrics import StatusServer

CONF = {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[[str], tuple[Agent, FakeKernel]]]:
    etcd = FakeEtcd()
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps(CONF))
    agents: list[Agent] = []

    def start(name: str) -> tuple[Agent, FakeKernel]:
        i = len(agents) + 1
        kernel = FakeKernel(devices={"eth0"})
        opts = AgentOptions(node=name, etcd="fake", network_config=conf, subnet_file=tmp_path / name / "subnet.env",
                            lease_ttl=2, resync=0.5, listen=None, masquerade_rules=False, retry=0.1,
                            monitor=False)
        underlay = Underlay("eth0", ipaddress.IPv4Interface(f"172.30.1.{10 + i}/24"), 1500)
        agent = Agent(opts, LeaseStore(etcd, ttl=2), kernel, underlay)
        agent.etcd = etcd  # type: ignore[attr-defined]
        agents.append(agent)
        agent.start()
        return agent, kernel

    yield start
    for agent in agents:
        agent.stop()


def test_two_agents_program_each_other_and_a_leaving_node_is_removed(
        cluster: Callable[[str], tuple[Agent, FakeKernel]]) -> None:
    a, ka = cluster("a")
    b, kb = cluster("b")
    eventually(lambda: a.state.ready and b.state.ready and len(ka.routes()) == 1 and len(kb.routes()) == 1)
    assert a.state.lease is not None and b.state.lease is not None
    assert ka.routes()[0].dst == b.state.lease.subnet and str(ka.routes()[0].gateway) == "172.30.1.12"
    text = a.opts.subnet_file.read_text()
    assert f"CNIPY_SUBNET={a.state.lease.subnet.network_address + 1}/24" in text and "CNIPY_MTU=1500" in text
    b.stop(release=True)
    eventually(lambda: ka.routes() == [])


def test_a_crashed_node_expires_after_its_ttl(cluster: Callable[[str], tuple[Agent, FakeKernel]]) -> None:
    a, ka = cluster("a")
    b, _ = cluster("b")
    eventually(lambda: len(ka.routes()) == 1)
    b.stop(release=False)  # no keep-alive any more, lease not given back
    eventually(lambda: ka.routes() == [], timeout=5)


def test_a_route_removed_by_hand_comes_back_on_resync(cluster: Callable[[str], tuple[Agent, FakeKernel]]) -> None:
    a, ka = cluster("a")
    cluster("b")
    eventually(lambda: len(ka.routes()) == 1)
    ka.delete_route(ka.routes()[0])
    eventually(lambda: len(ka.routes()) == 1, timeout=2)


def test_store_outage_keeps_routes_and_renews_after(cluster: Callable[[str], tuple[Agent, FakeKernel]]) -> None:
    a, ka = cluster("a")
    cluster("b")
    eventually(lambda: len(ka.routes()) == 1)
    etcd: FakeEtcd = a.etcd  # type: ignore[attr-defined]
    etcd.down = True
    time.sleep(1.5)
    assert len(ka.routes()) == 1  # the kernel keeps what it has
    assert a.metrics.get("cnipy_overlay_store_errors_total") > 0
    renewed = a.metrics.get("cnipy_overlay_lease_renewals_total")
    etcd.down = False
    eventually(lambda: a.metrics.get("cnipy_overlay_lease_renewals_total") > renewed)
    assert len(ka.routes()) == 1


def test_readiness_and_metrics_over_http() -> None:
    from urllib.request import urlopen

    agent = Agent(AgentOptions(node="x", etcd="fake", listen=None), LeaseStore(FakeEtcd()), FakeKernel())
    server = StatusServer("127.0.0.1:0", agent.metrics, agent.readiness)
    server.start()
    try:
        with pytest.raises(Exception, match="503"):
            urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2)
        agent.state.ready = True
        assert urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2).status == 200
        body = urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2).read().decode()
        assert "# TYPE cnipy_overlay_peers gauge" in body and "cnipy_overlay_reconciles_total 0" in body
    finally:
        server.stop()


def test_a_restarted_agent_keeps_its_subnet(cluster: Callable[[str], tuple[Agent, FakeKernel]]) -> None:
    a, _ = cluster("a")
    eventually(lambda: a.state.ready)
    assert a.state.lease is not None
    first = a.state.lease.subnet
    a.stop(release=False)
    again, _ = cluster("a")  # (the fixture gives it another underlay address: the lease follows)
    eventually(lambda: again.state.ready)
    assert again.state.lease is not None and again.state.lease.subnet == first

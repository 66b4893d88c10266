"""The etcd source against a real etcd (Debian's etcd-server) on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnipy.overlay.etcd import Client
from cnipy.proxy.etcdsource import EtcdSource
from cnipy.proxy.model import ServiceKey
from tests.conftest import need

P = "/cnipy.io/proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Client]:
    need("etcd")
    client_port, peer_port = free_port(), free_port()
    url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    proc = subprocess.Popen(
        ["etcd", "--name", "cpx", "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"cpx={peer}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Client(url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.get("/")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def snapshot_with(src: EtcdSource, key: ServiceKey, timeout: float = 10) -> set[ServiceKey]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = src.poll()
        if got is not None and key in got[0].services:
            return set(got[0].services)
        time.sleep(0.05)
    raise AssertionError(f"{key} never appeared")


def test_real_etcd_list_and_watch(etcd: Client) -> None:
    def svc(ip: str) -> str:
        return json.dumps({"kind": "Service", "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})

    etcd.put(f"{P}/services/default/web", svc("10.96.0.10"))
    src = EtcdSource(etcd, P, min_backoff=0.05, max_backoff=0.2)
    try:
        assert snapshot_with(src, ServiceKey("default", "web")) == {ServiceKey("default", "web")}  # listed
        etcd.put(f"{P}/services/default/api", svc("10.96.0.11"))  # watched
        assert snapshot_with(src, ServiceKey("default", "api")) == {ServiceKey("default", "web"),
                                                                    ServiceKey("default", "api")}
    finally:
        src.stop()

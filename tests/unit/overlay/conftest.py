from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from cnipy.overlay.etcd import Etcd, FakeEtcd, FileEtcd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["fake", "file"])
def etcd(request: pytest.FixtureRequest, tmp_path: Path) -> Etcd:
    """The same tests run against the fake and the file-backed store here, and against a real etcd in
    tests/integration/overlay (which collects these very tests with its own `etcd` fixture)."""
    if request.param == "fake":
        return FakeEtcd()
    return FileEtcd(str(tmp_path / "leases.json"))


@pytest.fixture
def prefix() -> str:
    return f"/t{time.monotonic_ns()}"

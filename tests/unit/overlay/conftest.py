from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnipy.overlay.etcd import Client, Etcd, FakeEtcd, FileEtcd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def etcd_url() -> Iterator[str]:
    """A real etcd (Debian etcd-server) on 127.0.0.1, random ports, temporary data dir; stopped at the end."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (bin/setup --test installs etcd-server)")
    data = Path(tempfile.mkdtemp(prefix="cnipy-etcd-"))
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(["etcd", "--name", "t", "--data-dir", str(data / "d"), "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                Client(url, timeout=1).get("/probe")
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("etcd did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(params=["fake", "file", "real"])
def etcd(request: pytest.FixtureRequest, tmp_path: Path) -> Etcd:
    """The same tests run against the fake, the file-backed store and a real etcd (fresh prefix per test)."""
    if request.param == "fake":
        return FakeEtcd()
    if request.param == "file":
        return FileEtcd(str(tmp_path / "leases.json"))
    return Client(request.getfixturevalue("etcd_url"))


@pytest.fixture
def prefix() -> str:
    return f"/t{time.monotonic_ns()}"

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnipy.overlay.etcd import Client, Etcd
from tests.unit.overlay.conftest import free_port, prefix  # noqa: F401 (fixture)


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


@pytest.fixture
def etcd(etcd_url: str) -> Etcd:
    """A real etcd; each test works under its own fresh prefix."""
    return Client(etcd_url)

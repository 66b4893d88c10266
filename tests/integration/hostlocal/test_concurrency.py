"""Concurrency and crashes: parallel executables on one pool, and plugins SIGKILLed in the middle of ADD."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.cni import GO_HOST_LOCAL, OURS, env, hostlocal_conf, run_exec, state_files


def addresses(data_dir: Path) -> dict[str, bytes]:
    return {k: v for k, v in state_files(data_dir).items() if k[0].isdigit()}


def test_64_parallel_adds_get_64_distinct_addresses(tmp_path: Path) -> None:
    conf = hostlocal_conf(tmp_path)
    with ThreadPoolExecutor(64) as pool:
        runs = list(pool.map(lambda i: run_exec(OURS, env("ADD", f"p{i}"), conf, timeout=120), range(64)))
    assert [r.code for r in runs] == [0] * 64, [r.stdout for r in runs if r.code]
    got = [r.json["ips"][0]["address"].split("/")[0] for r in runs]
    assert len(set(got)) == 64
    files = addresses(tmp_path)
    assert set(files) == set(got)
    assert {files[a] for a in got} == {f"p{i}\r\neth0".encode() for i in range(64)}
    with ThreadPoolExecutor(64) as pool:
        dels = list(pool.map(lambda i: run_exec(OURS, env("DEL", f"p{i}"), conf, timeout=120), range(64)))
    assert all(r.code == 0 for r in dels) and addresses(tmp_path) == {}


def start(conf: dict[str, Any], container: str, **extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(OURS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env("ADD", container, **extra))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def finish(proc: subprocess.Popen[bytes], timeout: float = 10) -> tuple[int, bytes]:
    proc.wait(timeout)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, out


def gc(conf: dict[str, Any], valid: list[str]) -> None:
    c = dict(conf, cniVersion="1.1.0")
    c["cni.dev/valid-attachments"] = [{"containerID": v, "ifname": "eth0"} for v in valid]
    run = run_exec(OURS, env("GC"), c)
    assert run.code == 0, run


def test_killed_while_holding_the_lock(tmp_path: Path) -> None:
    """The test seam pauses ADD after reserving, lock held; SIGKILL there must not block the next ADD."""
    conf = hostlocal_conf(tmp_path)
    victim = start(conf, "victim", CNIPY_TEST_PAUSE_AFTER_RESERVE="30")
    try:
        deadline = time.monotonic() + 15
        while b"victim\r\neth0" not in addresses(tmp_path).values():
            assert victim.poll() is None, finish(victim)
            assert time.monotonic() < deadline, "the paused ADD never reserved"
            time.sleep(0.01)
        # While it holds the lock, another ADD waits (proves the pause really is inside the lock).
        waiting = start(conf, "waiter")
        time.sleep(0.3)
        assert waiting.poll() is None
    finally:
        kill(victim)
    code, out = finish(waiting)
    assert code == 0, out
    t0 = time.monotonic()
    for plugin, cid in ((OURS, "next"), (GO_HOST_LOCAL, "go-next")):
        run = run_exec(plugin, env("ADD", cid), conf, timeout=10)
        assert run.code == 0, run
    assert time.monotonic() - t0 < 5
    files = addresses(tmp_path)
    assert sorted(files.values()) == [b"go-next\r\neth0", b"next\r\neth0", b"victim\r\neth0", b"waiter\r\neth0"]
    gc(conf, ["next", "go-next", "waiter"])
    assert sorted(addresses(tmp_path).values()) == [b"go-next\r\neth0", b"next\r\neth0", b"waiter\r\neth0"]


def test_killed_at_random_moments(tmp_path: Path) -> None:
    """Bounded loop: ADDs killed at random times; afterwards ADD works and GC leaves exactly the finished ones."""
    conf = hostlocal_conf(tmp_path)
    seed = int(os.environ.get("CNIPY_TEST_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)  # reported on failure; set CNIPY_TEST_SEED to replay the kill times
    finished: dict[str, str] = {}
    durations = []
    for i in range(3):  # calibrate: kill times should cluster where the work is, after interpreter start-up
        t0 = time.monotonic()
        run = run_exec(OURS, env("ADD", f"cal{i}"), conf)
        durations.append(time.monotonic() - t0)
        finished[f"cal{i}"] = run.json["ips"][0]["address"].split("/")[0]
    typical = sorted(durations)[1]
    for i in range(16):
        proc = start(conf, f"k{i}")
        time.sleep(rng.uniform(0.5, 1.1) * typical)
        if proc.poll() is None:
            kill(proc)
            continue
        code, out = finish(proc)
        if code == 0:
            finished[f"k{i}"] = json.loads(out)["ips"][0]["address"].split("/")[0]
    probe = run_exec(OURS, env("ADD", "probe"), conf, timeout=10)
    assert probe.code == 0, (seed, probe)
    finished["probe"] = probe.json["ips"][0]["address"].split("/")[0]
    assert len(set(finished.values())) == len(finished), seed
    gc(conf, sorted(finished))
    files = addresses(tmp_path)
    assert files == {ip: f"{cid}\r\neth0".encode() for cid, ip in finished.items()}, seed


def test_status_and_add_on_a_read_only_data_dir(tmp_path: Path) -> None:
    """dataDir on a read-only file system (a private mount namespace, so nothing leaks): STATUS says 50, ADD 5."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) missing")
    ro = tmp_path / "ro"
    ro.mkdir()
    conf = hostlocal_conf(ro, version="1.1.0")
    for verb, code in (("STATUS", 50), ("ADD", 5)):
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f'mount -t tmpfs -o ro cnhro "{ro}" && exec "{OURS}"'],
                              input=json.dumps(conf).encode(), env=env(verb), capture_output=True, timeout=30,
                              check=False)
        assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == code, (verb, proc)
    assert list(ro.iterdir()) == []

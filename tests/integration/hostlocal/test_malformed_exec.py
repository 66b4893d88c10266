"""The malformed-request corpus against the real executables (as a runtime would call them)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cni import OURS, PLUGINS, all_paths, env, hostlocal_conf, run_exec
from tests.support.malformed import CASES, Case, check_error, request_for

# A meaningful subset: every category, including the huge and deeply nested inputs.
SUBSET = [c for i, c in enumerate(CASES) if i % 3 == 0 or c.code in (1, 6)]


def test_corpus_through_the_executable(tmp_path: Path) -> None:
    def one(item: tuple[int, Case]) -> str | None:
        i, case = item
        root = tmp_path / str(i)
        (root / "data").mkdir(parents=True)
        environ, stdin = request_for(case, env("ADD"), hostlocal_conf(root / "data"))
        run = run_exec(OURS, environ, stdin)
        try:
            check_error(run.stdout, run.stderr, run.code, case.code)
            assert all_paths(root) == ["data"], all_paths(root)
        except (AssertionError, ValueError) as exc:
            return f"{case.name}: {exc!r} stdout={run.stdout[:200]!r} stderr={run.stderr[:200]!r}"
        return None

    with ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(one, enumerate(SUBSET)) if f]
    assert len(SUBSET) >= 40
    assert failures == []


@pytest.mark.parametrize("plugin", ["cnipy-host-local", "cnipy-loopback"])
def test_about_text_without_command(plugin: str) -> None:
    run = run_exec(PLUGINS / plugin, {"PATH": "/usr/bin:/bin", "CNIPY_CNI_SOCKET": ""}, b"")
    assert run.code == 0 and run.stdout == b""
    assert b"CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in run.stderr


def test_version_through_the_executable() -> None:
    run = run_exec(OURS, {"CNI_COMMAND": "VERSION", "CNIPY_CNI_SOCKET": ""}, b'{"cniVersion":"0.4.0"}')
    assert run.code == 0 and json.loads(run.stdout) == {
        "cniVersion": "0.4.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_closed_stdin_and_unwritable_stdout_do_not_traceback(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run([str(OURS)], env=env("ADD"), stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6 and b"Traceback" not in proc.stderr

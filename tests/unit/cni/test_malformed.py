"""Malformed requests, in-process: the static corpus plus hypothesis-generated ones.

Each must give a spec error with the expected code, a non-zero exit, no traceback and nothing on disk. The same
corpus runs against the executables in tests/integration/hostlocal/test_malformed_exec.py.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnipy.cni.skel import execute
from cnipy.plugins import hostlocal, loopback
from tests.support.cni import all_paths, env, hostlocal_conf
from tests.support.malformed import CASES, Case, check_error, request_for

assert len(CASES) >= 100, len(CASES)


def sandbox(tmp: Path) -> tuple[Path, dict[str, Any]]:
    root = tmp / "root"
    (root / "data").mkdir(parents=True)
    return root, hostlocal_conf(root / "data")


def run_case(case: Case, tmp: Path) -> None:
    if tmp.exists():  # hypothesis reuses the test's tmp_path: one fresh directory per example
        tmp = Path(tempfile.mkdtemp(dir=tmp))
    root, conf = sandbox(tmp)
    environ, stdin = request_for(case, env("ADD"), conf)
    out = execute(hostlocal, environ, stdin)
    check_error(out.stdout, out.stderr, out.exit_code, case.code)
    assert all_paths(root) == ["data"], all_paths(root)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_in_process(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)


@pytest.mark.parametrize("case", [c for c in CASES if c.code in (1, 4, 6) and not c.name.startswith("hostlocal-")],
                         ids=lambda c: c.name)
def test_corpus_against_loopback(case: Case, tmp_path: Path) -> None:
    """Protocol-level errors come from the shared layer before loopback touches the kernel."""
    environ, stdin = request_for(case, env("ADD"), {"cniVersion": "1.0.0", "name": "lo", "type": "cnipy-loopback"})
    out = execute(loopback, environ, stdin)
    check_error(out.stdout, out.stderr, out.exit_code, case.code)


_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(st.text(min_size=1, max_size=40).filter(lambda s: not _VALID_ID.fullmatch(s) or ".." in s)
       .filter(lambda s: "\0" not in s))
def test_generated_bad_container_ids(tmp_path: Path, cid: str) -> None:
    run_case(Case("gen-cid", 4, env={"CNI_CONTAINERID": cid}), tmp_path / "x")


@_settings
@given(st.text(min_size=1, max_size=40).filter(lambda s: not _VALID_ID.fullmatch(s) or ".." in s))
def test_generated_bad_network_names(tmp_path: Path, name: str) -> None:
    run_case(Case("gen-name", 7, edit=lambda c: c.__setitem__("name", name)), tmp_path / "x")


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=10)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@_settings
@given(st.sampled_from(["ipam.subnet", "ipam.ranges", "ipam.routes", "ipam.dataDir", "runtimeConfig.ips",
                        "args.cni.ips", "ipam.gateway", "runtimeConfig.ipRanges"]),
       _json.filter(lambda v: v not in (None, "", [], {}) and not (isinstance(v, list) and v == [[]])))
def test_generated_wrong_values(tmp_path: Path, path: str, value: Any) -> None:
    def edit(conf: dict[str, Any]) -> None:
        node = conf
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    run_case(Case("gen-value", 7, edit=edit), tmp_path / "x")


@_settings
@given(st.binary(max_size=64).filter(lambda b: not _is_json(b)))
def test_generated_garbage_stdin(tmp_path: Path, data: bytes) -> None:
    run_case(Case("gen-stdin", 6, stdin=data), tmp_path / "x")


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


_TOP_KEYS = ["cniVersion", "cniVersions", "name", "type", "ipam", "dns", "prevResult", "runtimeConfig", "args",
             "capabilities", "cni.dev/valid-attachments", "cni.dev/attachments"]
_IPAM_KEYS = ["subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes", "resolvConf"]


@settings(max_examples=int(os.environ.get("CNIPY_FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
       st.dictionaries(st.sampled_from(_TOP_KEYS), _json, max_size=3),
       st.dictionaries(st.sampled_from(_IPAM_KEYS), _json, max_size=3))
def test_no_input_is_an_internal_error(tmp_path: Path, verb: str, top: dict[str, Any], ipam: dict[str, Any]) -> None:
    """Whatever the values, a call answers success or a spec error; never code 100 (a bug), never a traceback."""
    tmp = Path(tempfile.mkdtemp(dir=tmp_path))
    conf = hostlocal_conf(tmp, version="1.1.0")
    conf.update(top)
    if isinstance(conf.get("ipam"), dict):
        conf["ipam"].update(ipam)
        conf["ipam"]["dataDir"] = str(tmp)  # never let generated input choose where to write
    out = execute(hostlocal, env(verb), json.dumps(conf).encode())
    assert b"Traceback" not in out.stdout + out.stderr
    if out.exit_code != 0:
        err = json.loads(out.stdout)
        assert err["code"] not in (0, 100), (err, conf)


_addr_like = st.sampled_from(["10.0.0.0/24", "10.0.0.0/30", "10.0.0.5/24", "10.0.0.0/32", "10.0.0.1", "10.0.0.254",
                              "10.0.1.1", "::/0", "fd00::/64", "fd00::/127", "fd00::1", "::ffff:10.0.0.1",
                              "::ffff:10.0.0.0/120", "0.0.0.0/0", "255.255.255.255", "", " ", "10.0.0.0/24 "]) \
    | _scalars
_range = st.dictionaries(st.sampled_from(["subnet", "rangeStart", "rangeEnd", "gateway"]), _addr_like, max_size=4)


@settings(max_examples=int(os.environ.get("CNIPY_FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["ADD", "DEL", "CHECK", "STATUS"]), st.lists(st.lists(_range, max_size=3), max_size=3),
       st.lists(_addr_like, max_size=3), st.one_of(st.none(), _addr_like))
def test_no_range_layout_is_an_internal_error(tmp_path: Path, verb: str, ranges: list[Any], ips: list[Any],
                                              env_ip: Any) -> None:
    """Plausible and implausible range layouts and requested addresses, deep in the config: never code 100."""
    tmp = Path(tempfile.mkdtemp(dir=tmp_path))
    conf = hostlocal_conf(tmp, version="1.1.0", ranges=ranges)
    conf["runtimeConfig"] = {"ips": ips}
    extra = {"CNI_ARGS": f"IP={env_ip}"} if isinstance(env_ip, str) and ";" not in env_ip else {}
    out = execute(hostlocal, env(verb, **extra), json.dumps(conf).encode())
    assert b"Traceback" not in out.stdout + out.stderr
    if out.exit_code != 0:
        assert json.loads(out.stdout)["code"] not in (0, 100), (json.loads(out.stdout), conf)

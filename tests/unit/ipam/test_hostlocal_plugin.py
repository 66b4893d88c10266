"""cnipy-host-local's verbs in-process (the executable-level tests are in tests/integration/hostlocal)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnipy.cni.skel import execute
from cnipy.plugins import hostlocal
from tests.support.cni import env, hostlocal_conf


def call(verb: str, conf: dict[str, Any], container: str = "ctr1", ifname: str = "eth0",
         **extra: str) -> tuple[int, Any]:
    out = execute(hostlocal, env(verb, container, ifname, **extra), json.dumps(conf).encode())
    assert b"Traceback" not in out.stdout + out.stderr
    return out.exit_code, (json.loads(out.stdout) if out.stdout.strip() else None)


def conf11(tmp: Path, **ipam: Any) -> dict[str, Any]:
    return hostlocal_conf(tmp, version="1.1.0", **ipam)


def test_status(tmp_path: Path) -> None:
    c = conf11(tmp_path, subnet="10.5.0.0/29")  # 5 usable addresses
    assert call("STATUS", c) == (0, None)
    assert list(tmp_path.iterdir()) == []  # STATUS creates nothing
    for i in range(5):
        assert call("ADD", c, f"c{i}")[0] == 0
    code, out = call("STATUS", c)
    assert code == 1 and out["code"] == 50 and "exhausted" in out["msg"]
    assert call("DEL", c, "c3")[0] == 0
    assert call("STATUS", c) == (0, None)


def test_status_unusable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = call("STATUS", conf11(blocker / "data"))
    assert out["code"] == 50
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cnhnet").write_text("not a directory")
    code, out = call("STATUS", conf11(tmp_path / "d"))
    assert out["code"] == 50
    code, out = call("ADD", conf11(tmp_path / "d"))
    assert out["code"] == 5


def test_del_is_idempotent_and_creates_nothing(tmp_path: Path) -> None:
    c = hostlocal_conf(tmp_path)
    assert call("DEL", c, "unknown") == (0, None)
    assert list(tmp_path.iterdir()) == []
    assert call("ADD", c)[0] == 0
    assert call("DEL", c) == (0, None)
    assert call("DEL", c) == (0, None)
    assert sorted(p.name for p in (tmp_path / "cnhnet").iterdir()) == ["last_reserved_ip.0", "lock"]


def test_check(tmp_path: Path) -> None:
    c = hostlocal_conf(tmp_path, ranges=[[{"subnet": "10.6.0.0/24"}], [{"subnet": "fd00:6::/64"}]])
    assert call("CHECK", c)[1]["code"] == 3  # nothing on disk at all
    assert call("ADD", c)[0] == 0
    assert call("CHECK", c) == (0, None)
    assert call("CHECK", c, ifname="eth1")[1]["code"] == 3
    assert call("CHECK", c, container="other")[1]["code"] == 3
    # The config gained a range set the container has no address in: CHECK says so.
    more = json.loads(json.dumps(c))
    more["ipam"]["ranges"].append([{"subnet": "10.7.0.0/24"}])
    assert call("CHECK", more)[1]["code"] == 3
    # prevResult addresses of our ranges must be held by this container.
    prev = json.loads(json.dumps(c))
    prev["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": "10.6.0.99/24"}]}
    assert call("CHECK", prev)[1]["code"] == 3
    prev["prevResult"]["ips"] = [{"address": "10.6.0.2/24"}, {"address": "192.168.9.9/24"}]
    assert call("CHECK", prev) == (0, None)


def test_gc_accepts_both_attachment_keys(tmp_path: Path) -> None:
    c = conf11(tmp_path)
    for cid in ("a", "b", "c"):
        assert call("ADD", c, cid)[0] == 0
    c["cni.dev/attachments"] = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "eth0"}]
    assert call("GC", c) == (0, None)
    held = {p.read_bytes() for p in (tmp_path / "cnhnet").iterdir() if p.name[0].isdigit()}
    assert held == {b"a\r\neth0", b"b\r\neth0"}
    c["cni.dev/valid-attachments"] = [{"containerID": "b", "ifname": "eth0"}]  # the newer key wins
    assert call("GC", c) == (0, None)
    held = {p.read_bytes() for p in (tmp_path / "cnhnet").iterdir() if p.name[0].isdigit()}
    assert held == {b"b\r\neth0"}


def test_gc_on_a_network_never_used(tmp_path: Path) -> None:
    c = conf11(tmp_path)
    c["cni.dev/valid-attachments"] = []
    assert call("GC", c) == (0, None)
    assert list(tmp_path.iterdir()) == []


def test_resolv_conf_and_errors(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 10.0.0.53\nsearch a b\n")
    code, out = call("ADD", hostlocal_conf(tmp_path / "d", resolvConf=str(rc)))
    assert out["dns"] == {"nameservers": ["10.0.0.53"], "search": ["a", "b"]}
    code, out = call("ADD", hostlocal_conf(tmp_path / "e", resolvConf=str(tmp_path / "missing")))
    assert out["code"] == 5 and not (tmp_path / "e").exists()


def test_requested_ip_errors_have_codes(tmp_path: Path) -> None:
    c = hostlocal_conf(tmp_path)
    assert call("ADD", c, "a", CNI_ARGS="IP=10.77.0.9")[1]["ips"][0]["address"] == "10.77.0.9/24"
    assert call("ADD", c, "b", CNI_ARGS="IP=10.77.0.9")[1]["code"] == 102
    assert call("ADD", c, "b", CNI_ARGS="IP=10.99.0.9")[1]["code"] == 102
    assert call("ADD", c, "a")[1]["code"] == 102  # duplicate allocation
    full = hostlocal_conf(tmp_path / "f", subnet="10.8.0.0/30")
    assert call("ADD", full, "a")[0] == 0
    assert call("ADD", full, "b")[1]["code"] == 101

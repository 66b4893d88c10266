from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cnipy.cni.skel import execute
from cnipy.plugins import overlay

ROOT = Path(__file__).resolve().parents[3]


def call(command: str, tmp: Path, **conf: object) -> tuple[int, dict[str, object]]:
    cfg = {"cniVersion": "1.1.0", "name": "pods", "type": "cnipy-overlay",
           "subnetFile": str(tmp / "subnet.env"), "dataDir": str(tmp / "state"), **conf}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/nope", "CNI_IFNAME": "eth0",
           "CNI_PATH": str(tmp / "bin")}
    out = execute(overlay, env, json.dumps(cfg).encode())
    return out.exit_code, json.loads(out.stdout) if out.stdout.strip() else {}


def test_add_before_the_agent_is_ready_is_try_again_later(tmp_path: Path) -> None:
    code, err = call("ADD", tmp_path)
    assert code == 1 and err["code"] == 11 and "subnet.env" in str(err["details"])


def test_status_names_what_is_missing(tmp_path: Path) -> None:
    code, err = call("STATUS", tmp_path)
    assert code == 1 and err["code"] == 50
    assert "subnet file" in str(err["details"]) and "cnipy-bridge" in str(err["details"])


def test_del_without_saved_state_succeeds(tmp_path: Path) -> None:
    assert call("DEL", tmp_path)[0] == 0


def test_state_dir_must_be_a_clean_absolute_path(tmp_path: Path) -> None:
    code, err = call("DEL", tmp_path, dataDir="/var/lib/../../etc")
    assert code == 1 and err["code"] == 7


def test_delegate_config_derived_then_overridden(tmp_path: Path) -> None:
    from cnipy.cni.request import Request, parse_netconf
    from cnipy.overlay import subnetfile

    sub = subnetfile.parse("CNIPY_NETWORK=10.244.0.0/16\nCNIPY_SUBNET=10.244.3.1/24\nCNIPY_MTU=1450\n"
                           "CNIPY_IPMASQ=true\n")
    raw = {"cniVersion": "1.0.0", "name": "pods", "type": "cnipy-overlay",
           "delegate": {"bridge": "pods0", "ipam": {"dataDir": "/tmp/x"}}, "mtu": 1400}
    conf = parse_netconf(json.dumps(raw).encode())
    req = Request("ADD", "c1", "/run/netns/x", "eth0", {}, (), conf, b"", {})
    out = overlay.delegate_config(req, sub)
    assert out["type"] == "cnipy-bridge" and out["bridge"] == "pods0" and out["mtu"] == 1400
    assert out["ipMasq"] is False and out["isGateway"] is True
    assert out["ipam"] == {"type": "cnipy-host-local", "ranges": [[{"subnet": "10.244.3.0/24"}]],
                           "routes": [{"dst": "10.244.0.0/16"}], "dataDir": "/tmp/x"}


def test_plugin_import_path_is_lean() -> None:
    code = ("import sys; import cnipy.plugins.overlay; "
            "bad = [m for m in ('pyroute2', 'click', 'cnipy.overlay.etcd', 'cnipy.overlay.agent', 'http.client') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"

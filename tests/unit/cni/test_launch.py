"""The launcher (cnipy/cni/launch.py) answers in CNI JSON even when the plugin can not be loaded."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.cni import ROOT, env

LAUNCH = str(ROOT / "cnipy" / "cni" / "launch.py")


def test_unknown_plugin_is_a_cni_error() -> None:
    proc = subprocess.run([sys.executable, "-I", "-S", LAUNCH, "no-such-plugin"], env=env("ADD"),
                          input=b'{"cniVersion":"0.4.0","name":"n","type":"t"}', capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 1 and b"Traceback" not in proc.stdout + proc.stderr
    err = json.loads(proc.stdout)
    assert err["code"] == 100 and err["cniVersion"] == "0.4.0" and "no-such-plugin" in err["msg"]


def test_version_of_an_unknown_plugin_still_answers() -> None:
    proc = subprocess.run([sys.executable, "-I", "-S", LAUNCH, "no-such-plugin"], env=env("VERSION"), input=b"",
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.1.0"

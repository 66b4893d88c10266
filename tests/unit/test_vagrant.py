"""vagrant/: the Vagrantfile validates (Debian's vagrant) and every provisioning script passes shellcheck.

`vagrant validate` checks the configuration of every provider it can load: libvirt through Debian's
vagrant-libvirt plugin; VirtualBox needs VBoxManage for that, so it is validated with --ignore-provider.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from cnipy.lab.static import route_line
from cnipy.lab.vmnode import vm_lab

ROOT = Path(__file__).resolve().parents[2]
VAGRANT = ROOT / "vagrant"
SCRIPTS = sorted([*VAGRANT.glob("provision/*.sh"), VAGRANT / "run-e2e.sh"])


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{tool} is missing (bin/setup --test installs it)")
        pytest.skip(f"{tool} is missing (bin/setup --test installs it)")
    return path


def vagrant(tmp_path: Path, *args: str, provider: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    if provider:
        env["VAGRANT_DEFAULT_PROVIDER"] = provider
    return subprocess.run([need("vagrant"), *args], cwd=VAGRANT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_vagrantfile_validates(tmp_path: Path) -> None:
    # The provider-independent part, as VirtualBox sees it (without VBoxManage its own checks can not run).
    result = vagrant(tmp_path, "validate", "--ignore-provider", provider="virtualbox")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    assert not (VAGRANT / ".vagrant").exists()


def test_vagrantfile_validates_with_the_libvirt_provider(tmp_path: Path) -> None:
    if "vagrant-libvirt" not in vagrant(tmp_path, "plugin", "list").stdout:
        message = "the vagrant-libvirt plugin is missing (Debian vagrant-libvirt; bin/setup --test installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    full = vagrant(tmp_path, "validate", provider="libvirt")  # including the libvirt provider's own checks
    assert full.returncode == 0, full.stdout + full.stderr
    assert "validated successfully" in full.stdout


def test_vagrantfile_defines_three_nodes_for_both_providers() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    assert 'ENV.fetch("CNIPY_NODES", "3")' in text and "debian/bookworm64" in text
    assert 'provider "virtualbox"' in text and 'provider "libvirt"' in text
    for script in ("provision/common.sh", "provision/node.sh"):
        assert script in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(VAGRANT)))
def test_scripts_pass_shellcheck(script: Path) -> None:
    result = subprocess.run([need("shellcheck"), "--severity=style", str(script)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout
    assert os.access(script, os.X_OK)


def test_vm_nodes_use_the_lab_plan_on_the_vagrant_network() -> None:
    lab = vm_lab(3, 2, IPv4Network("192.168.56.0/24"))
    n1, n2, _ = lab.nodes
    assert n2.underlay_ip == IPv4Interface("192.168.56.12/24") and n2.netns == ""
    assert str(n2.pod_cidr) == "10.244.2.0/24"
    assert route_line(lab, n1, n2, "eth1") == "route replace 10.244.2.0/24 via 192.168.56.12 dev eth1"
    assert [p.netns for p in lab.pods_on(n1)] == ["vm-n1-p1", "vm-n1-p2"]

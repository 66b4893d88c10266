from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from cnipy.overlay import config as C
from cnipy.overlay import subnetfile


def test_default_is_flannels() -> None:
    conf = C.default()
    assert str(conf.network) == "10.244.0.0/16" and conf.subnet_len == 24
    assert str(conf.subnet_min) == "10.244.1.0/24" and str(conf.subnet_max) == "10.244.254.0/24"
    assert conf.backend.type == "vxlan" and conf.backend.device_name == "cnipy.1" and conf.masquerade
    assert len(list(conf.subnets())) == 254


def test_flannel_net_conf_and_round_trip() -> None:
    conf = C.loads('{"Network": "10.10.0.0/16", "SubnetLen": 26, "SubnetMin": "10.10.0.64",'
                   ' "Backend": {"Type": "host-gw"}}')
    assert conf.subnet_min == ipaddress.IPv4Network("10.10.0.64/26") and conf.backend.type == "host-gw"
    assert C.parse(conf.to_json()) == conf


@pytest.mark.parametrize("raw, key", [
    ({"Network": "bogus"}, "Network"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 8}, "SubnetLen"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "udp"}}, "Backend.Type"),
    ({"Network": "10.0.0.0/16", "Backend": {"VNI": -1}}, "VNI"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}, "SubnetMin"),
    ({"Network": "10.0.0.0/16", "Masquerade": "yes"}, "Masquerade"),
])
def test_bad_config_names_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(C.ConfigError, match=key.split(".")[0]):
        C.parse(raw)


def test_subnet_file_atomic_private_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "subnet.env"
    content = subnetfile.SubnetFile(ipaddress.IPv4Network("10.244.0.0/16"),
                                    ipaddress.IPv4Interface("10.244.3.1/24"), 1450, True)
    subnetfile.write(path, content)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert subnetfile.read(path) == content
    assert os.listdir(path.parent) == ["subnet.env"]  # no temporary left behind
    assert "CNIPY_SUBNET=10.244.3.1/24" in path.read_text()
    with pytest.raises(subnetfile.SubnetFileError, match="CNIPY_MTU"):
        subnetfile.parse("CNIPY_NETWORK=10.0.0.0/8\nCNIPY_SUBNET=10.0.1.1/24\nCNIPY_IPMASQ=true\n")

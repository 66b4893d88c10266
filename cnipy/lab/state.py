"""lab.json: the recorded spec and phase of a lab (written before anything is created)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnipy.lab.errors import LabError
from cnipy.lab.files import read_json, write_json
from cnipy.lab.model import Lab, LabSpec

STATE_FILE = "lab.json"


@dataclass(frozen=True)
class LabState:
    spec: LabSpec
    phase: str  # "building" until everything is in place, then "up"
    created: float
    seconds: float | None


def spec_to_dict(spec: LabSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["state_root"] = str(spec.state_root)
    return data


def spec_from_dict(data: dict[str, Any]) -> LabSpec:
    try:
        return LabSpec(name=str(data["name"]), nodes=int(data["nodes"]), pods_per_node=int(data["pods_per_node"]),
                       segments=int(data["segments"]), backend=str(data["backend"]),
                       plugins=str(data["plugins"]), state_root=Path(data["state_root"]),
                       cni_daemon=bool(data.get("cni_daemon", False)),
                       services=str(data.get("services", "none")))
    except (KeyError, TypeError, ValueError) as exc:
        raise LabError(f"lab state is damaged ({exc}); `cnipy lab down` still removes the lab") from exc


def read_state(state_dir: Path) -> LabState | None:
    try:
        data = read_json(state_dir / STATE_FILE)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {state_dir / STATE_FILE}: {exc}") from exc
    return LabState(spec_from_dict(data["spec"]), str(data.get("phase", "building")),
                    float(data.get("created", 0)), data.get("seconds"))


def write_state(lab: Lab, phase: str, seconds: float | None = None) -> None:
    write_json(lab.state_file, {"spec": spec_to_dict(lab.spec), "phase": phase, "created": time.time(),
                                "seconds": seconds})

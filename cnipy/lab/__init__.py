"""A multi-node cluster in network namespaces: cnipy's test bed and demo.

    from cnipy.lab import LabSpec, up, check, down
    lab = up(LabSpec(name="demo", nodes=3, pods_per_node=2))
    assert check(lab).ok
    down("demo")

Back ends (how pods on different nodes reach each other) plug in through `cnipy.lab.backend`.
"""

from cnipy.lab.build import up
from cnipy.lab.connectivity import Matrix, Outcome
from cnipy.lab.connectivity import run as check
from cnipy.lab.errors import BackendUnavailable, CommandFailed, LabError, PluginFailed
from cnipy.lab.model import Lab, LabSpec, Node, Pod, plan
from cnipy.lab.status import status
from cnipy.lab.teardown import DownReport, down

__all__ = [
    "BackendUnavailable", "CommandFailed", "DownReport", "Lab", "LabError", "LabSpec", "Matrix", "Node",
    "Outcome", "PluginFailed", "Pod", "check", "down", "plan", "status", "up",
]

"""The VM tier: tests in tests/vm/ run inside a virtme-ng VM with Debian's 6.1 kernel (ipip, IPVS, dummy).

How it works. On the host, every test collected under tests/vm/ is replaced by a `GuestItem` with the same node
id. The first one to run boots ONE VM (`vng --run /boot/vmlinuz-6.1* --disable-kvm --force-9p ...`, about 20-60 s
under TCG) that runs pytest on all of them at once with CNIPY_VM_GUEST=1; inside the guest this conftest records
each test's outcome as a JSON line in a host directory shared read-write with the guest. Each host item then
reports its own guest test's outcome: passed, failed (with the guest's traceback) or skipped.

Adding a guest test: put a `test_*.py` file in tests/vm/ (or a subdirectory). It runs as root in the guest, sees
this checkout and .venv at the same paths, may `modprobe` (the 6.1 modules are on the host's disk) and should
create its own namespaces (the `netns` fixtures work there). Keep guest tests few and short: TCG is slow.

Prerequisites: vng (virtme-ng, in .venv), qemu-system-x86_64 and /boot/vmlinuz-6.1.* with its modules. Missing
ones make the tier SKIPPED with the reason, or FAILED when CI=true (bin/setup --test installs them).
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUEST = os.environ.get("CNIPY_VM_GUEST") == "1"
RESULTS_ENV = "CNIPY_VM_RESULTS"
VM_TIMEOUT = float(os.environ.get("CNIPY_VM_TIMEOUT", "1500"))
VM_MEMORY = "1G"
VM_CPUS = "2"
KERNEL_GLOB = os.environ.get("CNIPY_VM_KERNEL", "/boot/vmlinuz-6.1.*")


def vm_prerequisites() -> tuple[list[str], str | None]:
    """(the vng command line up to --exec, or [] with the reason why it can not run)."""
    vng = shutil.which("vng") or str(ROOT / ".venv" / "bin" / "vng")
    missing = []
    if not os.access(vng, os.X_OK):
        missing.append("vng (virtme-ng: bin/setup --test)")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (Debian qemu-system-x86)")
    kernels = sorted(glob.glob(KERNEL_GLOB))
    if not kernels:
        missing.append(f"{KERNEL_GLOB} (Debian linux-image-amd64)")
    elif not Path("/lib/modules", Path(kernels[-1]).name.removeprefix("vmlinuz-")).is_dir():
        missing.append(f"the modules of {kernels[-1]} in /lib/modules")
    if os.geteuid() != 0:
        missing.append("root (guest tests create namespaces and load modules)")
    if missing:
        return [], "VM tier prerequisites missing: " + ", ".join(missing)
    return [vng, "--run", kernels[-1], "--disable-kvm", "--force-9p", "--memory", VM_MEMORY,
            "--cpus", VM_CPUS], None


@dataclass
class GuestRun:
    results: dict[str, dict[str, Any]]
    log: str
    error: str | None


class GuestItem(pytest.Item):
    """Host-side stand-in for one guest test: reports the outcome the guest recorded for the same node id."""

    def runtest(self) -> None:
        run = _guest_run(self.session)
        if run.error:
            pytest.fail(run.error, pytrace=False)
        result = run.results.get(self.nodeid)
        if result is None:
            pytest.fail(f"the guest did not report {self.nodeid}; end of the VM log:\n{run.log[-3000:]}",
                        pytrace=False)
        if result["outcome"] == "skipped":
            pytest.skip(f"in the guest: {result['message']}")
        if result["outcome"] != "passed":
            pytest.fail(f"in the guest ({result['when']}):\n{result['message']}", pytrace=False)

    line = 0  # the guest test's line, copied from the item it stands in for

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return Path(self.path), self.line, f"{self.nodeid} (in the 6.1 VM)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GUEST:
        return
    here = Path(__file__).resolve().parent
    argv, reason = vm_prerequisites()
    in_ci = os.environ.get("CI", "").lower() == "true"
    for i, item in enumerate(items):
        if not isinstance(item, pytest.Function) or here not in Path(str(item.path)).resolve().parents:
            continue
        guest = GuestItem.from_parent(item.parent, name=item.name)
        guest.own_markers = list(item.own_markers)
        guest.line = item.reportinfo()[1] or 0
        guest.keywords.update(item.keywords)
        guest.add_marker(pytest.mark.timeout(VM_TIMEOUT + 60))
        if reason and not in_ci:
            guest.add_marker(pytest.mark.skip(reason=reason))
        items[i] = guest


_KEY = pytest.StashKey[GuestRun]()


def _guest_run(session: pytest.Session) -> GuestRun:
    if _KEY in session.stash:
        return session.stash[_KEY]
    argv, reason = vm_prerequisites()
    if reason:
        run = GuestRun({}, "", f"{reason} (CI=true: the VM tier must run; bin/setup --test installs them)")
    else:
        nodeids = [item.nodeid for item in session.items if isinstance(item, GuestItem)
                   and not item.get_closest_marker("skip")]
        run = boot_and_run(argv, nodeids)
    session.stash[_KEY] = run
    return run


def boot_and_run(vng_argv: list[str], nodeids: list[str]) -> GuestRun:
    """Boot one VM that runs pytest on `nodeids`; collect the JSON lines it wrote."""
    with tempfile.TemporaryDirectory(prefix="cnipy-vm-") as shared:
        results_file = Path(shared) / "results.jsonl"
        script = Path(shared) / "guest.sh"
        pytest_argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
                       "-o", "addopts=", "-q", "-rA", *nodeids]
        script.write_text("\n".join([
            "#!/bin/sh",
            f"cd {shlex.quote(str(ROOT))}",
            "export CNIPY_VM_GUEST=1 PYTHONDONTWRITEBYTECODE=1 "
            f"{RESULTS_ENV}={shlex.quote(str(results_file))} PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "uname -r",
            shlex.join(pytest_argv),
            f"echo $? > {shlex.quote(shared)}/exit",
            "",
        ]))
        env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        argv = [*vng_argv, "--rwdir", shared, "--exec", f"sh {shlex.quote(str(script))}"]
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=VM_TIMEOUT, env=env,
                                  stdin=subprocess.DEVNULL, check=False)
            log = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            return GuestRun({}, str(exc.stdout or ""), f"the VM did not finish within {VM_TIMEOUT:.0f}s")
        log += f"\n[host] VM run took {time.monotonic() - started:.0f}s, vng exit {proc.returncode}\n"
        results: dict[str, dict[str, Any]] = {}
        if results_file.exists():
            for line in results_file.read_text().splitlines():
                rec = json.loads(line)
                # setup/call/teardown: keep the first failure, else the call's outcome
                prev = results.get(rec["nodeid"])
                if prev is None or (prev["outcome"] == "passed" and rec["outcome"] != "passed"):
                    results[rec["nodeid"]] = rec
        error = None
        if not results:
            error = f"the VM produced no results (vng exit {proc.returncode}); end of its log:\n{log[-3000:]}"
        return GuestRun(results, log, error)


# ---- guest side: record every outcome for the host ----

def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not GUEST or not path:
        return
    if report.when != "call" and report.outcome == "passed":
        return
    message = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    elif report.failed:
        message = report.longreprtext[-4000:]
    rec = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "message": message,
           "seconds": report.duration}
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")

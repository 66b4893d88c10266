"""The lab's errors.

    LabError                    anything the lab can not do; the message says what to do next
    ├── BackendUnavailable      the back end is unknown, or its module is not installed yet
    ├── PluginFailed            a CNI plugin answered with an error (carries the CNI code and message)
    ├── CommandFailed           a helper command (ip, sysctl, a daemon) failed; carries its stderr
    └── ServicesNotReady        the lab is up but a node's service proxy did not sync its Services (the
                                message has the proxy's log); `check` shows which Service probes fail
"""

from __future__ import annotations


class LabError(Exception):
    pass


class BackendUnavailable(LabError):
    pass


class PluginFailed(LabError):
    def __init__(self, msg: str, code: int = 0, details: str = "") -> None:
        super().__init__(msg if not details else f"{msg}: {details}")
        self.code = code
        self.details = details


class CommandFailed(LabError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} failed ({returncode}): {stderr.strip()[:400]}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class ServicesNotReady(LabError):
    pass

"""Errors raised by the service proxy.

    ProxyError                     base of everything below
    ├── ManifestError              a manifest could not be read or a field is invalid; carries file and field
    ├── SelectorError              a label selector or label key/value is not valid Kubernetes syntax
    ├── ApplyError                 a back end refused a transaction; the previous rules stay in force
    │   └── FakeApplyError         the same, raised by the in-memory fakes (carries an errno name)
    └── SourceError                the Kubernetes API source could not list or watch

Callers retry an ApplyError on the next sync; a ManifestError skips one object and keeps the rest.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base class for all service-proxy errors."""


class ManifestError(ProxyError):
    """A manifest (or one object in it) is invalid. The object is skipped; other objects still load."""

    def __init__(self, file: str, field: str, message: str) -> None:
        super().__init__(f"{file}: {field}: {message}")
        self.file = file
        self.field = field
        self.message = message


class SelectorError(ProxyError, ValueError):
    """A label key, label value or selector expression is not valid."""


class ApplyError(ProxyError):
    """Loading rules failed. Nothing was changed (both back ends apply atomically); retry later."""


class FakeApplyError(ApplyError):
    """A fake back end rejected a transaction the way the kernel would (errno name in ``errno``)."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(f"{errno}: {message}")
        self.errno = errno


class SourceError(ProxyError):
    """The Kubernetes API could not be reached or answered with an error."""

"""CNI spec versions: which we speak, how they compare, and which verbs each allows."""

from __future__ import annotations

from collections.abc import Iterable

from cnipy.cni.errors import IncompatibleVersion, InvalidConfig

SUPPORTED: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]

# The first version that allows each verb (ADD, DEL and VERSION exist in every version).
VERB_SINCE = {"ADD": "0.1.0", "DEL": "0.1.0", "VERSION": "0.1.0", "CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def parse(version: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0); an empty version means 0.1.0 as the spec says."""
    if version == "":
        return (0, 1, 0)
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 4 for p in parts):
        raise InvalidConfig("invalid cniVersion", repr(version)[:100])
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def check_supported(version: str) -> str:
    """Return the version normalised ('' -> '0.1.0'), or raise IncompatibleVersion (code 1)."""
    v = version or "0.1.0"
    # A malformed version is as incompatible as an unknown one (code 1), as the reference skel answers.
    if v not in SUPPORTED:
        raise IncompatibleVersion(
            f"incompatible CNI versions; config is {v!r}, plugin supports {list(SUPPORTED)}"[:300])
    return v


def negotiate(offered: Iterable[object]) -> str:
    """Pick the highest version both sides speak from a conflist's `cniVersions`."""
    ours = set(SUPPORTED)
    common = [v for v in offered if isinstance(v, str) and v in ours]
    if not common:
        raise IncompatibleVersion("no common CNI version in cniVersions", f"plugin supports {list(SUPPORTED)}")
    return max(common, key=parse)


def check_verb(verb: str, version: str) -> None:
    since = VERB_SINCE[verb]
    if not at_least(version, since):
        # The reference skel answers code 1 here as well.
        raise IncompatibleVersion(f"config version {version} does not allow {verb}", f"{verb} needs {since} or newer")

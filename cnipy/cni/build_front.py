"""Compile the CNI front (front.c) into one executable per cnipy plugin: `.venv/libexec/cni/<plugin>`.

That directory is what a runtime's CNI plugin path should name (or what /opt/cni/bin links to): each file
forwards its call to the node daemon, or runs the Python plugin when no daemon is up. The plugin name, the
checkout's location and the CNI versions are compiled in. Rebuilds only when one of those or front.c changed;
each file is replaced by rename, so a runtime running the old one at that moment is not disturbed.

    python -m cnipy.cni.build_front [--force] [--out DIR]       (bin/setup runs it)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cnipy.cni import version as V

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().with_name("front.c")
DEFAULT_OUT = ROOT / ".venv" / "libexec" / "cni"
STAMP = ".front-stamp"
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra", "-static")


class BuildError(Exception):
    """gcc is missing or failed; the message carries its output."""


def _defines(plugin: str | None) -> list[str]:
    if any(c in str(ROOT) for c in '"\\\n'):
        raise BuildError(f"the checkout's path {str(ROOT)!r} can not be compiled into a C string")
    out = [f'-DCNIPY_ROOT="{ROOT}"', f'-DCNIPY_LATEST="{V.LATEST}"', f'-DCNIPY_VERSIONS="{",".join(V.SUPPORTED)}"']
    if plugin is not None:
        out.append(f'-DCNIPY_PLUGIN="{plugin}"')
    return out


def plugin_names() -> list[str]:
    from cnipy.plugins import registry

    return sorted(registry.PLUGINS)


def fingerprint(names: list[str]) -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(repr((CFLAGS, _defines(None), names)).encode())
    return h.hexdigest()


def compile_one(out: Path, plugin: str | None, cc: str = "gcc") -> None:
    compiler = shutil.which(cc)
    if compiler is None:
        raise BuildError(f"{cc} not found (bin/setup installs gcc and libc6-dev)")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *CFLAGS, *_defines(plugin), "-o", tmp, str(SOURCE)],
                              capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise BuildError(f"{cc} failed for {out.name}:\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(out_dir: Path = DEFAULT_OUT, *, force: bool = False) -> list[Path]:
    """Build what is missing or stale; return the paths (re)built."""
    names = plugin_names()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / STAMP
    want = fingerprint(names)
    targets = [out_dir / n for n in names]
    if not force and stamp.exists() and stamp.read_text().strip() == want and all(t.exists() for t in targets):
        return []
    for target in targets:
        compile_one(target, target.name)
    stamp.write_text(want + "\n")
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnipy.cni.build_front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    args = parser.parse_args(argv)
    try:
        built = build(args.out, force=args.force)
    except (BuildError, OSError) as exc:
        print(f"build_front: {exc}", file=sys.stderr)
        return 1
    print(f"build_front: built {len(built)} front(s) in {args.out}" if built else "build_front: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

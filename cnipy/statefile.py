"""Private state files written atomically: readers see the old content or the new, never half of either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a 0600 temporary file beside `path`, fsync it, and rename it over `path`.

    The directory must exist. OSError when any step fails; the temporary file never stays behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)

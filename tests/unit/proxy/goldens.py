from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    """Compare with tests/unit/proxy/golden/<name>; CNIPY_UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / name
    if os.environ.get("CNIPY_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with CNIPY_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file (CNIPY_UPDATE_GOLDEN=1 rewrites it)"

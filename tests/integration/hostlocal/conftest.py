from __future__ import annotations

import pytest

from tests.support.cni import GO_HOST_LOCAL


@pytest.fixture(autouse=True)
def _need_reference() -> None:
    if not GO_HOST_LOCAL.exists():
        pytest.skip("reference plugins missing (bin/setup --test installs containernetworking-plugins)")

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import netns as _netns  # noqa: E402

TIER_BY_DIR = {"unit": "unit", "netns": "netns", "integration": "integration", "vm": "vm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The directory names the tier; tests that need root are skipped, with the reason, when not root.
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        tier = TIER_BY_DIR.get(parts[0]) if parts else None
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
        if tier in ("netns", "integration") and not _netns.is_root():
            item.add_marker(pytest.mark.skip(reason="needs root to create network namespaces"))


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], _netns.Netns]]:
    """Create real network namespaces on demand; every one is deleted after the test."""
    made: list[_netns.Netns] = []

    def make() -> _netns.Netns:
        ns = _netns.add()
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        _netns.delete(ns)


@pytest.fixture
def netns(netns_factory: Callable[[], _netns.Netns]) -> _netns.Netns:
    return netns_factory()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (bin/setup --test installs them)")

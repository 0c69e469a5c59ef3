"""Shared fixtures. Lab tests need root (namespaces, veth, TUN); every lab is torn down even on failure."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab import Lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="network-lab tests need root")
    for item in items:
        if "lab" in item.fixturenames:
            item.add_marker(skip)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as the_lab:
        yield the_lab

"""Shared fixtures. Lab tests need root (namespaces, veth, TUN); every lab is torn down even on failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from quicether.identity import generate
from tests.lab import Lab
from tests.webui_fixtures import FakeDaemon, fake_daemon, web_app


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


# The web UI's Flask test-client tests (tests/test_webui*.py): its state, a stand-in daemon, the app, a client.
@pytest.fixture
def state(tmp_path: Path) -> Path:
    generate(tmp_path / "node.key")
    return tmp_path


@pytest.fixture
def daemon(state: Path) -> Iterator[FakeDaemon]:
    yield from fake_daemon(state)


@pytest.fixture
def app(state: Path, monkeypatch: pytest.MonkeyPatch, daemon: FakeDaemon) -> Flask:
    """The UI in front of a stand-in daemon: the config is read and written only through its API."""
    return web_app(state, monkeypatch)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()

"""Shared fixtures: an app built from the factory with settings that touch nothing outside tmp."""

from __future__ import annotations

import pathlib

import pytest

from service.app import create_app
from service.settings import Settings, load_settings
from service.storage.feedback import MemoryFeedbackStore

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "cds-hooks"


def reference(*parts: str) -> pathlib.Path:
    """A file of the shared CDS Hooks reference data; the test is skipped, not failed, where the
    checkout has no ../shared beside it (the CI machine has it)."""
    path = REFERENCE.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared CDS Hooks reference data is needed (it exists on the CI machine)")
    return path


def make_settings(tmp_path: pathlib.Path, **overrides) -> Settings:
    """Settings from defaults only (the caller's environment is ignored), data in tmp_path."""
    base = {"data_dir": str(tmp_path / "data")}
    base.update(overrides)
    return load_settings(environ={}, overrides=base)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def make_app(tmp_path):
    """Apps built from given Settings, or from defaults plus dotted overrides (data in its own tmp
    dir); each with an in-memory feedback store, all closed at the end of the test."""
    apps = []

    def build(settings: Settings | None = None, **overrides):
        app = create_app(settings or make_settings(tmp_path / f"app{len(apps)}", **overrides),
                         store=MemoryFeedbackStore())
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["ivig_cds"].close()


@pytest.fixture
def make_client(make_app):
    """A test client for an app built with the given dotted setting overrides."""
    return lambda **overrides: make_app(**overrides).test_client()


@pytest.fixture
def app(settings):
    app = create_app(settings, store=MemoryFeedbackStore())
    yield app
    app.extensions["ivig_cds"].close()


@pytest.fixture
def client(app):
    return app.test_client()

"""Shared fixtures: one tiny random model in the Kandinsky 2.2 layout per test session (no network)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from imagegen.build.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    import imagegen

    return imagegen.load_pipeline(str(tiny_model_dir))


@pytest.fixture
def fast_settings():
    from imagegen.settings import DecoderSettings, PriorSettings

    return PriorSettings(steps=4, guidance=4.0), DecoderSettings(steps=4, guidance=4.0, width=32, height=32)


@pytest.fixture(autouse=True)
def no_user_adapters(tmp_path_factory, monkeypatch):
    """A per-user folder of its own (imagegen.locations: $XDG_DATA_HOME/imagegen), so that adapters or presets a
    developer has installed never reach the tests."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.getbasetemp() / "xdg-data"))

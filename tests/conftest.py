"""Shared fixtures. Everything runs offline on the CPU with the tiny demo
model, built once per test session."""
from __future__ import annotations

import os

# The Hub cannot be reached from CI; fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """The demo model saved as an ordinary diffusers folder."""
    from app.models.demo import save_demo_model

    return save_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def engine():
    """A loaded demo engine shared by the tests that only generate."""
    from app.engine.engine import Engine, EngineOptions

    return Engine.load(EngineOptions(model="demo", device="cpu"))


@pytest.fixture
def small_request():
    """A fast request: 64x64, 2 steps, fixed seed."""
    from app.engine.types import GenerationRequest

    def make(**overrides):
        params = dict(prompt="a red fox in the snow", width=64, height=64, steps=2, seed=1)
        params.update(overrides)
        return GenerationRequest(**params)

    return make

"""Shared fixtures: the real SmolLM2 tokenizer (offline, cached)."""

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from preftune.model_io import load_tokenizer

    return load_tokenizer("smollm2")

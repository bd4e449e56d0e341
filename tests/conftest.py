"""Shared fixtures: the real SmolLM2 tokenizer (offline, cached)."""

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from preftune.model_io import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(autouse=True)
def tokenized_cache(tmp_path_factory, monkeypatch):
    """Each test its own tokenized-pairs cache: no test reuses another's pairs, and none
    writes to the user's cache folder."""
    folder = tmp_path_factory.mktemp("tokenized")
    monkeypatch.setenv("PREFTUNE_TOKENIZED_CACHE", str(folder))
    return folder

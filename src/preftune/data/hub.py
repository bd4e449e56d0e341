"""Hub datasets: their split names, their rows, and a quick answer when the hub is out of
reach (``datasets`` retries for about half a minute, then raises a traceback).

Offline, by setting (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``) or because the hub does
not answer within a few seconds, a dataset name is tried only from the local cache, and
failing that is a :class:`ConfigError` that says how to get the data.
"""

from __future__ import annotations

import os
import socket
from typing import Optional
from urllib.parse import urlparse

from preftune.data.origin import RowOrigin, Source, SourcedRow
from preftune.errors import ConfigError

PROBE_SECONDS = 3.0
TRUE = ("1", "true", "yes", "on")


def offline_setting() -> Optional[str]:
    """The variable that turns the hub off, if one is set."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in TRUE:
            return f"{variable} is set"
    return None


def hub_unreachable() -> Optional[str]:
    """Why the hub does not answer within PROBE_SECONDS, or None when it does."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_SECONDS).close()
    except OSError as error:
        return f"{host} cannot be reached ({error.strerror or error})"
    return None


def _fix(name: str, reason: str) -> str:
    return (f"dataset_name {name!r} is not a local file or folder, and the Hugging Face hub "
            f"is offline: {reason}. Download it where there is a connection "
            f"(`huggingface-cli download {name} --repo-type dataset --local-dir DIR`) and "
            "pass DIR as dataset_name; if it is in your Hugging Face cache already, set "
            "HF_HUB_OFFLINE=1 to read it from there; or check the spelling")


def splits_of(name: str, config: Optional[str]):
    """(description, split names, reader(split, role) -> rows) of a hub dataset."""
    # Offline by setting, the cache may hold the dataset: ``datasets`` looks there at once.
    reason = offline_setting()
    if reason is None:
        unreachable = hub_unreachable()
        if unreachable is not None:
            raise ConfigError(_fix(name, unreachable))
    import datasets  # slow import; only hub datasets need it

    try:
        names = list(datasets.get_dataset_split_names(name, config))
    except Exception as error:  # not found, gated, offline with no cache, bad config
        if reason is not None:
            raise ConfigError(_fix(name, reason)) from None
        raise ConfigError(f"dataset_name {name!r}: the hub dataset cannot be read: "
                          f"{type(error).__name__}: {error}") from None

    def reader(split: str, role: str) -> list[dict]:
        try:
            loaded = datasets.load_dataset(name, config, split=split)
        except Exception as error:
            raise ConfigError(f"dataset_name {name!r} split {split!r} cannot be loaded: "
                              f"{type(error).__name__}: {error}") from None
        return sourced(loaded, f"{name} split {split}", role)

    return f"hub dataset {name}", names, reader


def sourced(dataset, where: str, role: str) -> list[dict]:
    """A ``datasets.Dataset``'s rows, each knowing its split and row number."""
    source = Source(where, role)
    return [SourcedRow(row, RowOrigin(source, index))
            for index, row in enumerate(dataset.to_list())]

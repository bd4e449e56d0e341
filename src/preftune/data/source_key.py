"""A key for the rows a config's local files give, from the files alone: a cached run finds
its tokenized pairs without reading a row.

Reading a million JSON lines costs more than opening their tokenized pairs, so for local
sources (files and folders, not hub names) the tokenized cache is keyed by every source
file's path, size and modification time, the data settings and the seed (which decide the
splits, the hold-out and the caps), and the source of the modules that read the files.
Any file written since, any setting changed, any reader changed: another key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional

from preftune.config import DataConfig

# Settings that change where or how fast pairs are made, not which rows there are.
NOT_ROWS = {"dataset_num_proc", "dataset_cache_dir", "tokenized_cache", "streaming"}


def local_sources_key(data: DataConfig, seed: int) -> Optional[str]:
    """The key of the rows ``load_splits(data, seed)`` reads, or None when a source is not
    a local file or folder."""
    names = [data.dataset_name, data.eval_dataset, *(data.dataset_mixer or {})]
    files = []
    for name in filter(None, names):
        path = Path(str(name)).expanduser()
        if not path.exists():
            return None
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in found:
            stat = file.stat()
            files.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns])
    settings = {k: v for k, v in dataclasses.asdict(data).items() if k not in NOT_ROWS}
    here = Path(__file__).parent
    code = [hashlib.blake2b(p.read_bytes()).hexdigest() for p in sorted(here.glob("*.py"))]
    state = json.dumps([files, settings, seed, code], sort_keys=True, default=str)
    return "sources:" + hashlib.blake2b(state.encode(), digest_size=16).hexdigest()

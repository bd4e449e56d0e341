"""Where rows come from: hub datasets, local files and folders, mixtures; the eval split.

Every source ends as a list of dict rows that know where they came from (origin.py), so
that an error anywhere later names the file and the row in it. Local files are read by
readers.py; hub names go through ``datasets``. Which split trains and which evaluates is
decided by splits.py and printed before training.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Optional

from preftune.config import DataConfig
from preftune.data import hub, splits
from preftune.data.origin import file_error, relabel
from preftune.data.readers import EXTENSIONS, format_suffix, read_file
from preftune.errors import ConfigError

__all__ = ["EXTENSIONS", "hold_out", "load_rows", "load_source", "load_splits", "read_file"]


def load_splits(data: DataConfig, seed: int, log: Optional[Callable[[str], None]] = None
                ) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows); eval may be empty. ``log`` gets what was picked.

    Eval comes from, in order: ``eval_dataset`` (a separate source), ``dataset_test_split``
    or the evaluation split of the dataset (a folder's test/validation/... files, a
    DatasetDict's split), the test split of a ``dataset_mixer``, and last a seeded
    ``eval_fraction`` of the training rows."""
    notes: list[str] = []
    if data.dataset_mixer:
        if data.dataset_name:
            raise ConfigError("set either dataset_name or dataset_mixer, not both")
        train, eval_rows = _mix(data, seed, notes)
    elif data.dataset_name:
        train, eval_rows = load_source(data.dataset_name, data.dataset_train_split,
                                       data.dataset_test_split, data.dataset_config,
                                       want_eval=not data.eval_dataset, notes=notes)
    else:
        raise ConfigError("no data: set dataset_name (a hub id, file or folder) or dataset_mixer")
    if data.eval_dataset:
        eval_rows = load_rows(data.eval_dataset, data.dataset_test_split, data.dataset_config,
                              default_split="test", role="eval", notes=notes)
    if not eval_rows and data.eval_fraction:
        train, eval_rows = hold_out(train, data.eval_fraction, seed)
        notes.append(f"eval: {len(eval_rows)} rows held out of the training rows "
                     f"(eval_fraction {data.eval_fraction})")
    if not train:
        raise ConfigError(f"no training rows in {data.dataset_name or data.dataset_mixer}")
    if log is not None:
        for note in notes:
            log(f"data: {note}")
    return _cap(train, data.max_train_samples), _cap(eval_rows, data.max_eval_samples)


def hold_out(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded random ``fraction`` of rows (at least one) for eval; both keep file order.
    Held-out rows keep their file and row number, and their errors say they are eval."""
    if not 0 < fraction < 1:
        raise ConfigError(f"eval_fraction must be in (0, 1), got {fraction}")
    if len(rows) < 2:
        raise ConfigError(f"eval_fraction needs at least 2 rows, got {len(rows)}")
    n_eval = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    held = set(random.Random(seed).sample(range(len(rows)), n_eval))
    eval_rows = [relabel(r, "held out for eval by eval_fraction") for i, r in enumerate(rows)
                 if i in held]
    return [r for i, r in enumerate(rows) if i not in held], eval_rows


def load_rows(name: str, split: Optional[str] = "train", config: Optional[str] = None,
              default_split: str = "train", role: str = "train",
              notes: Optional[list] = None) -> list[dict]:
    """Rows of one split of a local file or folder, or of a hub dataset.

    A single file is one split: all its rows, whatever ``split`` says."""
    path = Path(name).expanduser()
    if path.is_file():
        if notes is not None:
            notes.append(f"{role}: {path}")
        return read_file(path, role)
    wanted = split or default_split
    where, names, reader, files = _split_source(name, config)
    chosen = splits.choose(names, splits.split_kind(wanted) or "train", where, wanted=wanted,
                           strict=path.is_dir(), files=files)
    if not chosen:
        raise ConfigError(f"no split {wanted!r} in {where}: found {', '.join(names)}")
    _note(notes, where, role, chosen, names)
    return [row for split_name in chosen for row in reader(split_name, role)]


def load_source(name: str, train_split: Optional[str], test_split: Optional[str],
                config: Optional[str], want_eval: bool = True,
                notes: Optional[list] = None) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of one file, folder, saved dataset or hub dataset."""
    path = Path(name).expanduser()
    if path.is_file():
        if test_split and want_eval:
            raise ConfigError(f"{name} holds one split, it has no split {test_split!r}: use "
                              "eval_dataset or eval_fraction")
        if notes is not None:
            notes.append(f"train: {path}")
        return read_file(path), []
    where, names, reader, files = _split_source(name, config)
    strict = path.is_dir()
    train_names = splits.choose(names, "train", where, wanted=train_split, strict=strict,
                                files=files)
    if not train_names:
        raise ConfigError(f"no training split in {where}: found {', '.join(names)}")
    eval_names = []
    if want_eval:
        partner = train_names[0] if len(train_names) == 1 else None
        eval_names = splits.choose(names, "eval", where, wanted=test_split, partner=partner,
                                   strict=strict, files=files)
        if test_split and not eval_names:
            raise ConfigError(f"no split {test_split!r} in {where}: found {', '.join(names)}")
    _note(notes, where, "train", train_names, names, eval_names)
    train = [row for split_name in train_names for row in reader(split_name, "train")]
    eval_rows = [row for split_name in eval_names for row in reader(split_name, "eval")]
    return train, eval_rows


def _note(notes: Optional[list], where: str, role: str, chosen: list[str], names: list[str],
          eval_names: Optional[list[str]] = None) -> None:
    if notes is None:
        return
    line = f"{where}: {role} split {', '.join(chosen)}"
    if eval_names:
        line += f"; eval split {', '.join(eval_names)}"
    unused = [n for n in names if n not in chosen and n not in (eval_names or [])]
    notes.append(line + (f"; not used: {', '.join(unused)}" if unused else ""))


def _split_source(name: str, config: Optional[str]):
    """(description, split names, reader(split, role) -> rows, split -> its files or None)
    of a multi-split source."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return (*_saved_dataset(path), None)
        return _folder(path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"data file or folder not found: {name}")
    return (*hub.splits_of(name, config), None)


def _folder(folder: Path):
    """A data folder: files grouped by split name (file name, else the nearest folder
    naming a split; shards of one split together)."""
    # Hub snapshots keep shards in subfolders (data/train-00000-of-00001.parquet).
    files = sorted(p for p in folder.rglob("*") if p.is_file() and format_suffix(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise FileNotFoundError(f"no data files ({', '.join(EXTENSIONS)}) in {folder}")
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(_file_split(path.relative_to(folder)), []).append(path)

    def reader(split_name: str, role: str) -> list[dict]:
        return [row for path in groups[split_name] for row in read_file(path, role)]

    files = {name: ", ".join(str(p.relative_to(folder)) for p in paths)
             for name, paths in groups.items()}
    return f"data folder {folder}", list(groups), reader, files


def _file_split(relative: Path) -> str:
    stem = splits.SHARD.sub("", relative.name.split(".")[0])
    if splits.split_kind(stem):
        return stem
    for part in reversed(relative.parts[:-1]):
        if splits.split_kind(part):
            return part
    return str(relative)


def _saved_dataset(path: Path):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # corrupt or partial save_to_disk folders fail many ways
        raise file_error(path, "not a readable saved dataset",
                         f"{type(error).__name__}: {error}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}

    def reader(split_name: str, role: str) -> list[dict]:
        return hub.sourced(loaded[split_name], f"{path} split {split_name}", role)

    return f"saved dataset {path}", sorted(loaded), reader


def _mix(data: DataConfig, seed: int, notes: list) -> tuple[list[dict], list[dict]]:
    """SimPO / alignment-handbook mixing: each source contributes a seeded random
    ``fraction`` of its train split and all of its test split."""
    names = list(data.dataset_splits or ["train", "test"])
    train, eval_rows = [], []
    for name, fraction in data.dataset_mixer.items():
        if not 0 < float(fraction) <= 1:
            raise ConfigError(f"dataset_mixer fraction for {name} must be in (0, 1], got "
                             f"{fraction}")
        test_split = names[1] if len(names) > 1 else None
        is_file = Path(name).expanduser().is_file()
        rows, held = load_source(name, names[0], None if is_file else test_split,
                                 data.dataset_config, want_eval=not is_file, notes=notes)
        if data.dataset_splits and len(names) > 1 and not is_file and not held:
            # The default ["train", "test"] tolerates a source without a test split;
            # splits the user named must exist.
            raise ConfigError(f"no split {names[1]!r} in {name}")
        if float(fraction) < 1:
            keep = sorted(random.Random(seed).sample(range(len(rows)),
                                                     int(float(fraction) * len(rows))))
            rows = [rows[i] for i in keep]
        train += rows
        eval_rows += held
    return train, eval_rows


def _cap(rows: list[dict], limit: Optional[int]) -> list[dict]:
    return rows if limit is None else rows[:limit]


def _looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or "\\" in name
            or Path(name).suffix.lower() in EXTENSIONS + (".gz",) or name.count("/") > 1)


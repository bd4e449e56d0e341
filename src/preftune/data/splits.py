"""Which split is training and which evaluation, from the names users give them.

Split names are read as words: ``train``/``training`` is training; ``test``, ``eval``,
``evaluation``, ``validation``, ``valid``, ``val``, ``dev``, ``heldout`` (or held-out) are
evaluation. The same rules pick among a data folder's files (by file name, or by the
folder a file sits in: ``validation/part0.jsonl``) and among the splits of a hub or saved
``DatasetDict``. Several candidates are narrowed as users lay data out: a preference
subset over others (UltraFeedback's ``train_prefs`` over ``train_sft`` and ``train_gen``),
the evaluation split that matches the training one (``test_prefs`` for ``train_prefs``),
validation over test. What is still ambiguous is an error that lists the candidates:
training on evaluation rows, or on the wrong subset, is worse than stopping.
"""

from __future__ import annotations

import re
from typing import Optional

from preftune.errors import ConfigError

TRAIN_WORDS = frozenset({"train", "training"})
VALIDATION_WORDS = frozenset({"validation", "valid", "val", "dev", "eval", "evaluation",
                              "heldout"})
EVAL_WORDS = VALIDATION_WORDS | {"test"}
PREFERENCE_WORDS = frozenset({"prefs", "pref", "preference", "preferences", "pairs", "dpo"})
# Hugging Face shard suffixes: train-00000-of-00003.parquet
SHARD = re.compile(r"[-_]\d+-of-\d+$")


def words(name: str) -> set[str]:
    return set(re.split(r"[^a-z]+", re.sub(r"held[-_ ]?out", "heldout", name.lower()))) - {""}


def split_kind(name: str) -> Optional[str]:
    """"train", "eval", or None for a name that says neither."""
    found = words(name)
    if found & TRAIN_WORDS:
        return "train"
    return "eval" if found & EVAL_WORDS else None


def choose(names: list[str], kind: str, where: str, wanted: Optional[str] = None,
           partner: Optional[str] = None, strict: bool = True,
           files: Optional[dict[str, str]] = None) -> list[str]:
    """The split names of ``kind`` ("train" or "eval") to read, among ``names``: ``wanted``
    if it is one of them, else by the rules above (``partner``: the training split chosen,
    which an evaluation split should match). Training with no named split takes every
    unnamed one (a plain dataset of several files); ``strict`` makes unnamed names beside
    named training ones an error (files in a folder) rather than unused (extra splits of
    a DatasetDict). ``files``: split name -> its files, for the errors."""
    label = (lambda name: f"{name} ({files[name]})" if files and files.get(name, name) != name
             else name)
    if wanted is not None and wanted in names:
        return [wanted]
    if wanted is not None:
        kind = split_kind(wanted) or ""
        if not kind:
            raise ConfigError(f"no split {wanted!r} in {where}: found "
                          f"{', '.join(map(label, names))}")
    candidates = [name for name in names if split_kind(name) == kind]
    unnamed = [name for name in names if split_kind(name) is None]
    if kind == "train" and not candidates:
        return unnamed
    if kind == "train" and unnamed and strict:
        raise ConfigError(f"{where}: not clear which files are training data: "
                          f"{', '.join(map(label, candidates))} say train, "
                          f"{', '.join(map(label, unnamed))} say no split; name them "
                          "train/test, or pass a file as dataset_name")
    if len(candidates) <= 1:
        return candidates
    return [_narrow(candidates, kind, where, partner, label)]


def _narrow(candidates: list[str], kind: str, where: str, partner: Optional[str],
            label) -> str:
    steps = [lambda name: bool(words(name) & PREFERENCE_WORDS)]
    if partner is not None:
        extra = words(partner) - TRAIN_WORDS
        steps.insert(0, lambda name: words(name) - EVAL_WORDS == extra)
    if kind == "eval":
        steps.append(lambda name: bool(words(name) & VALIDATION_WORDS))
    left = candidates
    for keep in steps:
        narrowed = [name for name in left if keep(name)]
        left = narrowed or left
        if len(left) == 1:
            return left[0]
    role, key = (("training", "dataset_train_split") if kind == "train"
                 else ("evaluation", "dataset_test_split"))
    raise ConfigError(f"{where} has several {role} splits: {', '.join(map(label, left))}; "
                      f"set {key} to the one to use")

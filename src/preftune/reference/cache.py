"""Reference log-probs computed once, before training, and cached on disk.

A reference-based objective needs ``log pi_ref`` of every completion token, which never
changes during a run. Computing it in one pass up front lets training hold no reference
model at all (half the weights for full fine-tuning), and a second run over the same data
reuses the file. The cache is keyed by a fingerprint of everything the numbers depend on:
the reference weights, the tokenizer, and the tokenized pairs themselves (which already
encode the rows, the format, the chat template and the truncation settings).

Per-token values are stored, not sums, so every reduction works from the cache, SamPO's
down-sampling included (it draws positions per step and needs the token values).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from preftune.types import SequenceLogps, TokenizedPair

FORMAT_VERSION = 1


def fingerprint_model(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def fingerprint_pairs(pairs: Sequence[TokenizedPair]) -> str:
    # The tokenized cache's pairs (data/store.py) keep theirs: computed once per store.
    kept = getattr(pairs, "pairs_fingerprint", None)
    return kept() if kept is not None else digest_pairs(pairs)


def digest_pairs(pairs: Sequence[TokenizedPair]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for p in pairs:
        digest.update(json.dumps([p.example_id, p.prompt_ids, p.chosen_ids, p.rejected_ids,
                                  p.label]).encode())
    return digest.hexdigest()


def fingerprint_tokenizer(tokenizer) -> str:
    state = {"vocab": len(tokenizer), "name": getattr(tokenizer, "name_or_path", ""),
             "template": getattr(tokenizer, "chat_template", None),
             "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()}}
    return hashlib.blake2b(json.dumps(state, sort_keys=True).encode(), digest_size=16).hexdigest()


def pair_key(pair: TokenizedPair) -> int:
    """A pair's identity by content, so train and eval pairs (whose example ids may
    coincide) share one cache, and a re-tokenized pair never meets stale values."""
    digest = hashlib.blake2b(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids])
                             .encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class ReferenceCache:
    """Per-token reference log-probs of a fixed list of pairs, keyed by :func:`pair_key`."""

    def __init__(self, chosen: dict[int, torch.Tensor], rejected: dict[int, torch.Tensor]):
        self.chosen, self.rejected = chosen, rejected

    def lookup(self, pairs: Sequence[TokenizedPair], device: torch.device) -> SequenceLogps:
        """The cached values laid out exactly as a forward pass would return them."""
        def stack(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            width = max(v.numel() for v in values)
            out = torch.zeros(len(values), width, dtype=torch.float32)
            mask = torch.zeros(len(values), width, dtype=torch.bool)
            for i, v in enumerate(values):
                out[i, : v.numel()] = v
                mask[i, : v.numel()] = True
            return out.to(device), mask.to(device)

        keys = [pair_key(p) for p in pairs]
        chosen, chosen_mask = stack([self.chosen[k] for k in keys])
        rejected, rejected_mask = stack([self.rejected[k] for k in keys])
        return SequenceLogps(chosen, chosen_mask, rejected, rejected_mask)

    __call__ = lookup  # a reference source like the others (see preftune.reference.build)

    @classmethod
    def compute(cls, source: Callable, pairs: Sequence[TokenizedPair], device: torch.device,
                batch_size: int, progress: bool = False) -> "ReferenceCache":
        chosen, rejected = {}, {}
        batches = range(0, len(pairs), batch_size)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc="reference log-probs", dynamic_ncols=True)
        for start in batches:
            batch = pairs[start:start + batch_size]
            out = source(batch, device)
            for row, pair in enumerate(batch):
                key = pair_key(pair)
                chosen[key] = out.chosen[row, : len(pair.chosen_ids)].float().cpu()
                rejected[key] = out.rejected[row, : len(pair.rejected_ids)].float().cpu()
        return cls(chosen, rejected)

    def save(self, path: Path) -> None:
        """One flat tensor per side plus offsets: a handful of entries however many pairs."""
        from safetensors.torch import save_file

        ids = sorted(self.chosen)
        tensors = {"pair_keys": torch.tensor(ids, dtype=torch.long)}
        for side, values in (("chosen", self.chosen), ("rejected", self.rejected)):
            lengths = torch.tensor([values[i].numel() for i in ids], dtype=torch.long)
            tensors[f"{side}_lengths"] = lengths
            tensors[f"{side}_values"] = (torch.cat([values[i] for i in ids]) if ids
                                         else torch.zeros(0))
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        save_file(tensors, str(staging), metadata={"version": str(FORMAT_VERSION)})
        staging.replace(path)  # a reader never sees a half-written cache

    @classmethod
    def load(cls, path: Path) -> "ReferenceCache":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        ids = tensors["pair_keys"].tolist()
        sides = []
        for side in ("chosen", "rejected"):
            pieces = torch.split(tensors[f"{side}_values"], tensors[f"{side}_lengths"].tolist())
            sides.append(dict(zip(ids, pieces)))
        return cls(*sides)


def cache_path(cache_dir: Path, reference, tokenizer, pairs: Sequence[TokenizedPair]) -> Path:
    key = hashlib.blake2b("|".join([
        str(FORMAT_VERSION), fingerprint_model(reference), fingerprint_tokenizer(tokenizer),
        fingerprint_pairs(pairs)]).encode(), digest_size=16).hexdigest()
    return cache_dir / f"reflogps-{key}.safetensors"


def cached_reference(source, tokenizer, pairs, *, device, batch_size, cache_dir,
                     log=print, progress=True, is_main: bool = True,
                     barrier: Callable[[], None] = lambda: None) -> ReferenceCache:
    """Load the cache for this (reference, tokenizer, pairs), or compute and save it. With
    several processes the main one computes and writes; the others wait, then read."""
    path = cache_path(Path(cache_dir), source.fingerprint_module, tokenizer, pairs)
    if is_main and not path.exists():
        log(f"reference log-probs: computing {len(pairs)} pairs once -> {path}")
        ReferenceCache.compute(source, pairs, device, batch_size, progress).save(path)
    else:
        log(f"reference log-probs: reusing {path}")
    barrier()
    return ReferenceCache.load(path)

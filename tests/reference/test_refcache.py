"""Reference log-probs cached on disk equal recomputed ones, and training with the cache
equals training with the reference model."""

import pytest
import torch

from float64_bounds import max_diff, ulps_floor
from tiny import random_pairs, tiny_llama
from preftune.forward.logps import PaddedForward
from preftune.reference.build import ModelReference
from preftune.reference.cache import ReferenceCache, cache_path, cached_reference
from preftune.train.metrics import read_jsonl
from trainer_helpers import plain_trainer as make_trainer

CPU = torch.device("cpu")


def test_cache_round_trip_equals_recomputed(tmp_path, tokenizer):
    # float64: the cache's float32 storage is then the only rounding between the two.
    model, pairs = tiny_llama(vocab_size=1000).double().eval(), random_pairs(7, vocab=1000)
    forward = PaddedForward(0)
    cache = cached_reference(ModelReference(model, forward), tokenizer, pairs, device=CPU,
                             batch_size=3, cache_dir=tmp_path, log=lambda *_: None,
                             progress=False)
    with torch.no_grad():
        direct = forward(model, pairs, CPU)
    looked_up = cache.lookup(pairs, CPU)
    for side in ("chosen", "rejected"):
        assert torch.equal(getattr(looked_up, f"{side}_mask"), getattr(direct, f"{side}_mask"))
        expected = getattr(direct, side)
        assert max_diff(getattr(looked_up, side), expected) <= ulps_floor(expected)
    assert len(list(tmp_path.iterdir())) == 1


def test_cache_invalidated_by_weights_and_data(tmp_path, tokenizer):
    model, pairs = tiny_llama(vocab_size=1000), random_pairs(4, vocab=1000)
    key = cache_path(tmp_path, model, tokenizer, pairs)
    assert cache_path(tmp_path, model, tokenizer, pairs) == key
    changed_data = random_pairs(4, vocab=1000)
    changed_data[2].chosen_ids = changed_data[2].chosen_ids + [5]
    assert cache_path(tmp_path, model, tokenizer, changed_data) != key
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert cache_path(tmp_path, model, tokenizer, pairs) != key


def test_second_run_reuses_the_cache(tmp_path, tokenizer):
    model, pairs = tiny_llama(vocab_size=1000), random_pairs(4, vocab=1000)
    messages = []
    for _ in range(2):
        cached_reference(ModelReference(model, PaddedForward(0)), tokenizer, pairs, device=CPU,
                         batch_size=2, cache_dir=tmp_path, log=messages.append, progress=False)
    assert "computing" in messages[0] and "reusing" in messages[1]


@pytest.mark.parametrize("method", ["dpo", "sampo"])
def test_training_with_cache_equals_training_with_reference(tmp_path, tokenizer, method):
    args = ["--method", method, "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--ref_cache_dir", str(tmp_path / "cache")]
    # float64 models: the cache's float32 storage is then the only rounding between the two.
    plain = make_trainer(tmp_path, tokenizer, *args, name="plain",
                         model=tiny_llama(vocab_size=1000).double())
    cached = make_trainer(tmp_path, tokenizer, *args, "--precompute_ref_log_probs", name="cached",
                          model=tiny_llama(vocab_size=1000).double())
    assert isinstance(cached.reference, ReferenceCache)
    plain.train()
    cached.train()
    losses = [[r["loss"] for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
              for name in ("plain", "cached")]
    assert len(losses[0]) == 3
    assert max_diff(torch.tensor(losses[1]), torch.tensor(losses[0])) <= \
        ulps_floor(torch.tensor(losses[0]))

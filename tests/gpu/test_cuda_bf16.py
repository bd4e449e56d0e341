"""On a CUDA GPU, in bf16 as users train there: the fast path (dense 4-D masks, and
FlexAttention block masks) against the padded path, forward and backward, judged against a
float64 run of the same step; and training that moves bf16 weights (float32 masters).
Skipped without CUDA; scripts/gpu_check.py runs it."""

from __future__ import annotations

import copy

import pytest
import torch

from fast_parity import run
from test_fast_settings import assert_bf16_as_close
from tiny import random_pairs
from preftune.forward.fast import FastForward, flex
from preftune.forward.logps import PaddedForward
from preftune.train.optim import MasterWeightAdamW

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
VOCAB = 49152


def smollm2_shaped(layers: int = 4):
    """SmolLM2-135M's shapes (hidden 576, 9 heads, 3 KV heads, tied 49k head), fewer
    layers, random weights: no download needed on the GPU machine."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
        max_position_embeddings=4096, attn_implementation="sdpa")).float()


def qwen2_shaped():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
        use_sliding_window=False, max_position_embeddings=4096,
        attn_implementation="sdpa")).float()


def long_pairs():
    """Prompts of 40-120 tokens, completions of 100-300: several pairs pack into a row."""
    import random

    from preftune.types import TokenizedPair

    rng = random.Random(7)

    def ids(lo, hi):
        return [rng.randrange(3, VOCAB) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair(i, ids(40, 120), ids(100, 300), ids(100, 300)) for i in range(6)]


@pytest.mark.parametrize("attention", ["dense", "flex"])
@pytest.mark.parametrize("build", [smollm2_shaped, qwen2_shaped], ids=["llama", "qwen2"])
@pytest.mark.parametrize("method", ["simpo", "dpo"])
def test_fast_path_in_bf16_autocast_on_cuda(attention, build, method):
    if attention == "flex" and not flex.available():
        pytest.skip("torch has no FlexAttention")
    base = build()
    pairs = long_pairs()
    truth_model = copy.deepcopy(base).double().to(CUDA)
    truth = run(PaddedForward(0), truth_model, pairs, method, truth_model, device=CUDA)
    del truth_model
    model = base.to(CUDA)
    reference = copy.deepcopy(model).eval()
    station = FastForward(0, attention=attention, log=print)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = run(station, model, pairs, method, reference, device=CUDA)
        padded_model = copy.deepcopy(base).to(CUDA)
        padded_model.set_attn_implementation("sdpa")
        expected = run(PaddedForward(0), padded_model, pairs, method, reference, device=CUDA)
    support = station.support[model]
    assert support.chunked and support.custom_mask, support.notes
    assert support.flex == (attention == "flex"), support.notes
    assert_bf16_as_close(got, expected, truth)


def test_bf16_weights_train_at_lr_1e_6_on_cuda():
    model = smollm2_shaped().to(CUDA, torch.bfloat16)
    params = [p for p in model.parameters()]
    optimizer = MasterWeightAdamW(params, lr=1e-6)
    before = [m.clone() for m in optimizer.masters()]
    logps = FastForward(0, log=print)(model, random_pairs(4, vocab=VOCAB, seed=2), CUDA)
    (-(logps.chosen.sum() - logps.rejected.sum())).backward()
    optimizer.step()
    changed = sum(int((m != b).sum()) for m, b in zip(optimizer.masters(), before))
    assert changed / sum(b.numel() for b in before) > 0.9

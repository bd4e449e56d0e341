import torch

from float64_bounds import assert_float64_close
from tiny import random_pairs, tiny_llama
from preftune.forward.logps import PaddedForward


def naive_completion_logps(model, prompt, completion):
    """One sequence at a time, no padding, float64 log-softmax over the full logits."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits, -1)
    start = len(prompt)
    return torch.stack([logps[start - 1 + i, tok] for i, tok in enumerate(completion)])


def test_padded_forward_matches_one_sequence_at_a_time():
    """In float64 (padding changes float32 summation orders, which differ between CPUs)."""
    model = tiny_llama(vocab_size=1000).double().eval()
    pairs = random_pairs(4, vocab=1000, seed=3)
    with torch.no_grad():
        out = PaddedForward(pad_token_id=0)(model, pairs, torch.device("cpu"))
        for row, pair in enumerate(pairs):
            for side, ids in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
                expected = naive_completion_logps(model, pair.prompt_ids, ids)
                got = getattr(out, side)[row]
                mask = getattr(out, f"{side}_mask")[row]
                assert int(mask.sum()) == len(ids)
                assert_float64_close(got[: len(ids)], expected, f"{side} {row}")
                assert torch.all(got[len(ids):] == 0)

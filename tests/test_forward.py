import torch

from tiny import random_pairs, tiny_llama
from preftune.forward import PaddedForward


def naive_completion_logps(model, prompt, completion):
    """One sequence at a time, no padding, float64 log-softmax over the full logits."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits, -1)
    start = len(prompt)
    return torch.stack([logps[start - 1 + i, tok] for i, tok in enumerate(completion)])


def test_padded_forward_matches_one_sequence_at_a_time():
    model = tiny_llama(vocab_size=1000).eval()
    pairs = random_pairs(4, vocab=1000, seed=3)
    with torch.no_grad():
        out = PaddedForward(pad_token_id=0)(model, pairs, torch.device("cpu"))
        for row, pair in enumerate(pairs):
            for side, ids in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
                expected = naive_completion_logps(model, pair.prompt_ids, ids)
                got = getattr(out, side)[row]
                mask = getattr(out, f"{side}_mask")[row]
                assert int(mask.sum()) == len(ids)
                assert torch.allclose(got[: len(ids)].double(), expected, atol=1e-5)
                assert torch.all(got[len(ids):] == 0)

"""Tiny random models and random tokenized pairs for fast tests."""

import random

import torch


def tiny_llama(vocab_size: int = 49152, seed: int = 0, layers: int = 2, hidden: int = 64,
               tie: bool = True):
    """A random Llama of the given body: fast enough for end-to-end tests on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=tie,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).float()


def random_pairs(n: int, vocab: int = 1000, seed: int = 0, unpaired: bool = False):
    """Tokenized pairs of random ids with ragged prompt and completion lengths."""
    from preftune.types import TokenizedPair

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        def ids(lo, hi):
            return [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]
        pairs.append(TokenizedPair(example_id=i, prompt_ids=ids(3, 12), chosen_ids=ids(1, 9),
                                   rejected_ids=ids(1, 9),
                                   label=(i % 2 == 0) if unpaired else None))
    return pairs

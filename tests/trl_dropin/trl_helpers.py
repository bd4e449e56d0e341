"""A tiny model, a word tokenizer without BOS and a few preference rows: TRL and preftune
tokenize such rows to the same ids (whitespace-separated words, EOS appended once), so
their first-step numbers can be compared."""

import random

from crash_helpers import WORDS


def word_tokenizer_without_bos():
    """TRL's CPOTrainer puts a BOS before every prompt when the tokenizer has one; preftune
    only where the tokenizer adds it itself. Without one, both tokenize alike."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", "<pad>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts of 2-8 words; completions of 1-6 words, each starting with a space (so the
    prompt + completion text splits where the prompt ends), chosen != rejected."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = []
    while len(rows) < n:
        chosen, rejected = " " + words(1, 6), " " + words(1, 6)
        if chosen != rejected:
            rows.append({"prompt": words(2, 8), "chosen": chosen, "rejected": rejected})
    return rows

"""Held-out accuracy of a model on the demo task: greedy replies, checked by the task."""

from __future__ import annotations

import torch

from preftune.demo.task import check


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 48,
                     batch_size: int = 16, progress: bool = False) -> list[str]:
    """Greedy replies to conversational prompts, through the tokenizer's chat template.

    Left padding keeps every prompt's last token next to the first generated one, which
    batched generation with a decoder-only model needs. Generation stops at EOS (for
    SmolLM2, ``<|im_end|>``); a rambling base model runs to ``max_new_tokens``, so that
    bound sets most of the cost of the "before" evaluation.
    """
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    replies = []
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="generating", unit="batch")
    try:
        for start in batches:
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[start:start + batch_size]]
            # The template already writes any BOS it wants; don't add a second one.
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id,
                                 temperature=None, top_p=None, top_k=None)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            replies += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return replies


def task_accuracy(model, tokenizer, records: list[dict], return_replies: bool = False,
                  **generate_kwargs):
    """Fraction of question records whose greedy reply the task's checker accepts."""
    prompts = [[{"role": "user", "content": r["question"]}] for r in records]
    replies = generate_answers(model, tokenizer, prompts, **generate_kwargs)
    accuracy = sum(check(r, reply) for r, reply in zip(records, replies)) / max(len(records), 1)
    return (accuracy, replies) if return_replies else accuracy

"""Best-of-N pair building: best as chosen, worst as rejected, ties dropped and counted;
program and reward-model judges behind the same scoring interface."""

import json

import pytest
import torch

from float64_bounds import ulps_floor
from preftune.data import tokenize_rows
from preftune.evaluation.judges import ProgramJudge, RewardModelJudge, load_checker
from preftune.evaluation.pairs import best_and_worst, build_pairs, score_samples

TIMES = {"kind": "times", "a": 7, "b": 8, "answer": 56, "question": "What is 7 times 8?"}


def test_best_and_worst_take_the_first_of_equal_scores():
    assert best_and_worst([0.2, 0.9, 0.1, 0.9, 0.1]) == (1, 2)
    assert best_and_worst([1.0, 1.0, 1.0]) is None
    assert best_and_worst([0, 1]) == (1, 0)


def test_build_pairs_drops_and_counts_ties(tokenizer):
    prompts = [[{"role": "user", "content": "q1"}], "q2 as text", [{"role": "user", "content": "q3"}]]
    samples = [["a", "b", "c"], ["x", "y"], ["same", "same"]]
    scores = [[0.5, 2.0, -1.0], [3.0, 1.0], [0.0, 0.0]]
    rows, stats = build_pairs(prompts, samples, scores)
    assert (stats.prompts, stats.pairs, stats.all_tied) == (3, 2, 1)
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "b"}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "c"}]
    assert rows[1] == {"prompt": "q2 as text", "chosen": "x", "rejected": "y",
                       "chosen_score": 3.0, "rejected_score": 1.0}
    # Both layouts are rows `preftune train` reads (after a JSON round trip, as from the file).
    rows = [json.loads(json.dumps(r)) for r in rows]
    pairs, _ = tokenize_rows(rows[:1], tokenizer, max_length=64, max_prompt_length=32)
    assert len(pairs) == 1
    pairs, _ = tokenize_rows(rows[1:], tokenizer, max_length=64, max_prompt_length=32)
    assert len(pairs) == 1


def test_program_judge_with_the_demo_checker():
    judge = ProgramJudge(load_checker("preftune.demo.task:check"))
    prompt = [{"role": "user", "content": TIMES["question"]}]
    samples = [["7 times 8 is 56.", "It is 54.", "56", "7 * 8 = 63"]]
    scores = score_samples(judge, [prompt], samples, [TIMES])
    assert scores == [[1.0, 0.0, 1.0, 0.0]]
    rows, _ = build_pairs([prompt], samples, scores)
    assert rows[0]["chosen"][0]["content"] == "7 times 8 is 56."
    assert rows[0]["rejected"][0]["content"] == "It is 54."
    assert judge.preference(prompt, "56", "54", TIMES) == 1.0
    assert judge.preference(prompt, "56", "7 times 8 is 56", TIMES) == 0.5
    with pytest.raises(Exception, match="module:function"):
        load_checker("preftune.demo.task.check")


def test_reward_model_judge_scores_the_rendered_conversation(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         num_labels=1)
    model = LlamaForSequenceClassification(config).double()  # padding: no float32 reordering
    judge = RewardModelJudge(model, tokenizer, batch_size=3)
    prompt = [{"role": "user", "content": "What is 7 times 8?"}]
    answers = ["56", "To find 7 times 8 we add 7 eight times, which gives 56.", "54"]
    batched = judge.scores([prompt] * 3, answers)
    for answer, score in zip(answers, batched):
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}],
                                             tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            alone = model(input_ids=ids).logits[0, 0].item()
        # Padding does not change a score (the judge reports float32).
        assert abs(score - alone) <= ulps_floor(torch.tensor(alone))
    best = max(range(3), key=lambda i: batched[i])
    assert judge.preference(prompt, answers[best], answers[(best + 1) % 3]) == 1.0

"""The length experiment's own arithmetic (experiments/length.py): how HH-RLHF transcripts
become conversations, what counts as a looping reply, the paired bootstrap, and how
on-policy pairs are picked by length."""

import importlib.util
from pathlib import Path

from preftune.evaluation.generate import Generation

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "length.py"
spec = importlib.util.spec_from_file_location("length_experiment", SCRIPT)
length = importlib.util.module_from_spec(spec)
spec.loader.exec_module(length)


def test_transcript_splits_into_turns():
    messages = length.to_messages("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: and?")
    assert messages == [{"role": "user", "content": "hi there"},
                        {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "and?"}]


def test_looping_needs_twelve_words_and_repeated_trigrams():
    assert length.repetitive("I am not sure. " * 6)  # 24 words, 4 distinct trigrams of 22
    assert not length.repetitive("I am not sure. " * 2)  # 8 words: too short to judge
    assert not length.repetitive(" ".join(f"w{i}" for i in range(30)))


def test_paired_difference_of_a_constant_shift_has_no_spread():
    d = length.paired_difference([10, 20, 30], [7, 17, 27])
    assert d == {"mean": 3.0, "low": 3.0, "high": 3.0}


def test_paired_difference_interval_covers_the_mean():
    d = length.paired_difference([0, 10, 0, 10], [0, 0, 0, 0], draws=2000)
    assert d["mean"] == 5.0
    assert 0.0 <= d["low"] < 5.0 < d["high"] <= 10.0


def test_describe_counts_replies_cut_at_the_cap():
    # Lengths are counted on decoded replies, so a reply cut by a cap of 8 counts 7 or 8.
    out = length.describe([3, 7, 8, 8], cap=8)
    assert out["mean"] == 6.5 and out["median"] == 7.5 and out["at_cap"] == 0.75


def test_onpolicy_pairs_keep_longest_and_shortest_finished_sample(monkeypatch):
    import preftune.evaluation.generate as generate_module

    def fake_generate(model, tokenizer, prompts, **kwargs):
        assert kwargs["do_sample"] and kwargs["num_samples"] == 3
        assert (kwargs["temperature"], kwargs["top_p"]) == (0.8, 0.95)
        return [
            # the cut-off sample is the longest but not a candidate
            [Generation("a b", 2, True), Generation("a b c d e", 5, True),
             Generation("x " * 9, 9, False)],
            # all finished samples have the same length: no preference, dropped
            [Generation("p q", 2, True), Generation("r s", 2, True),
             Generation("t u", 2, True)],
            # an empty sample: the prompt is dropped
            [Generation("", 0, True), Generation("a b c", 3, True),
             Generation("a", 1, True)],
        ]

    monkeypatch.setattr(generate_module, "generate", fake_generate)
    rows = [{"prompt": [{"role": "user", "content": "one"}]},
            {"prompt": [{"role": "user", "content": "two"}]},
            {"prompt": [{"role": "user", "content": "three"}]}]

    class Args:
        onpolicy, onpolicy_max_new_tokens, gen_batch, seed = 3, 16, 8, 0

    pairs, info = length.onpolicy_pairs(None, None, rows, Args)
    assert info == {"prompts": 3, "pairs": 1, "dropped_no_preference": 1,
                    "dropped_empty_sample": 1, "samples_cut_at_cap": 1, "samples": 9}
    (pair,) = pairs
    assert pair["chosen"][0]["content"] == "a b c d e"
    assert pair["rejected"][0]["content"] == "a b"
    assert pair["_lengths"] == (5, 2)


def test_selection_keeps_held_out_prompts_apart_from_training():
    class Tokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": [{"role": "assistant", "content": "c " * (3 if i % 2 else 1)}],
             "rejected": [{"role": "assistant", "content": "r " * 2}]} for i in range(40)]
    train, held_out, sft = length.select(rows, Tokenizer(), n_train=5, n_prompts=6, n_sft=4,
                                         max_prompt=10, seed=1)
    assert len(train) == 5 and len(held_out) == 6 and len(sft) == 4
    assert all(r["_lengths"][0] > r["_lengths"][1] for r in train)
    seen = [m[0]["content"] for m in held_out]
    used = [r["prompt"][0]["content"] for r in train + sft]
    assert not set(seen) & set(used)
    assert len(set(used)) == len(used)


def test_compare_draws_runs_from_their_results(tmp_path):
    for name, lr in (("a", 1e-5), ("b", 3e-6)):
        folder = tmp_path / name
        folder.mkdir()
        paired = {f"{m} - sft": {"mean": 5.0, "low": 1.0, "high": 9.0}
                  for m in ("dpo", "simpo", "sampo")}
        paired["dpo - simpo"] = {"mean": 0.0, "low": -1.0, "high": 1.0}
        settings = {"onpolicy": 0, "sft_steps": 32, "learning_rate": lr, "steps": 24}
        (folder / "results-16.json").write_text(
            length.json.dumps({"settings": settings, "paired": paired}))
    out = tmp_path / "summary.png"
    length.compare([tmp_path / "a", tmp_path / "b"], 16, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

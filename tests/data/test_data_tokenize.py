"""Rows -> TokenizedPair: prefix property, BOS/EOS, truncation, bad rows, KTO, real data."""


import pytest

from preftune.data import DataError, read_file, tokenize_rows

USER = {"role": "user", "content": "What is 2+2?"}
GOOD_ANSWER = {"role": "assistant", "content": "4"}
BAD_ANSWER = {"role": "assistant", "content": "5"}
HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: A joke?"
                "\n\nAssistant: Why did the chicken cross the road?",
      "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: A joke?"
                  "\n\nAssistant: No."}


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def run(rows, tokenizer, max_length=512, max_prompt_length=256, **kwargs):
    return tokenize_rows(rows, tokenizer, max_length=max_length,
                         max_prompt_length=max_prompt_length, **kwargs)


def test_standard_prompt_ids_are_an_exact_prefix_and_eos_ends_once(smollm2):
    (pair,), report = run([{"prompt": "Say hi.", "chosen": " Hi!", "rejected": " No."}],
                          smollm2)
    assert pair.prompt_ids == encode(smollm2, "Say hi.")  # SmolLM2 adds no BOS
    assert pair.chosen_ids == encode(smollm2, " Hi!") + [smollm2.eos_token_id]
    assert pair.rejected_ids == encode(smollm2, " No.") + [smollm2.eos_token_id]
    assert report.pairs_out == 1 and report.rows_in == 1


def test_completion_already_ending_with_eos_is_not_doubled(smollm2):
    (pair,), _ = run([{"prompt": "Q", "chosen": " a<|im_end|>", "rejected": " b"}], smollm2)
    assert pair.chosen_ids.count(smollm2.eos_token_id) == 1
    assert pair.chosen_ids[-1] == smollm2.eos_token_id


def test_conversational_uses_the_chat_template(smollm2):
    (pair,), report = run([{"prompt": [USER], "chosen": [GOOD_ANSWER],
                            "rejected": [BAD_ANSWER]}], smollm2)
    prompt_text = smollm2.apply_chat_template([USER], add_generation_prompt=True,
                                              tokenize=False)
    full_text = smollm2.apply_chat_template([USER, GOOD_ANSWER], tokenize=False)
    assert pair.prompt_ids == encode(smollm2, prompt_text)
    # The template's trailing "\n" after <|im_end|> is cut: EOS is the last token, once.
    assert smollm2.decode(pair.prompt_ids + pair.chosen_ids) == full_text.rstrip("\n")
    assert smollm2.decode(pair.chosen_ids) == "4<|im_end|>"
    for ids in (pair.chosen_ids, pair.rejected_ids):
        assert ids.count(smollm2.eos_token_id) == 1 and ids[-1] == smollm2.eos_token_id
    assert report.data_format == "paired, conversational"


def test_chat_template_override(smollm2):
    template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>"
                "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    (pair,), _ = run([{"prompt": [USER], "chosen": [GOOD_ANSWER], "rejected": [BAD_ANSWER]}],
                     smollm2, chat_template=template)
    assert smollm2.decode(pair.prompt_ids) == "[user] What is 2+2?<|im_end|>[assistant] "
    assert smollm2.decode(pair.chosen_ids) == "4<|im_end|>"


def test_bos_added_once_for_tokenizers_that_use_it(bos_tokenizer):
    rows = [{"prompt": "hello world", "chosen": " good", "rejected": " bad"},
            {"prompt": "<s> hello world", "chosen": " good", "rejected": " bad"}]
    pairs, _ = run(rows, bos_tokenizer)
    bos, eos = bos_tokenizer.bos_token_id, bos_tokenizer.eos_token_id
    for pair in pairs:
        assert pair.prompt_ids[0] == bos and pair.prompt_ids.count(bos) == 1
        assert pair.chosen_ids[-1] == eos and pair.chosen_ids.count(eos) == 1
        assert bos not in pair.chosen_ids + pair.rejected_ids


def test_bos_not_doubled_when_the_template_writes_it(bos_tokenizer):
    template = ("<s>{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s>"
                "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    rows = [{"prompt": "how are you", "chosen": "fine", "rejected": "bad"}]
    (pair,), _ = run(rows, bos_tokenizer, data_format="conversational",
                     chat_template=template)
    assert pair.prompt_ids.count(bos_tokenizer.bos_token_id) == 1
    assert pair.prompt_ids[0] == bos_tokenizer.bos_token_id
    assert pair.chosen_ids.count(bos_tokenizer.eos_token_id) == 1


def test_conversational_data_without_a_template_is_an_error(bos_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        run([{"prompt": [USER], "chosen": [GOOD_ANSWER], "rejected": [BAD_ANSWER]}],
            bos_tokenizer)


def test_prompt_is_cut_from_the_left_keeping_bos(bos_tokenizer):
    prompt = " ".join("abcdefghijklmnop")
    (pair,), report = run([{"prompt": prompt, "chosen": " good", "rejected": " bad"}],
                          bos_tokenizer, max_length=8, max_prompt_length=5)
    full = bos_tokenizer(prompt)["input_ids"]
    assert pair.prompt_ids == [bos_tokenizer.bos_token_id] + full[-4:]
    assert report.prompts_truncated == 1 and report.completions_truncated == 0


def test_truncation_prompt_first_then_completions_stay_non_empty(smollm2):
    prompt = "word " * 50
    row = {"prompt": prompt, "chosen": " yes " * 20, "rejected": " no"}
    (pair,), report = run([row], smollm2, max_length=24, max_prompt_length=20)
    assert pair.prompt_ids == encode(smollm2, prompt)[-20:]  # the end of the prompt is kept
    assert len(pair.chosen_ids) == 4 and pair.chosen_ids == encode(smollm2, " yes " * 20)[:4]
    assert pair.rejected_ids == encode(smollm2, " no") + [smollm2.eos_token_id]
    assert report.prompts_truncated == 1 and report.completions_truncated == 1


def test_pair_without_room_is_dropped_and_counted(smollm2):
    rows = [{"prompt": "word " * 50, "chosen": " yes", "rejected": " no"},
            {"prompt": "short", "chosen": " yes", "rejected": " no"}]
    pairs, report = run(rows, smollm2, max_length=16, max_prompt_length=16)
    assert [p.example_id for p in pairs] == [1]
    assert report.dropped_too_long == 1 and report.pairs_out == 1
    assert "dropped 1" in report.summary()


def test_empty_prompt_needs_a_token(smollm2, bos_tokenizer):
    row = {"prompt": "", "chosen": " good", "rejected": " bad"}
    with pytest.raises(DataError) as caught:
        run([row], smollm2)
    assert (caught.value.row, caught.value.field) == (0, "prompt")
    (pair,), _ = run([row], bos_tokenizer)  # BOS alone is a prompt
    assert pair.prompt_ids == [bos_tokenizer.bos_token_id]


BAD = [{"prompt": "Q", "chosen": "", "rejected": " n"},
       {"prompt": "Q", "chosen": " y"},
       {"prompt": "Q", "chosen": " same", "rejected": " same"},
       {"prompt": "", "chosen": " y", "rejected": " n"}]


def test_first_bad_row_raises_without_skipping(smollm2):
    rows = [{"prompt": "Q", "chosen": " y", "rejected": " n"}, *BAD]
    with pytest.raises(DataError) as caught:
        run(rows, smollm2)
    assert (caught.value.row, caught.value.field, caught.value.reason) == \
        (1, "chosen", "empty completion")


def test_skip_bad_rows_counts_each_reason(smollm2):
    good = {"prompt": "Q", "chosen": " y", "rejected": " n"}
    pairs, report = run([good, *BAD, good], smollm2, skip_bad_rows=True)
    assert [p.example_id for p in pairs] == [0, 5]
    assert report.skipped == {"empty completion": 1, "missing field": 1,
                              "identical to chosen": 1, "empty prompt": 1}
    assert report.skipped_examples[0] == "row 1, field 'chosen': empty completion"
    assert "skipped 4 bad rows" in report.summary()


def test_unpaired_rows_get_mismatched_kl_completions(smollm2):
    rows = [{"prompt": f"Question {i}?", "completion": f" Answer number {i}.",
             "label": i % 2 == 0} for i in range(4)]
    pairs, _ = run(rows, smollm2, unpaired=True)
    assert [p.label for p in pairs] == [True, False, True, False]
    for k, pair in enumerate(pairs):
        following = pairs[(k + 1) % len(pairs)]
        assert pair.rejected_ids == following.chosen_ids != pair.chosen_ids


def test_kl_completion_is_cut_to_this_prompts_budget(smollm2):
    rows = [{"prompt": "word " * 10, "completion": " a", "label": True},
            {"prompt": "Q", "completion": " b" * 30, "label": False}]
    pairs, _ = run(rows, smollm2, max_length=14, max_prompt_length=12, unpaired=True)
    budget = 14 - len(pairs[0].prompt_ids)
    assert pairs[0].rejected_ids == encode(smollm2, " b" * 30)[:budget]
    assert pairs[1].rejected_ids == pairs[0].chosen_ids


def test_paired_rows_for_kto_give_unique_ids(smollm2):
    other = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    pairs, report = run([HH, other], smollm2, unpaired=True)
    assert sorted(p.example_id for p in pairs) == [0, 1, 2, 3]
    assert [p.label for p in pairs] == [True, True, False, False]
    # Desirable rows first, then undesirable: each neighbour comes from another pair.
    assert smollm2.decode(pairs[0].rejected_ids) == " Hello.<|im_end|>"
    assert smollm2.decode(pairs[1].rejected_ids) == " No.<|im_end|>"
    assert report.pairs_out == 4


def test_unpaired_rows_need_unpaired(smollm2):
    with pytest.raises(ValueError, match="unpaired"):
        run([{"prompt": "Q", "completion": " a", "label": True}], smollm2)


def test_implicit_hh_row(smollm2):
    (pair,), _ = run([HH], smollm2)
    assert smollm2.decode(pair.prompt_ids).endswith("\n\nHuman: A joke?\n\nAssistant:")
    assert smollm2.decode(pair.chosen_ids) == " Why did the chicken cross the road?<|im_end|>"


def test_hh_rlhf_file_at_256_gives_non_empty_completions(smollm2, hh_file):
    rows = read_file(hh_file)
    pairs, report = run(rows, smollm2, max_length=256, max_prompt_length=128,
                        skip_bad_rows=True)
    # Four rows of the file end with an empty assistant turn.
    assert report.skipped == {"empty completion": 4}
    assert report.pairs_out == len(pairs) == 2308 and report.dropped_too_long == 0
    for pair in pairs:
        assert 1 <= len(pair.prompt_ids) <= 128
        for ids in (pair.chosen_ids, pair.rejected_ids):
            assert ids and len(pair.prompt_ids) + len(ids) <= 256
    assert report.prompts_truncated > 0 and report.completions_truncated > 0


def test_openai_schema_file_auto_and_one_line_mapping(smollm2, orca_file):
    rows = read_file(orca_file)
    auto, report = run(rows, smollm2, max_length=1024, max_prompt_length=512)
    mapped, _ = run(rows, smollm2, max_length=1024, max_prompt_length=512, column_mapping={
        "prompt": "input.messages", "chosen": "preferred_output",
        "rejected": "non_preferred_output"})
    assert auto == mapped and len(auto) == len(rows)
    assert report.data_format == "paired, conversational"
    assert smollm2.decode(auto[0].prompt_ids).startswith("<|im_start|>system\n")
    assert smollm2.decode(auto[0].prompt_ids).endswith("<|im_start|>assistant\n")

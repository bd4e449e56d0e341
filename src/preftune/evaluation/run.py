"""``preftune eval``: held-out preference metrics and generations of one model.

    preftune eval outputs/simpo --data heldout.jsonl --method simpo --beta 2.5
    preftune eval outputs/dpo --data heldout.jsonl --method dpo --ref_model smollm2
    preftune eval outputs/simpo --prompts questions.jsonl --max_new_tokens 512 \\
        --export alpaca_eval,arena_hard,mt_bench

Writes ``OUTPUT_DIR/eval.json`` (metrics, generation settings, answer-length statistics)
and ``OUTPUT_DIR/generations.jsonl`` (one row per answer), plus the chosen exports.
Every ``preftune train`` key (method, data, model) and every generation key
(config.GenerationConfig) is accepted as ``--key value``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import torch

from preftune.config import (Config, ConfigError, GenerationConfig, build_config,
                             parse_overrides, split_generation_keys)
from preftune.evaluation.generate import generate
from preftune.evaluation.lengths import length_stats, word_count
from preftune.evaluation.prompts import PromptItem, preference_prompts, prompt_text, read_prompts

DEFAULT_METHOD = "simpo"


def parse_args(argv: list[str], prog: str = "preftune eval"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder, hub id, or smollm2")
    parser.add_argument("--data", help="preference file (any format `preftune train` reads)")
    parser.add_argument("--prompts", help="prompt file (.jsonl/.json/.txt); default: the "
                                          "prompts of --data")
    parser.add_argument("--output_dir", default="outputs/eval")
    parser.add_argument("--model_id", help="name in generations and exports; default: the "
                                           "model folder's name")
    parser.add_argument("--export", default="", help="comma-separated: alpaca_eval, "
                                                     "arena_hard, mt_bench")
    known, rest = parser.parse_known_args(argv)
    generation, values = split_generation_keys(parse_overrides(rest))
    values["model_name_or_path"] = known.model
    if known.data:
        values["dataset_name"] = known.data
    return known, generation, build_config(values)


def device_of() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_for_eval(config: Config, device: torch.device):
    from preftune.model_io import load_model, parse_dtype
    from preftune.setup import build_tokenizer

    m = config.model
    tokenizer = build_tokenizer(config)
    model = load_model(m.model_name_or_path, parse_dtype(m.torch_dtype, device),
                       trust_remote_code=m.trust_remote_code,
                       attn_implementation=m.attn_implementation).to(device)
    return model, tokenizer


def evaluate_preferences(config: Config, model, tokenizer, rows: list[dict],
                         device: torch.device, log=print) -> dict:
    """Tokenize the rows like training does and score them (evaluation.metrics)."""
    from preftune.data import tokenize_rows
    from preftune.evaluation.metrics import preference_metrics
    from preftune.fast import build_forward
    from preftune.method import chooses_objective, resolve_method
    from preftune.model_io import load_model, parse_dtype
    from preftune.reference import ModelReference

    c = config
    if not chooses_objective(c.method):
        c.method.method = DEFAULT_METHOD
        log(f"no --method given: scoring with {DEFAULT_METHOD}'s implicit reward")
    method = resolve_method(c.method, c.model.ref_model)
    reference = None
    forward = build_forward(c, tokenizer, log=log)
    if method.needs_reference:
        if not c.model.ref_model:
            raise ConfigError(
                f"{method.objective.name}'s implicit reward is measured against a reference "
                "model: pass --ref_model (the model this one was trained from, e.g. smollm2), "
                "or --reference_free true to score against a uniform reference")
        ref = load_model(c.model.ref_model, parse_dtype(c.model.torch_dtype, device),
                         trust_remote_code=c.model.trust_remote_code).to(device)
        reference = ModelReference(ref, forward)
    d = c.data
    pairs, report = tokenize_rows(rows, tokenizer, max_length=d.max_length,
                                  max_prompt_length=d.prompt_limit,
                                  data_format=d.data_format, column_mapping=d.column_mapping,
                                  skip_bad_rows=d.skip_bad_rows)
    log("eval data: " + report.summary())
    metrics = preference_metrics(model, pairs, method, forward, reference,
                                 batch_size=c.training.per_device_eval_batch_size,
                                 device=device, progress=c.training.progress_bar)
    return {"method": method.describe(), **metrics}


def generate_rows(model, tokenizer, items: list[PromptItem], g: GenerationConfig,
                  model_id: str, progress: bool = True) -> list[dict]:
    """One row per (prompt, sample); questions with later turns (MT-Bench) are continued,
    greedily or sampled alike, one turn at a time."""
    options = dict(max_new_tokens=g.max_new_tokens, do_sample=g.do_sample,
                   temperature=g.temperature, top_p=g.top_p,
                   batch_size=g.generation_batch_size, seed=g.generation_seed)
    answers = generate(model, tokenizer, [it.prompt for it in items], num_samples=g.num_samples,
                       progress=progress, **options)
    rows, rows_of_item = [], []
    for item, samples in zip(items, answers):
        rows_of_item.append([])
        for k, answer in enumerate(samples):
            row = {"question_id": item.question_id, "sample": k, "prompt": item.prompt,
                   "instruction": prompt_text(item.prompt), "output": answer.text,
                   "generator": model_id, "num_tokens": answer.num_tokens,
                   "num_words": word_count(answer.text), "finished": answer.finished,
                   "turns": [answer.text], "turn_tokens": [answer.num_tokens],
                   "source": item.source}
            rows.append(row)
            rows_of_item[-1].append(row)
    turn = 0
    while True:
        waiting = [(it, r) for it, item_rows in zip(items, rows_of_item)
                   if len(it.later_turns) > turn for r in item_rows]
        if not waiting:
            break
        conversations = [_conversation(it.prompt, r["turns"], it.later_turns[:turn + 1])
                         for it, r in waiting]
        follow = generate(model, tokenizer, conversations, progress=progress, **options)
        for (_, row), (answer,) in zip(waiting, follow):
            row["turns"].append(answer.text)
            row["turn_tokens"].append(answer.num_tokens)
        turn += 1
    return rows


def _conversation(first: list[dict], answers: list[str], later: list[str]) -> list[dict]:
    messages = list(first)
    for answer, question in zip(answers, later):
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": question}]
    return messages


def run(argv: list[str]) -> int:
    from preftune.data import load_rows
    from preftune.evaluation.exports import write_exports

    known, g, config = parse_args(argv)
    if not known.data and not known.prompts:
        raise ConfigError("nothing to evaluate: give --data (preference metrics, and prompts "
                          "to answer) and/or --prompts")
    out = Path(known.output_dir)
    model_id = known.model_id or Path(known.model.rstrip("/")).name
    device = device_of()
    model, tokenizer = load_for_eval(config, device)
    result: dict = {"model": known.model, "model_id": model_id}
    rows: list[dict] = []
    if known.data:
        d = config.data
        # A hub dataset's held-out split: --dataset_test_split test.
        rows = load_rows(d.dataset_name, d.dataset_test_split or d.dataset_train_split,
                         d.dataset_config)
        rows = rows[:d.max_eval_samples] if d.max_eval_samples else rows
        result["data"] = known.data
        result["preference"] = evaluate_preferences(config, model, tokenizer, rows, device)
    generations: list[dict] = []
    if g.max_new_tokens > 0:
        items = (read_prompts(known.prompts, g.max_prompts) if known.prompts
                 else preference_prompts(rows, config.data.data_format,
                                         config.data.column_mapping, g.max_prompts))
        generations = generate_rows(model, tokenizer, items, g, model_id,
                                    progress=config.training.progress_bar)
        result["prompts"] = known.prompts or known.data
        result["generation"] = {"settings": vars(g), "answers": len(generations),
                                "finished": sum(r["finished"] for r in generations),
                                "lengths": {"tokens": length_stats([r["num_tokens"] for r in generations]),
                                            "words": length_stats([r["num_words"] for r in generations])}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    if generations:
        write_jsonl(out / "generations.jsonl", generations)
        formats = [f.strip() for f in known.export.split(",") if f.strip()]
        if formats:
            for name, path in write_exports(generations, model_id, out, formats).items():
                print(f"{name}: {path}")
    print_summary(result)
    print(f"wrote {out / 'eval.json'}")
    return 0


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def print_summary(result: dict, print_fn=print) -> None:
    p = result.get("preference")
    if p:
        print_fn(f"{p['method']} on {p['pairs']} pairs: reward accuracy "
                 f"{p['reward_accuracy']:.1%}, margin {p['reward_margin']:.4f}, chosen NLL "
                 f"{p['nll_chosen']:.4f}/token")
    gen = result.get("generation")
    if gen:
        t, w = gen["lengths"]["tokens"], gen["lengths"]["words"]
        print_fn(f"{gen['answers']} answers ({gen['finished']} ended by EOS): tokens mean "
                 f"{t['mean']:.1f}, median {t['median']:.0f}, p10 {t['p10']:.0f}, p90 "
                 f"{t['p90']:.0f}; words mean {w['mean']:.1f}")

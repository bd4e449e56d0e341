"""``preftune eval``: held-out preference metrics and generations of one model.

    preftune eval outputs/dpo --data heldout.jsonl              # as the run trained
    preftune eval outputs/dpo/checkpoint-40 --data heldout.jsonl
    preftune eval outputs/simpo --data heldout.jsonl --method simpo --beta 2.5
    preftune eval some/model --data heldout.jsonl --method dpo --ref_model smollm2
    preftune eval outputs/simpo --prompts questions.jsonl --max_new_tokens 512 \\
        --export alpaca_eval,arena_hard,mt_bench
    accelerate launch -m preftune.cli eval outputs/dpo --data heldout.jsonl  # several devices

A run's folder (or checkpoint) says how the run trained (evaluation/saved_run.py): its
objective and reference are the defaults. Writes ``OUTPUT_DIR/eval.json`` (metrics,
generation settings, answer-length statistics) and ``OUTPUT_DIR/generations.jsonl`` (one
row per answer), plus the chosen exports. Every ``preftune train`` key (method, data,
model) and every generation key (config.GenerationConfig) is accepted as ``--key value``.
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
from preftune.evaluation.saved_run import eval_values


def parse_args(argv: list[str], prog: str = "preftune eval"):
    """``(known, generation settings, config, notes)``: the config holds the saved run's
    settings under the ones given (saved_run.py); ``notes`` say which were taken."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model, run or checkpoint folder, hub id, or smollm2")
    parser.add_argument("--data", help="preference file (any format `preftune train` reads)")
    parser.add_argument("--prompts", help="prompt file (.jsonl/.json/.txt); default: the "
                                          "prompts of --data")
    parser.add_argument("--output_dir", default="outputs/eval")
    parser.add_argument("--model_id", help="name in generations and exports; default: the "
                                           "model folder's name")
    parser.add_argument("--export", default="", help="comma-separated: alpaca_eval, "
                                                     "arena_hard, mt_bench")
    known, rest = parser.parse_known_args(argv)
    generation, given = split_generation_keys(parse_overrides(rest))
    given["model_name_or_path"] = known.model
    if known.data:
        given["dataset_name"] = known.data
    values, notes = eval_values(known.model, given)
    return known, generation, build_config(values), notes


def device_of() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_for_eval(config: Config, device: torch.device):
    """Model (LoRA adapters over their base, where the folder holds adapters) and
    tokenizer, for generation."""
    from preftune.setup import build_scored_model, build_tokenizer

    return build_scored_model(config, device).to(device), build_tokenizer(config)


def score_rows(config: Config, rows: list[dict], log=print):
    """``(parts, metrics)``: the rows tokenized like training does and scored by the one
    scorer (preftune.train.scoring), on every process of a launch."""
    from preftune.assemble import assemble_scoring
    from preftune.evaluation.metrics import summarize
    from preftune.train.scoring import score_pairs

    parts = assemble_scoring(config, rows=rows, log=log)
    means = score_pairs(parts, parts.eval_pairs, config.training.per_device_eval_batch_size,
                        progress=config.training.progress_bar)
    if not means:
        raise ConfigError("--data: no pair left to score after tokenization (see above)")
    return parts, {"method": parts.method.describe(), **summarize(means, len(parts.eval_pairs))}


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
    known, g, config, notes = parse_args(argv)
    if not known.data and not known.prompts:
        raise ConfigError("nothing to evaluate: give --data (preference metrics, and prompts "
                          "to answer) and/or --prompts")
    for note in notes:
        print(note)
    model_id = known.model_id or Path(known.model.rstrip("/")).name
    result: dict = {"model": known.model, "model_id": model_id}
    rows = _held_out_rows(config) if known.data else []
    main = True
    if known.data:
        parts, result["preference"] = score_rows(config, rows)
        result["data"] = known.data
        model, tokenizer = parts.accelerator.unwrap_model(parts.model), parts.tokenizer
        # Every process of a launch scores its share; generation runs on each (the same
        # answers) and the main process writes.
        main = parts.accelerator.is_main_process
    else:
        model, tokenizer = load_for_eval(config, device_of())
    generations: list[dict] = []
    if g.max_new_tokens > 0:
        items = (read_prompts(known.prompts, g.max_prompts) if known.prompts
                 else preference_prompts(rows, config.data.data_format,
                                         config.data.column_mapping, g.max_prompts))
        generations = generate_rows(model, tokenizer, items, g, model_id,
                                    progress=config.training.progress_bar)
        result["prompts"] = known.prompts or known.data
        result["generation"] = generation_summary(g, generations)
    if main:
        write_results(Path(known.output_dir), result, generations, model_id, known.export)
    return 0


def _held_out_rows(config: Config) -> list[dict]:
    from preftune.data import load_rows

    d = config.data
    # A hub dataset's held-out split: --dataset_test_split test.
    rows = load_rows(d.dataset_name, d.dataset_test_split or d.dataset_train_split,
                     d.dataset_config)
    return rows[:d.max_eval_samples] if d.max_eval_samples else rows


def generation_summary(g: GenerationConfig, generations: list[dict]) -> dict:
    return {"settings": vars(g), "answers": len(generations),
            "finished": sum(r["finished"] for r in generations),
            "lengths": {"tokens": length_stats([r["num_tokens"] for r in generations]),
                        "words": length_stats([r["num_words"] for r in generations])}}


def write_results(out: Path, result: dict, generations: list[dict], model_id: str,
                  export: str) -> None:
    from preftune.evaluation.exports import write_exports

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    if generations:
        write_jsonl(out / "generations.jsonl", generations)
        formats = [f.strip() for f in export.split(",") if f.strip()]
        if formats:
            for name, path in write_exports(generations, model_id, out, formats).items():
                print(f"{name}: {path}")
    print_summary(result)
    print(f"wrote {out / 'eval.json'}")


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

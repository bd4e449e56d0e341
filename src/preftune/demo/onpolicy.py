"""On-policy preference tuning on the demo task: the model's own samples, checked by the
task's program, become the pairs it is tuned on.

    python -m preftune.demo.onpolicy    # defaults below; 46 min on a busy shared 2-core CPU
    python -m preftune.demo.onpolicy --num_prompts 32 --max_steps 8 --output_dir outputs/op

SmolLM2 answers ``num_prompts`` training questions (held-out facts are never asked)
``num_samples`` times each at the SimPO repository's sampling settings; the task checker
scores every sample; per question the first correct sample is chosen and the first wrong
one rejected (evaluation.pairs). Questions it always gets right or always wrong carry no
on-policy preference. With ``--fallback true`` (the default) an always-wrong question
still yields a pair: the task's reference answer as chosen against the model's own wrong
sample, since a small model that rarely lands a correct answer would otherwise give too few
pairs; the report counts both kinds. Training is the demo's SimPO setting through
``preftune.train.trainer.Trainer``; held-out task accuracy (greedy, checked) is measured before
and after. Writes OUTPUT_DIR/pairs.jsonl, onpolicy.json and onpolicy.md.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from preftune.demo.accuracy import task_accuracy
from preftune.demo.run import DATA, DEFAULTS
from preftune.demo.task import (CONVERT_ANSWER, TIMES_ANSWER, check, question_records,
                                split_items)
from preftune.evaluation.generate import generate
from preftune.evaluation.judges import ProgramJudge
from preftune.evaluation.pairs import (SIMPO_NUM_SAMPLES, SIMPO_TEMPERATURE, SIMPO_TOP_P,
                                       build_pairs, pair_row, score_samples)
from preftune.train.metrics import read_jsonl


def training_questions(n: int, seed: int = 0) -> list[dict]:
    """``n`` question records from the training facts, alternating the two kinds."""
    train, _ = split_items()
    rng = random.Random(seed)
    pools = {kind: [r for item in items for r in question_records(item, rng)]
             for kind, items in train.items()}
    for pool in pools.values():
        rng.shuffle(pool)
    return [pools[("times", "convert")[i % 2]][i // 2] for i in range(n)]


def reference_answer(record: dict) -> str:
    """The task's taught answer form, e.g. "8 times 9 is 72."."""
    template = TIMES_ANSWER if record["kind"] == "times" else CONVERT_ANSWER
    return template.format(value=record["answer"], **{k: v for k, v in record.items()
                                                      if k not in ("question", "answer")})


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m preftune.demo.onpolicy")
    parser.add_argument("--num_prompts", type=int, default=40)
    parser.add_argument("--num_samples", type=int, default=SIMPO_NUM_SAMPLES)
    parser.add_argument("--temperature", type=float, default=SIMPO_TEMPERATURE)
    parser.add_argument("--top_p", type=float, default=SIMPO_TOP_P)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--max_steps", type=int, default=12)
    parser.add_argument("--fallback", type=lambda s: s.lower() == "true", default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/onpolicy")
    return parser.parse_args(argv)


def report_markdown(result: dict, held_out: list[dict], replies: list[str]) -> str:
    r = result
    return (f"# On-policy SimPO on the demo task\n\n{r['method']}, {r['steps']} steps "
            f"of {r['batch']} pairs, {r['minutes']:.1f} minutes in all.\n\n"
            f"| held-out ({r['held_out_questions']} questions) | before | after |\n"
            f"|---|---|---|\n"
            f"| task accuracy | {r['accuracy_before']:.1%} | {r['accuracy_after']:.1%} |\n\n"
            f"Pairs: {r['on_policy_pairs']} on-policy (correct vs wrong sample) and "
            f"{r['reference_pairs']} reference answer vs wrong sample, from "
            f"{r['train_questions']} training questions x {r['samples_per_question']} samples "
            f"({r['sample_accuracy']:.1%} of samples correct).\n\nReplies after tuning:\n"
            + "\n".join(f"- {row['question']} -> {reply.strip()[:80]!r}"
                        for row, reply in list(zip(held_out, replies))[:5]) + "\n")


def main(argv=None) -> int:
    from preftune.config import load_config
    from preftune.model_io import load_model, load_tokenizer
    from preftune.train.trainer import Trainer

    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2"), load_tokenizer("smollm2")
    held_out = read_jsonl(DATA / "eval.jsonl")
    before = task_accuracy(model, tokenizer, held_out, batch_size=50, progress=True)

    records = training_questions(args.num_prompts, args.seed)
    prompts = [[{"role": "user", "content": r["question"]}] for r in records]
    samples = [[g.text for g in answers] for answers in generate(
        model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, do_sample=True,
        temperature=args.temperature, top_p=args.top_p, num_samples=args.num_samples,
        batch_size=16, seed=args.seed, progress=True)]
    scores = score_samples(ProgramJudge(check), prompts, samples, records)
    rows, stats = build_pairs(prompts, samples, scores)
    all_wrong = [i for i, s in enumerate(scores) if max(s) == 0]
    fallback_rows = [pair_row(prompts[i], reference_answer(records[i]), samples[i][0],
                              chosen_score=1.0, rejected_score=0.0) for i in all_wrong]
    if args.fallback:
        rows += fallback_rows
    sample_accuracy = sum(map(sum, scores)) / sum(map(len, scores))
    data = out / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"samples correct: {sample_accuracy:.1%}; {stats.summary()} "
          f"({len(all_wrong)} all wrong, {stats.all_tied - len(all_wrong)} all right); "
          f"{len(fallback_rows) if args.fallback else 0} reference-answer pairs added")

    config = load_config(None, DEFAULTS + ["--dataset_name", str(data), "--max_steps",
                                           str(args.max_steps), "--output_dir", str(out / "model")])
    trainer = Trainer(config, model=model, tokenizer=tokenizer)
    trainer.train()
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    after, replies = task_accuracy(tuned, tokenizer, held_out, batch_size=50, progress=True,
                                   return_replies=True)
    minutes = (time.perf_counter() - start) / 60
    result = {"held_out_questions": len(held_out), "accuracy_before": before,
              "accuracy_after": after, "train_questions": len(records),
              "samples_per_question": args.num_samples, "sample_accuracy": sample_accuracy,
              "on_policy_pairs": stats.pairs, "all_tied": stats.all_tied,
              "all_wrong": len(all_wrong),
              "reference_pairs": len(fallback_rows) if args.fallback else 0,
              "method": trainer.method.describe(), "steps": trainer.step,
              "batch": trainer.plan.global_batch, "minutes": minutes}
    (out / "onpolicy.json").write_text(json.dumps(result, indent=2))
    report = report_markdown(result, held_out, replies)
    (out / "onpolicy.md").write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

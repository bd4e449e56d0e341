"""Does DPO lengthen generations more than SimPO and SamPO? A short CPU experiment.

    python experiments/length.py                        # 17 minutes on 2 quiet cores
    python experiments/length.py --onpolicy 4 --out outputs/length-onpolicy \
        --models_from outputs/length                    # on-policy pairs, same SFT model
    python experiments/length.py --sft_steps 1 --steps 1 --prompts 2 --max_new_tokens 16 \
        --out /tmp/smoke                                # a smoke run
    python experiments/length.py --compare OUT1 OUT2 --out summary.png

An interrupted run picks up where it stopped: models whose answers are already in
OUT/results-CAP.json (same settings; CAP is --max_new_tokens) are not asked again, and a
model trained with the same training settings is loaded from OUT/NAME (or --models_from)
instead of being trained again, so another cap costs generation only.

Data: HH-RLHF harmless-base (the shared test split), turned into conversations (each
"Human:"/"Assistant:" turn one message) so the chat template applies and generation stops at
SmolLM2's end-of-turn token. Training pairs are those whose chosen answer is longer than the
rejected one, so "longer is preferred" is in the data; with --onpolicy, the same prompts get
answers sampled from the starting model instead, the longest chosen and the shortest
rejected. Held-out prompts and SFT rows come from other rows.

SmolLM2-135M-Instruct is first fine-tuned on the SFT rows' chosen answers (--sft_steps; the
seeds tune SFT models), then each method trains from that model on the same pairs in the same
order and answers the held-out prompts greedily; the SFT model answers them too. The script
writes OUT/results-CAP.json (every reply included), OUT/length-CAP.md (the table) and
OUT/length-CAP.png (the plot), and keeps each run's folder (metrics.jsonl, the trained
model; `preftune report OUT/dpo OUT/simpo OUT/sampo` draws their training curves).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH_RLHF = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"

# Published settings (recipes/: DPO/SamPO beta 0.1; SimPO beta 2.5, gamma/beta 0.55 for
# Llama-3-8B-Instruct) with one learning rate for all three: the published 3e-7..1e-6 runs
# take thousands of steps; a few dozen steps need a larger rate to move a 135M model.
METHODS = {
    "dpo": ["--method", "dpo", "--beta", "0.1"],
    "simpo": ["--method", "simpo", "--beta", "2.5", "--gamma_beta_ratio", "0.55"],
    "sampo": ["--method", "sampo", "--beta", "0.1"],
    "sft": ["--method", "sft"],
}


def to_messages(transcript: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user: a}, {assistant: b}]."""
    messages = []
    rest = transcript
    while rest:
        role = "user" if rest.startswith(HUMAN) else "assistant"
        rest = rest[len(HUMAN if role == "user" else ASSISTANT):]
        ends = [i for i in (rest.find(HUMAN), rest.find(ASSISTANT)) if i >= 0]
        end = min(ends) if ends else len(rest)
        messages.append({"role": role, "content": rest[:end].strip()})
        rest = rest[end:]
    return messages


def conversations(path: Path) -> list[dict]:
    """HH-RLHF rows -> {prompt: messages, chosen: [assistant], rejected: [assistant]};
    rows whose transcripts do not split into well-formed turns are left out."""
    from preftune.data.formats import _split_implicit

    rows = []
    with gzip.open(path, "rt") as handle:
        for index, line in enumerate(handle):
            raw = json.loads(line)
            try:
                prompt, chosen, rejected = _split_implicit(index, raw["chosen"], raw["rejected"])
            except ValueError:
                continue
            messages = to_messages(prompt[:-len(ASSISTANT)])
            if (not messages or messages[-1]["role"] != "user"
                    or any(not m["content"] for m in messages)
                    or not chosen.strip() or not rejected.strip()):
                continue
            rows.append({"prompt": messages,
                         "chosen": [{"role": "assistant", "content": chosen.strip()}],
                         "rejected": [{"role": "assistant", "content": rejected.strip()}]})
    return rows


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def select(rows: list[dict], tokenizer, n_train: int, n_prompts: int, n_sft: int,
           max_prompt: int, seed: int):
    """Held-out prompts first (so they do not depend on the training settings), then train
    pairs whose chosen answer is longer than the rejected one, then the SFT rows: the rows
    after those, whatever their lengths, so the SFT answers keep the data's length mix."""
    rng = random.Random(seed)
    rows = [r for r in rows
            if count(tokenizer, "\n".join(m["content"] for m in r["prompt"])) <= max_prompt]
    rng.shuffle(rows)
    held_out = [row["prompt"] for row in rows[:n_prompts]]
    train, used = [], n_prompts
    for row in rows[n_prompts:]:
        used += 1
        c, r = (count(tokenizer, row[k][0]["content"]) for k in ("chosen", "rejected"))
        if c > r:
            train.append({**row, "_lengths": (c, r)})
        if len(train) == n_train:
            break
    sft = rows[used:used + n_sft]
    return train, held_out, sft


def describe(values: list[int], cap: int | None = None) -> dict:
    out = {"mean": statistics.fmean(values), "median": statistics.median(values),
           "n": len(values)}
    if cap is not None:
        # Lengths are counted on the decoded reply (EOS dropped), so a reply cut off by the
        # cap counts about ``cap`` tokens and one that ended on its own at most cap - 1.
        out["at_cap"] = sum(v >= cap - 1 for v in values) / len(values)
    return out


def repetitive(reply: str, n: int = 3) -> bool:
    """A reply that loops: fewer than half of its word n-grams are distinct (needs 12+ words)."""
    words = reply.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(words) >= 12 and len(set(grams)) < 0.5 * len(grams)


def paired_difference(a: list[int], b: list[int], seed: int = 0, draws: int = 4000) -> dict:
    """Mean of a - b over the same prompts, with a 95% bootstrap interval (prompts resampled)."""
    diffs = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(draws))
    return {"mean": statistics.fmean(diffs), "low": means[int(0.025 * draws)],
            "high": means[int(0.975 * draws) - 1]}


def generated_lengths(model, tokenizer, prompts, args) -> tuple[list[int], list[str]]:
    from preftune.demo.accuracy import generate_answers

    replies = generate_answers(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                               batch_size=args.gen_batch, progress=True)
    return [count(tokenizer, r) for r in replies], replies


def onpolicy_pairs(model, tokenizer, rows: list[dict], args) -> tuple[list[dict], dict]:
    """On-policy pairs from the starting model: ``--onpolicy`` samples per prompt at the SimPO
    repository's settings (temperature 0.8, top-p 0.95), scored by their length in tokens, the
    longest as chosen and the shortest as rejected, like a judge with a length bias. Only
    samples that ended on their own are candidates: a reply cut at the cap is not an answer
    of known length. Prompts with fewer than two distinct candidate lengths are dropped, and
    so are prompts with an empty sample (the data loader rightly refuses empty completions)."""
    from preftune.evaluation.generate import generate
    from preftune.evaluation.pairs import SIMPO_TEMPERATURE, SIMPO_TOP_P, build_pairs

    prompts = [r["prompt"] for r in rows]
    samples = generate(model, tokenizer, prompts, max_new_tokens=args.onpolicy_max_new_tokens,
                       do_sample=True, temperature=SIMPO_TEMPERATURE, top_p=SIMPO_TOP_P,
                       num_samples=args.onpolicy, batch_size=args.gen_batch, seed=args.seed,
                       progress=True)
    finished = [[g for g in per_prompt if g.finished] for per_prompt in samples]
    empty = [any(not g.text.strip() for g in f) for f in finished]
    kept = [(p, f) for p, f, e in zip(prompts, finished, empty)
            if not e and len({g.num_tokens for g in f}) > 1]
    pairs, _ = build_pairs([p for p, _ in kept], [[g.text for g in f] for _, f in kept],
                           [[float(g.num_tokens) for g in f] for _, f in kept])
    for pair in pairs:
        pair["_lengths"] = (int(pair.pop("chosen_score")), int(pair.pop("rejected_score")))
    cut = sum(not g.finished for per_prompt in samples for g in per_prompt)
    return pairs, {"prompts": len(prompts), "pairs": len(pairs),
                   "dropped_no_preference": len(prompts) - sum(empty) - len(kept),
                   "dropped_empty_sample": sum(empty),
                   "samples_cut_at_cap": cut, "samples": len(prompts) * args.onpolicy}


def train_one(name: str, data_file: Path, out: Path, args, start: str = "smollm2",
              steps: int | None = None, learning_rate: float | None = None
              ) -> tuple[object, dict]:
    from preftune.config import load_config
    from preftune.train.metrics import read_jsonl
    from preftune.train.trainer import Trainer

    steps = steps or args.steps
    learning_rate = learning_rate or args.learning_rate
    config = load_config(None, [
        "--model_name_or_path", start, "--dataset_name", str(data_file), *METHODS[name],
        "--learning_rate", str(learning_rate), "--max_steps", str(steps),
        "--per_device_train_batch_size", str(args.batch_size), "--warmup_ratio", "0.1",
        "--lr_scheduler_type", "cosine", "--logging_steps", "5", "--eval_strategy", "no",
        "--max_length", str(args.max_length), "--max_prompt_length", str(args.max_prompt),
        "--seed", str(args.seed), "--save_strategy", "no", "--progress_bar", "false",
        "--output_dir", str(out / name)])
    began = time.perf_counter()
    trainer = Trainer(config)
    trainer.train()
    log = [r for r in read_jsonl(out / name / "metrics.jsonl") if "loss" in r]
    summary = {"train_seconds": time.perf_counter() - began,
               "first": {k: log[0].get(k) for k in ("loss", "rewards/margins")},
               "last": {k: log[-1].get(k) for k in ("loss", "rewards/margins",
                                                     "rewards/accuracies", "logps/chosen",
                                                     "logps/rejected")}}
    # The trainer, and with it the frozen reference copy, goes with this frame: only the
    # policy is kept for generating.
    return trainer.accelerator.unwrap_model(trainer.model), summary


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(results: dict, path: Path, max_new_tokens: int) -> None:
    plt = pyplot()
    names = list(results["generated"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    data = [results["generated"][n]["lengths"] for n in names]
    left.boxplot(data, showmeans=True)
    left.set_xticks(range(1, len(names) + 1), names)
    left.set_ylabel("generated tokens")
    left.axhline(max_new_tokens, color="grey", lw=0.8, ls="--")
    left.set_title("reply length on held-out prompts")
    bins = range(0, max_new_tokens + 9, 8)
    for n, values in zip(names, data):
        right.hist(values, bins=bins, histtype="step", lw=1.5, label=n)
    right.set_xlabel("generated tokens")
    right.set_ylabel("prompts")
    right.legend()
    right.set_title(f"distribution (cap {max_new_tokens})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(folders: list[Path], cap: int, path: Path) -> None:
    """One bar per method and run: the paired change of mean reply length against each run's
    starting model, with its 95% bootstrap interval, so several runs read side by side."""
    plt = pyplot()

    def label(settings: dict) -> str:
        data = (f"on-policy pairs ({settings['onpolicy']} samples)" if settings.get("onpolicy")
                else "HH-RLHF pairs")
        start = "SFT start" if settings.get("sft_steps") else "Instruct start"
        return f"{data}, {start}, lr {settings['learning_rate']:g}, {settings['steps']} steps"

    runs = []
    for folder in folders:
        results = json.loads((folder / f"results-{cap}.json").read_text())
        runs.append((label(results["settings"]), results))
    methods = ["dpo", "simpo", "sampo"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for k, (run_label, results) in enumerate(runs):
        paired = {key.split(" - ")[0]: d for key, d in results["paired"].items()
                  if key.split(" - ")[1] in ("base", "sft")}
        means = [paired[m]["mean"] for m in methods]
        errors = [[paired[m]["mean"] - paired[m]["low"] for m in methods],
                  [paired[m]["high"] - paired[m]["mean"] for m in methods]]
        ax.bar([i + (k - (len(runs) - 1) / 2) * width for i in range(len(methods))], means,
               width, yerr=errors, capsize=3, label=run_label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("change of mean reply length (tokens)")
    ax.set_title(f"reply length vs the starting model, 95% bootstrap interval (cap {cap})")
    # Below the axes, where it cannot hide a bar.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict, start_name: str = "base") -> str:
    base = results["generated"][start_name]["mean"]
    lines = ["| model | mean tokens | median | change of mean vs start | at cap | looping "
             "| final margin | final reward acc. | train min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, g in results["generated"].items():
        t = results["training"].get(name)
        margin = f"{t['last']['rewards/margins']:.3f}" if t else "-"
        accuracy = f"{t['last']['rewards/accuracies']:.2f}" if t else "-"
        minutes = f"{t['train_seconds'] / 60:.1f}" if t else "-"
        lines.append(f"| {name} | {g['mean']:.1f} | {g['median']:.1f} | "
                     f"{(g['mean'] - base) / base:+.1%} | {g['at_cap']:.0%} | "
                     f"{g['repetitive']:.0%} | {margin} | "
                     f"{accuracy} | {minutes} |")
    lines += ["", "| paired difference (same prompts) | mean tokens | 95% bootstrap interval |",
              "|---|---|---|"]
    for name, d in results.get("paired", {}).items():
        lines.append(f"| {name} | {d['mean']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] |")
    return "\n".join(lines)


# The SFT rows follow the training pairs in the shuffled data, so they depend on --steps too.
SFT_SETTINGS = ("sft_steps", "sft_learning_rate", "batch_size", "max_length", "max_prompt",
                "seed", "steps", "prompts")
TRAIN_SETTINGS = SFT_SETTINGS + ("learning_rate", "onpolicy", "onpolicy_max_new_tokens")


def trained_before(out: Path, settings: dict, keys: tuple = TRAIN_SETTINGS) -> dict:
    """Training summaries, by method, from earlier results in ``out`` with the same ``keys``
    of the training settings (whatever their generation settings)."""
    found = {}
    for path in sorted(out.glob("results*.json")):
        earlier = json.loads(path.read_text())
        if all(earlier["settings"].get(k) == settings[k] for k in keys):
            found.update(earlier.get("training", {}))
    return found


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "_lengths"}) + "\n"
                            for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/length")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--sft_steps", type=int, default=32,
                        help="SFT steps on the chosen answers of other rows before preference "
                        "tuning, as the seeds' recipes start from an SFT model (0: start from "
                        "SmolLM2-135M-Instruct itself)")
    parser.add_argument("--sft_learning_rate", type=float, default=2e-5)
    parser.add_argument("--onpolicy", type=int, default=0, help="train on on-policy pairs: this "
                        "many samples of the starting model per training prompt, the longest "
                        "chosen and the shortest rejected (0: the data's own answers)")
    parser.add_argument("--onpolicy_max_new_tokens", type=int, default=128)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_prompt", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--gen_batch", type=int, default=48)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="dpo,simpo,sampo")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's; 1 on an oversubscribed CPU)")
    parser.add_argument("--models_from", help="folder of an earlier run whose trained models "
                        "(same training settings) are used instead of training (default --out)")
    parser.add_argument("--compare", nargs="+", metavar="OUT",
                        help="only draw the runs' paired length changes side by side into "
                        "--out (a .png path), from their results-CAP.json")
    args = parser.parse_args()
    if args.compare:
        compare([Path(f) for f in args.compare], args.max_new_tokens, Path(args.out))
        return

    import torch

    from preftune.model_io import load_model, load_tokenizer

    # On a shared, oversubscribed CPU, two threads that wait on each other at every matmul
    # ran generation 7x slower in wall time (9x the CPU time) than one thread.
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer("smollm2")
    rows = conversations(HH_RLHF)
    # The prompt limit leaves room for the chat template's system message.
    train, prompts, sft_rows = select(rows, tokenizer, args.steps * args.batch_size,
                                      args.prompts, args.sft_steps * args.batch_size,
                                      max_prompt=args.max_prompt - 48, seed=args.seed)
    data_file, sft_file = out / "train.jsonl", out / "sft.jsonl"
    write_jsonl(data_file, train)
    write_jsonl(sft_file, sft_rows)
    chosen = [r["_lengths"][0] for r in train]
    rejected = [r["_lengths"][1] for r in train]
    results = {"settings": vars(args), "data": {
        "source": str(HH_RLHF.name), "rows_usable": len(rows), "train_pairs": len(train),
        "held_out_prompts": len(prompts), "chosen_tokens": describe(chosen),
        "rejected_tokens": describe(rejected), "sft_rows": len(sft_rows),
        "sft_answer_tokens": describe([count(tokenizer, r["chosen"][0]["content"])
                                       for r in sft_rows]) if sft_rows else None},
        "training": {}, "generated": {}}
    print(json.dumps(results["data"], indent=1))

    cap = args.max_new_tokens
    done = out / f"results-{cap}.json"
    same = [k for k in results["settings"] if k not in ("methods", "threads", "models_from")]
    earlier = json.loads(done.read_text()) if done.exists() else None
    if earlier and all(earlier["settings"].get(k) == results["settings"][k] for k in same):
        results["training"], results["generated"] = earlier["training"], earlier["generated"]
        results["minutes"] = earlier.get("minutes", 0.0)
    models_from = Path(args.models_from or out)
    trained = trained_before(models_from, results["settings"])
    # The SFT model depends on the SFT settings only, so runs that differ in the preference
    # settings can share it.
    trained_sft = trained_before(models_from, results["settings"], SFT_SETTINGS)
    if "sft" in trained_sft:
        trained["sft"] = trained_sft["sft"]

    def saved(name: str) -> bool:
        return name in trained and (models_from / name / "model.safetensors").exists()

    # The starting point every method is tuned from, and the row the others are compared to.
    start_name = "sft" if args.sft_steps else "base"
    start = "smollm2"
    if args.sft_steps and saved("sft"):
        start, results["training"]["sft"] = str(models_from / "sft"), trained["sft"]
    elif args.sft_steps:
        start = str(out / "sft")
        model, results["training"]["sft"] = train_one(
            "sft", sft_file, out, args, steps=args.sft_steps,
            learning_rate=args.sft_learning_rate)
        del model
    if args.onpolicy:
        # Same prompts as the data's pairs, answers sampled from the starting model; the pairs
        # stay in OUT so that a resumed run trains on the same ones.
        data_file, info_file = out / "train-onpolicy.jsonl", out / "train-onpolicy.json"
        if not (data_file.exists() and info_file.exists()):
            model = load_model(start)
            pairs, info = onpolicy_pairs(model, tokenizer, train, args)
            del model
            info["chosen_tokens"] = describe([p["_lengths"][0] for p in pairs])
            info["rejected_tokens"] = describe([p["_lengths"][1] for p in pairs])
            write_jsonl(data_file, pairs)
            info_file.write_text(json.dumps(info, indent=1))
        results["data"]["onpolicy"] = json.loads(info_file.read_text())
        print(json.dumps(results["data"]["onpolicy"], indent=1))
    begin = time.perf_counter() - 60 * results.get("minutes", 0.0)
    for name in [start_name] + args.methods.split(","):
        if name in results["generated"]:
            continue
        if name in ("base", "sft"):
            model = load_model(start)
        elif saved(name):
            model = load_model(str(models_from / name))
            results["training"][name] = trained[name]
        else:
            model, results["training"][name] = train_one(name, data_file, out, args, start)
        lengths, replies = generated_lengths(model, tokenizer, prompts, args)
        results["generated"][name] = {"lengths": lengths, "replies": replies}
        del model
        print(name, describe(lengths, args.max_new_tokens), results["training"].get(name))
        results["minutes"] = (time.perf_counter() - begin) / 60
        done.write_text(json.dumps(results, indent=1))
    generated = results["generated"]
    for g in generated.values():
        g.update(describe(g["lengths"], args.max_new_tokens))
        if "replies" in g:
            g["repetitive"] = sum(map(repetitive, g["replies"])) / len(g["replies"])
    # Paired over the same prompts: each method against the starting model, and DPO against
    # the others (the claim under test).
    results["paired"] = {f"{n} - {start_name}": paired_difference(
        generated[n]["lengths"], generated[start_name]["lengths"])
        for n in generated if n != start_name}
    for other in ("simpo", "sampo"):
        if "dpo" in generated and other in generated:
            results["paired"][f"dpo - {other}"] = paired_difference(
                generated["dpo"]["lengths"], generated[other]["lengths"])
    done.write_text(json.dumps(results, indent=1))
    plot(results, out / f"length-{cap}.png", cap)
    (out / f"length-{cap}.md").write_text(table(results, start_name) + "\n")
    print(table(results, start_name))
    print(f"{results['minutes']:.1f} minutes; written to {out}")


if __name__ == "__main__":
    main()

"""``preftune`` command line.

    preftune train --config simpo [--key value ...]                  # a bundled recipe
    preftune train --config my.yaml [--key value ...]
    preftune train --model_name_or_path smollm2 --dataset_name data.jsonl --method simpo
    accelerate launch -m preftune.cli train --config recipe.yaml     # several devices
    preftune train --help                                            # every config key
    preftune methods                                                 # every objective
    preftune recipes                                                 # the bundled recipes
    preftune demo                                                    # the CPU demo
    preftune eval MODEL --data heldout.jsonl [--prompts q.jsonl]     # metrics, answers
    preftune judge --a gen_a.jsonl --b gen_b.jsonl --judge openai    # win rate, LC win rate
    preftune pairs MODEL --prompts q.jsonl --judge reward ...        # on-policy pairs
    preftune report RUN_DIR [RUN_DIR ...] [--out report.html]        # plots of runs, as HTML
    preftune cpo|dpo|orpo|kto [TRL flags]    # TRL's example scripts' flags and defaults
    preftune --version
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Optional


def cmd_methods(_: list[str]) -> int:
    from preftune.objectives import REGISTRY

    order = ["cpo", "simpo", "cpo-simpo", "sampo", "dpo", "ipo", "hinge", "rdpo", "kto",
             "kto-pair", "orpo", "sft"]
    names = [n for n in order if n in REGISTRY] + sorted(set(REGISTRY) - set(order))
    for obj in (REGISTRY[n] for n in names):
        print(f"{obj.name}")
        print(f"  paper:      {obj.paper}")
        print(f"  loss:       {obj.equation}")
        print(f"  reference:  {'yes' if obj.needs_reference else 'no'}   "
              f"data: {'paired' if obj.paired else 'unpaired (prompt, completion, label)'}   "
              f"reduction: {obj.reduction}")
        print(f"  nll weight: {obj.nll_weight:g} (cpo_alpha)")
        for h in obj.hyperparameters:
            spellings = [*h.aliases, *(f"{a} x {b}" for a, b in h.scaled_aliases)]
            also = f"; also {', '.join(spellings)}" if spellings else ""
            print(f"  --{h.name} {h.default:g} ({h.bounds}{also}): {h.doc}")
    return 0


def cmd_recipes(_: list[str]) -> int:
    from preftune.recipes import listing

    print(listing())
    return 0


def cmd_train(argv: list[str]) -> int:
    from preftune.config import load_config

    if "-h" in argv or "--help" in argv:
        from preftune.config_docs import train_help

        print(train_help())
        return 0
    parser = argparse.ArgumentParser(prog="preftune train", add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    known, rest = parser.parse_known_args(argv)
    config = load_config(known.config, rest)
    from preftune.validation import validate

    validate(config)  # before any tokenizer, data or model
    from preftune.preflight import offline_when_local

    offline_when_local(config)  # before transformers is imported
    from preftune.train.trainer import Trainer

    if config.training.rounds > 1:
        from preftune.train.rounds import train_rounds

        train_rounds(config)
        print(f"saved to {config.training.output_dir} (one folder per round inside)")
        return 0
    result = Trainer(config).train()
    print(f"saved to {result.output_dir}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    from preftune.demo.run import main as demo_main

    return demo_main(argv)


def cmd_eval(argv: list[str]) -> int:
    from preftune.evaluation.run import run

    return run(argv)


def cmd_judge(argv: list[str]) -> int:
    from preftune.evaluation.commands import cmd_judge as judge

    return judge(argv)


def cmd_pairs(argv: list[str]) -> int:
    from preftune.evaluation.commands import cmd_pairs as pairs

    return pairs(argv)


def cmd_report(argv: list[str]) -> int:
    from preftune.report.build import main as report_main

    return report_main(argv)


COMMANDS = {"train": cmd_train, "methods": cmd_methods, "demo": cmd_demo, "eval": cmd_eval,
            "judge": cmd_judge, "pairs": cmd_pairs, "report": cmd_report,
            "recipes": cmd_recipes,
            # cpo, dpo, orpo, kto: TRL's example scripts' flags and defaults (preftune/trl/cli.py)
            **__import__("preftune.trl.cli", fromlist=["TRL_COMMANDS"]).TRL_COMMANDS}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] in ("-V", "--version"):
        from preftune import __version__

        print(f"preftune {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"preftune: unknown command {argv[0]!r}{hint}; the commands are "
              f"{', '.join(COMMANDS)} (preftune --help shows how to use them)", file=sys.stderr)
        return 2
    from preftune.config import ConfigError
    from preftune.data import DataError
    from preftune.errors import TrainingStopped

    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as error:
        print(f"preftune: config error: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        # A whole file that cannot be read (row None) is not helped by skipping rows.
        hint = ("" if getattr(error, "row", 0) is None else "\n  (--skip_bad_rows true skips "
                "such rows and counts them in a summary)")
        print(f"preftune: data error: {error}{hint}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        # The state is saved; 128 + signal number after SIGTERM/SIGINT, 3 after
        # non-finite steps (docs/guarantees.md).
        print(f"preftune: {stopped}", file=sys.stderr)
        return stopped.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""The one place a run is assembled: config (and any parts handed in) -> a typed value of
parts that the loop, the scorer and ``preftune eval`` work with.

    parts = assemble(config)                                     # everything from the config
    parts = assemble(config, model=m, tokenizer=t, train_pairs=p)   # some parts handed in
    scoring = assemble_scoring(config, rows=held_out)            # preftune eval

:class:`preftune.train.trainer.Trainer` runs the training loop over a :class:`RunParts`; the
held-out scorer (scoring.py) takes either kind. The steps run in the order written, and
the order matters: the config is checked before anything loads, the output folder is
locked before anything loads, the seed is set before the model (LoRA adapters draw from
it), the optimizer exists before ``accelerator.prepare`` (which takes both), and under
FSDP or DeepSpeed the reference copy is taken before the policy is sharded.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from preftune import distributed, setup
from preftune.batching.plan import BatchPlan
from preftune.config import Config, TrainingConfig
from preftune.data.store import ChainedPairs, pair_lengths
from preftune.errors import ConfigError
from preftune.forward.fast import build_forward
from preftune.forward.fast.grouping import LengthGroupedPlan
from preftune.model_io import is_peft_model
from preftune.objectives.method import ResolvedMethod
from preftune.reference.build import build_reference, needs_policy_copy
from preftune.runfolder import RunLock
from preftune.train import trackers
from preftune.train.optim import build_optimizer
from preftune.train.saving import SavePolicy
from preftune.train.scoring import ScoringParts
from preftune.trl.defaults import defaults_note
from preftune.types import TokenizedPair
from preftune.validation import validate


@dataclass
class RunParts(ScoringParts):
    """A training run: the scoring parts plus the data plan, optimizer and schedule."""

    train_pairs: Sequence[TokenizedPair]
    """A list, or the memory-mapped pairs of the tokenized cache (data/store.py)."""
    output_dir: Path
    lock: Optional[RunLock]
    """The output folder's lock, on the main process (None on the others)."""
    plan: BatchPlan
    total_steps: int
    optimizer: Any
    scheduler: Any
    precision: str
    """``"precision: bf16 autocast; ..."``: how the matmuls run and the updates are kept."""
    saves: SavePolicy


def assemble(config: Config, *, model=None, tokenizer=None, ref_model=None,
             train_pairs: Optional[list[TokenizedPair]] = None,
             eval_pairs: Optional[list[TokenizedPair]] = None, accelerator=None,
             forward=None, log: Optional[Callable[[str], None]] = None,
             plan: Optional[BatchPlan] = None) -> RunParts:
    """The parts of a training run, each built from ``config`` unless handed in (``plan``:
    which pairs each step takes, e.g. an unshuffled BatchPlan for a benchmark)."""
    # Before anything loads; settings for parts handed in are not used, so not checked.
    method = validate(config, loads_data=train_pairs is None, loads_model=model is None)
    accelerator, log = start(config, accelerator, log)
    # Locked from before anything loads until training ends: a run starting on the folder
    # meanwhile is refused, and cannot delete what this one resumes from.
    lock = distributed.on_main(accelerator, lambda: claim_output_dir(config, log))
    try:
        return _build(config, method, accelerator, log, lock, model=model, tokenizer=tokenizer,
                      ref_model=ref_model, train_pairs=train_pairs, eval_pairs=eval_pairs,
                      forward=forward, plan=plan)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(config: Config, method: ResolvedMethod, accelerator, log, lock, *, model,
           tokenizer, ref_model, train_pairs, eval_pairs, forward, plan) -> RunParts:
    t = config.training
    if config.ignored:
        log(f"ignored keys (no effect in preftune): {', '.join(config.ignored)}")
    if method.note:
        log(f"method: {method.note}")
    unlike_trl = defaults_note(config)
    if unlike_trl:
        log(unlike_trl)
    tokenizer, train_pairs, eval_pairs = load_data(
        config, method, tokenizer=tokenizer, model=model, train_pairs=train_pairs,
        eval_pairs=eval_pairs, log=log)
    model = model if model is not None else setup.build_model(config, accelerator)
    if config.model.use_peft and not is_peft_model(model):
        model = setup.wrap_lora(model, config.model)
    forward = forward or build_forward(config, tokenizer, log=log)
    plan = plan if plan is not None else batch_plan(t, train_pairs, accelerator.num_processes)
    total_steps = (t.max_steps if t.max_steps > 0
                   else math.ceil(t.num_train_epochs * plan.steps_per_epoch))
    optimizer, updates = build_optimizer(model, t, distributed.engine(accelerator))
    precision = f"precision: {accelerator.mixed_precision} autocast; {updates}"
    log(precision)
    model, optimizer, policy_copy = distributed.prepare(
        accelerator, model, optimizer, needs_policy_copy(config, method, model, ref_model))
    # On the prepared optimizer: under DeepSpeed it may be another object (CPU Adam).
    # The schedule counts optimizer steps itself; accelerate's scheduler wrapper would
    # step once per process. Checkpoints hold its state (checkpoint.py).
    scheduler = setup.build_scheduler(t, optimizer, total_steps)
    reference = None
    if method.needs_reference:
        reference = build_reference(
            config, accelerator, model, forward, tokenizer=tokenizer,
            pairs=ChainedPairs(train_pairs, eval_pairs), log=log,
            ref_model=ref_model if ref_model is not None else policy_copy)
    return RunParts(
        config=config, method=method, accelerator=accelerator, log=log, tokenizer=tokenizer,
        model=model, forward=forward, reference=reference, eval_pairs=eval_pairs,
        train_pairs=train_pairs, output_dir=Path(t.output_dir), lock=lock, plan=plan,
        total_steps=total_steps, optimizer=optimizer, scheduler=scheduler,
        precision=precision, saves=SavePolicy.from_config(t, plan.steps_per_epoch))


def start(config: Config, accelerator=None, log: Optional[Callable[[str], None]] = None):
    """``(accelerator, log)``: the accelerator (precision and trackers from the config)
    unless handed in, the seed set, and what the backend needs from the config."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = config.training
    accelerator = accelerator or Accelerator(mixed_precision=mixed_precision(t),
                                             **trackers.accelerator_options(t))
    log = log or accelerator.print
    set_seed(t.seed)
    distributed.configure(config, accelerator, log)
    return accelerator, log


def load_data(config: Config, method: ResolvedMethod, *, tokenizer=None, model=None,
              train_pairs=None, eval_pairs=None, log: Callable[[str], None] = print):
    """``(tokenizer, train_pairs, eval_pairs)``, each from the config unless handed in,
    after the pre-flight checks (which run before the rows are read or tokenized and
    before the model loads)."""
    from preftune.preflight import check_run

    tokenizer = tokenizer or setup.build_tokenizer(config)
    check_run(config, tokenizer, model=model, pairs=train_pairs, log=log)
    if train_pairs is None:
        train_pairs, held_out = setup.build_pairs(config, tokenizer, method, log=log)
        eval_pairs = held_out if eval_pairs is None else eval_pairs
    return tokenizer, train_pairs, eval_pairs or []


def batch_plan(t: TrainingConfig, pairs: Sequence[TokenizedPair], processes: int):
    """Which pairs each micro-batch of each step holds, on each process."""
    plan_args = (len(pairs), t.per_device_train_batch_size, t.gradient_accumulation_steps,
                 processes, t.seed)
    plan = (LengthGroupedPlan(*plan_args, lengths=tuple(pair_lengths(pairs)))
            if t.group_by_length else BatchPlan(*plan_args))
    if plan.steps_per_epoch == 0:
        raise ValueError(f"{len(pairs)} training pairs cannot fill one step of "
                         f"{plan.global_batch} pairs")
    return plan


def mixed_precision(t: TrainingConfig) -> str:
    if t.fp16:
        if t.bf16:
            raise ConfigError("bf16 and fp16 are both true: choose one")
        if not torch.cuda.is_available():
            # accelerate runs no fp16 autocast and no loss scaling on a CPU: the setting
            # would do nothing.
            raise ConfigError("fp16 needs a GPU (fp16 autocast with loss scaling); on "
                              "a CPU use bf16: true or float32")
        return "fp16"
    bf16 = t.bf16
    if bf16 is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16" if bf16 else "no"


# -- the output folder ----------------------------------------------------------------

def claim_output_dir(config: Config, log: Callable[[str], None]) -> RunLock:
    """On the main process: the folder is free for this run, or holds this run to resume,
    or (with ``overwrite_output_dir``) another run's artifacts, which go (runfolder.py).
    Checked under the folder's lock, so a run training there cannot lose its files to
    this check; returns the lock, held."""
    from preftune import runfolder

    t = config.training
    out = Path(t.output_dir)
    made = [p for p in (out, *out.parents) if not p.exists()]
    lock = hold(RunLock(out), log)
    try:
        runfolder.claim_output_dir(out, resume=t.resume, overwrite=t.overwrite_output_dir,
                                   inputs=run_inputs(config), log=log)
    except ConfigError:
        lock.release()
        for folder in made:  # the lock made them: a refused path is left as it was
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return lock


def hold(lock: RunLock, log: Callable[[str], None]) -> RunLock:
    """``lock``, taken unless it is held (a stale holder's file taken over is logged)."""
    if not lock.held and lock.acquire():
        log(lock.stale)
    return lock


def run_inputs(config: Config) -> dict:
    """Setting -> what the run reads: an output folder must be none of them."""
    m, d = config.model, config.data
    return {"model_name_or_path": m.model_name_or_path, "ref_model": m.ref_model,
            "tokenizer_name_or_path": m.tokenizer_name_or_path,
            "chat_template": m.chat_template, "dataset_name": d.dataset_name,
            "eval_dataset": d.eval_dataset, "ref_cache_dir": m.ref_cache_dir,
            **{f"dataset_mixer {name}": name for name in (d.dataset_mixer or {})}}


# -- scoring a saved model --------------------------------------------------------------

def assemble_scoring(config: Config, *, rows: Sequence[dict], model=None, tokenizer=None,
                     accelerator=None, log: Optional[Callable[[str], None]] = None
                     ) -> ScoringParts:
    """The parts that score held-out preference ``rows`` (tokenized as training tokenizes
    them) under the config's method: ``preftune eval``. The model is frozen and placed as
    a reference is (sharded under FSDP2 / ZeRO-3, a whole copy per device otherwise); the
    reference comes from the sources training uses (reference.build_reference)."""
    method = validate(config, loads_data=False, loads_model=model is None)
    if not method.objective.paired:
        raise ConfigError(f"{method.objective.name} is unpaired; held-out metrics score "
                          "pairs (use its paired form, e.g. kto-pair)")
    accelerator, log = start(config, accelerator, log)
    tokenizer = tokenizer or setup.build_tokenizer(config)
    pairs = setup.tokenize_held_out(config, tokenizer, method, rows, log=log)
    model = model if model is not None else setup.build_scored_model(config, accelerator.device)
    if method.needs_reference and not config.model.ref_model and not is_peft_model(model):
        raise ConfigError(
            f"{method.objective.name}'s implicit reward is measured against a reference "
            "model: pass --ref_model (the model this one was trained from, e.g. smollm2), "
            "or --reference_free true to score against a uniform reference")
    model = distributed.prepare_reference(accelerator, model)
    forward = build_forward(config, tokenizer, log=log)
    reference = (build_reference(config, accelerator, model, forward, tokenizer=tokenizer,
                                 pairs=pairs, log=log) if method.needs_reference else None)
    return ScoringParts(config=config, method=method, accelerator=accelerator, log=log,
                        tokenizer=tokenizer, model=model, forward=forward,
                        reference=reference, eval_pairs=pairs)

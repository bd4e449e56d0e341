"""The training loop, on accelerate: ``accelerate launch -m preftune.cli train ...`` or
``preftune train ...`` on one device.

One optimizer step is ``per_device_train_batch_size x gradient_accumulation_steps x
processes`` pairs. Before the step's first forward pass the trainer counts, from the token
ids alone, how many examples and chosen tokens the *whole* step holds (all micro-batches,
all ranks); each micro-batch's loss is its share of the step's loss under those counts
(objectives/compute.py). Gradients then add up to exactly the gradient of one large batch,
whatever the split.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from preftune import distributed, guard, trackers
from preftune.batching import BatchPlan, eval_batches
from preftune.checkpoint import (latest_checkpoint, load_checkpoint, remove_partial,
                                 resume_mismatches, save_checkpoint)
from preftune.config import Config
from preftune.errors import ConfigError, TrainingStopped
from preftune.fast import build_forward
from preftune.fast.grouping import LengthGroupedPlan
from preftune.method import ResolvedMethod, resolve_method
from preftune.metrics import JsonlLog, MetricWindow, total_loss
from preftune.objectives import compute_objective, example_metrics, step_loss
from preftune.optim import build_optimizer
from preftune.signals import StopRequest
from preftune.types import TokenizedPair


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    train_metrics: dict = field(default_factory=dict)
    eval_metrics: dict = field(default_factory=dict)


def count_tokens(pairs: Sequence[TokenizedPair]) -> int:
    """Tokens of the training sequences, prompt counted once per completion, no padding:
    the same count for every implementation, so tokens/s compares across trainers."""
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def nll_token_count(pairs: Sequence[TokenizedPair]) -> int:
    return sum(len(p.chosen_ids) for p in pairs if p.label is not False)


class Trainer:
    """Holds the run's parts; :meth:`train` runs it. Parts may be passed in (tests,
    notebooks) or are built from the config."""

    def __init__(self, config: Config, *, model=None, tokenizer=None, ref_model=None,
                 train_pairs: Optional[list[TokenizedPair]] = None,
                 eval_pairs: Optional[list[TokenizedPair]] = None,
                 accelerator=None, forward=None, log: Optional[Callable[[str], None]] = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        t = config.training
        self.method: ResolvedMethod = resolve_method(config.method)
        self.accelerator = accelerator or Accelerator(mixed_precision=self._mixed_precision(),
                                                      **trackers.accelerator_options(t))
        self.log = log or self.accelerator.print
        set_seed(t.seed)
        distributed.configure(config, self.accelerator, self.log)
        self.output_dir = Path(t.output_dir)
        if config.ignored:
            self.log(f"ignored keys (no effect in preftune): {', '.join(config.ignored)}")

        from preftune import setup

        self.tokenizer = tokenizer or setup.build_tokenizer(config)
        from preftune.preflight import check_run

        # Before reading or tokenizing the rows and before loading the model.
        check_run(config, self.tokenizer, model=model, pairs=train_pairs, log=self.log)
        if train_pairs is None:
            train_pairs, eval_pairs = setup.build_pairs(config, self.tokenizer, self.method,
                                                        log=self.log)
        self.train_pairs, self.eval_pairs = train_pairs, eval_pairs or []
        self.model = model if model is not None else setup.build_model(config, self.accelerator)
        if config.model.use_peft and not setup.is_peft_model(self.model):
            self.model = setup.wrap_lora(self.model, config.model)
        self.forward = forward or build_forward(config, self.tokenizer, log=self.log)

        world = self.accelerator.num_processes
        plan_args = (len(self.train_pairs), t.per_device_train_batch_size,
                     t.gradient_accumulation_steps, world, t.seed)
        self.plan = (LengthGroupedPlan(*plan_args, lengths=tuple(
            p.num_tokens for p in self.train_pairs)) if t.group_by_length else BatchPlan(*plan_args))
        if self.plan.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_pairs)} training pairs cannot fill one step of "
                             f"{self.plan.global_batch} pairs")
        self.total_steps = (t.max_steps if t.max_steps > 0
                            else math.ceil(t.num_train_epochs * self.plan.steps_per_epoch))
        self.optimizer, updates = build_optimizer(self.model, t, distributed.engine(self.accelerator))
        # "precision: no autocast; ..." or "precision: bf16 autocast; ...".
        self.precision = f"precision: {self.accelerator.mixed_precision} autocast; {updates}"
        self.log(self.precision)
        self.model, self.optimizer, ref_model = distributed.prepare(self, ref_model)
        # On the prepared optimizer: under DeepSpeed it may be another object (CPU Adam).
        # The schedule counts optimizer steps itself; accelerate's scheduler wrapper would
        # step once per process. Checkpoints hold its state (checkpoint.py).
        self.scheduler = setup.build_scheduler(t, self.optimizer, self.total_steps)
        # A callable (pairs, device) -> reference log-probs, or None (preftune.reference).
        self.reference = (setup.build_reference_source(self, ref_model)
                          if self.method.needs_reference else None)
        self.step = 0
        if t.max_consecutive_nonfinite < 1:
            raise ConfigError("max_consecutive_nonfinite must be >= 1, got "
                              f"{t.max_consecutive_nonfinite}")
        self.skips = guard.SkipLog(t.max_consecutive_nonfinite)
        self.metrics_log = None  # the JSONL log (and trackers) on the main process

    def _mixed_precision(self) -> str:
        bf16 = self.config.training.bf16
        if bf16 is None:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if bf16 else "no"

    # -- one micro-batch -------------------------------------------------------------
    def batch_output(self, pairs: Sequence[TokenizedPair], step: int):
        device = self.accelerator.device
        # Under autocast as the reference is (reference.py), so that the chunked head, which
        # runs outside the model's own (autocast-wrapped) forward, computes in bf16 too.
        with self.accelerator.autocast():
            policy = self.forward(self.model, pairs, device)
        reference = self.reference(pairs, device) if self.reference is not None else None
        labels = None
        if not self.method.objective.paired:
            labels = torch.tensor([bool(p.label) for p in pairs], device=device)
        output = compute_objective(
            self.method.objective, self.method.hparams, policy, reference,
            example_ids=[p.example_id for p in pairs], seed=self.config.training.seed,
            step=step, labels=labels, nll_weight=self.method.nll_weight,
            reference_free=self.method.reference_free)
        return output, policy.aux_loss

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.accelerator.device), "sum").cpu()

    # -- one optimizer step ----------------------------------------------------------
    def train_step(self, window: MetricWindow) -> bool:
        """One optimizer step; False when it was skipped as non-finite (guard.py)."""
        acc, t = self.accelerator, self.config.training
        micro = [[self.train_pairs[i] for i in batch]
                 for batch in self.plan.micro_batches(self.step, acc.process_index)]
        counts = torch.tensor([sum(len(b) for b in micro),
                               sum(nll_token_count(b) for b in micro),
                               sum(count_tokens(b) for b in micro)], dtype=torch.float64)
        examples, nll_tokens, tokens = self._all_reduce(counts).tolist()
        aux_coef = self._aux_coef()
        self.model.train()
        # The step's metrics join the window only if the step is kept.
        step_metrics = MetricWindow()
        loss_flags = torch.zeros((), dtype=torch.bool, device=acc.device)
        for k, pairs in enumerate(micro):
            last = k == len(micro) - 1
            with contextlib.nullcontext() if last else distributed.accumulating(acc, self.model):
                output, aux = self.batch_output(pairs, self.step)
                loss = step_loss(output, examples_in_step=examples,
                                 nll_tokens_in_step=nll_tokens, aux_loss=aux,
                                 aux_loss_coef=aux_coef)
                # DDP and FSDP average gradients over ranks; the loss is already
                # normalised over the global step, so undo that average.
                acc.backward(loss * acc.num_processes)
            loss_flags |= guard.nonfinite(loss)
            step_metrics.add(example_metrics(output))
        max_norm = t.max_grad_norm if t.max_grad_norm and t.max_grad_norm > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        if not guard.step_is_finite(loss_flags, grad_norm, self._all_reduce):
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self._report_skip([p.example_id for pairs in micro for p in pairs], grad_norm)
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.skips.good(self.step)
        window.merge(step_metrics)
        # Same value on every rank: weight each by 1/world so the all-reduced mean is it.
        share = 1.0 / acc.num_processes
        window.add_scalar("grad_norm", float(grad_norm), share)
        window.add_scalar("learning_rate", self.scheduler.get_last_lr()[0], share)
        window.add_scalar("tokens_per_step", tokens, share)
        return True

    def _report_skip(self, row_ids: list[int], grad_norm) -> None:
        """metrics.jsonl and stderr name the step and the rows of its batch (all ranks)."""
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            row_ids = gather_object(row_ids)
        self.skips.skipped(row_ids)
        if self.accelerator.is_main_process:
            record = self.skips.record(self.step, row_ids, grad_norm)
            if self.metrics_log is not None:
                self.metrics_log.write(record)
            print(f"preftune: step {self.step} skipped: non-finite loss or gradient (rows "
                  f"{record['rows']}); {self.skips.consecutive} in a row, the run stops at "
                  f"{self.skips.max_consecutive}", file=sys.stderr, flush=True)

    def _aux_coef(self) -> float:
        coef = self.config.training.router_aux_loss_coef
        if coef is None:
            coef = getattr(getattr(self.model, "config", None), "router_aux_loss_coef", 0.0)
        return float(coef or 0.0)

    # -- evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.eval_pairs:
            return {}
        acc = self.accelerator
        self.model.eval()
        window = MetricWindow()
        for batch in eval_batches(len(self.eval_pairs), self.config.training.per_device_eval_batch_size,
                                  acc.process_index, acc.num_processes):
            # Step 0 for every evaluation: SamPO draws the same positions each time, so
            # evaluations at different steps compare like with like.
            output, _ = self.batch_output([self.eval_pairs[i] for i in batch], step=0)
            window.add(example_metrics(output))
        means = window.means(self._all_reduce)
        means["loss"] = total_loss(means, self.method.nll_weight)
        return {f"eval_{k}": v for k, v in means.items()}

    def run_info(self) -> dict:
        """What ran: precision, how updates are kept, and the fast path for each model."""
        support = getattr(self.forward, "support", None)
        models = {"policy": self.model}
        reference_model = getattr(self.reference, "model", None)
        if reference_model is not None:
            models["reference"] = reference_model
        fast = {}
        for role, model in models.items():
            found = support.get(model) if support is not None else None
            fast[role] = (found.summary if found is not None
                          else "fast forward off (chunked_logps, prefix_sharing and packing "
                               "all false)" if support is None else "not run yet")
        return {"precision": self.precision, "fast_forward": fast}

    def _write_run_info(self) -> None:
        """``run_info.json`` in the output folder: a GPU run can be checked afterwards."""
        if self.accelerator.is_main_process:
            import json

            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "run_info.json").write_text(
                json.dumps(self.run_info(), indent=2) + "\n")

    # -- the run ---------------------------------------------------------------------
    def train(self) -> TrainResult:
        from preftune import setup

        acc, t = self.accelerator, self.config.training
        self._maybe_resume()
        log = JsonlLog(self.output_dir / "metrics.jsonl", truncate_after_step=self.step) \
            if acc.is_main_process else None
        log = trackers.start(acc, self.config, log)  # report_to: the same rows, to trackers
        self.metrics_log = log
        self.skips.good(self.step)
        self.log(f"method: {self.method.describe()}; {len(self.train_pairs)} train pairs, "
                 f"{len(self.eval_pairs)} eval pairs; {self.total_steps} steps of "
                 f"{self.plan.global_batch} pairs on {acc.num_processes} process(es), {acc.device}")
        bar = setup.progress_bar(self.total_steps, self.step,
                                 enabled=t.progress_bar and acc.is_local_main_process)
        window, last_train, last_eval = MetricWindow(), {}, {}
        window_start, window_first_step = time.perf_counter(), self.step
        eval_every = t.eval_steps if t.do_eval and t.eval_strategy != "no" else None
        save_every = t.save_steps if t.save_strategy != "no" else None
        with StopRequest() as stop:
            run_info_written = False
            while self.step < self.total_steps:
                kept = self.train_step(window)
                if not run_info_written:  # the fast path decides on its first call
                    self._write_run_info()
                    run_info_written = True
                if not kept and self.skips.consecutive >= self.skips.max_consecutive:
                    bar.close()
                    self._stop_nonfinite()
                if kept and (self.step % t.logging_steps == 0 or self.step == self.total_steps):
                    last_train = self._log_window(window, self.step - window_first_step,
                                                  time.perf_counter() - window_start, log, bar)
                    window.reset()
                    window_start, window_first_step = time.perf_counter(), self.step
                more = self.step < self.total_steps
                if kept and eval_every and self.step % eval_every == 0 and more:
                    last_eval = self._log_eval(log)
                # No periodic checkpoint inside a run of skipped steps: the newest
                # checkpoint stays a state reached by a finite step.
                saved = bool(kept and save_every and self.step % save_every == 0 and more)
                if saved:
                    self.save_checkpoint()
                bar.update(1)
                signum = stop.requested(self._all_reduce) if more else None
                if signum:
                    bar.close()
                    self._stop_on_signal(signum, saved)
        bar.close()
        if self.skips.total:
            self.log(f"skipped {self.skips.total} non-finite steps (see metrics.jsonl)")
        if t.do_eval and t.eval_strategy != "no":
            last_eval = self._log_eval(log) or last_eval
        setup.save_final(self, {**last_train, **last_eval})
        trackers.finish(acc)
        return TrainResult(self.output_dir, self.step, last_train, last_eval)

    def _log_window(self, window: MetricWindow, steps: int, seconds: float, log, bar) -> dict:
        means = window.means(self._all_reduce)
        means["loss"] = total_loss(means, self.method.nll_weight)
        means["tokens_per_second"] = means.pop("tokens_per_step") * steps / max(seconds, 1e-9)
        record = {"step": self.step, "epoch": round(self.step / self.plan.steps_per_epoch, 4),
                  **means}
        if log is not None:
            log.write(record)
        bar.set_postfix(loss=f"{means['loss']:.4f}",
                        margin=f"{means.get('rewards/margins', float('nan')):.3f}",
                        acc=f"{means.get('rewards/accuracies', float('nan')):.2f}",
                        tok_s=f"{means['tokens_per_second']:.0f}")
        return record

    def _log_eval(self, log) -> dict:
        metrics = self.evaluate()
        if metrics and log is not None:
            log.write({"step": self.step,
                       "epoch": round(self.step / self.plan.steps_per_epoch, 4), **metrics})
        if metrics:
            self.log(f"step {self.step}: " + ", ".join(
                f"{k}={metrics[k]:.4f}" for k in ("eval_loss", "eval_rewards/accuracies",
                                                 "eval_rewards/margins") if k in metrics))
        return metrics

    # -- stopping early --------------------------------------------------------------
    def _stop_on_signal(self, signum: int, saved: bool) -> None:
        checkpoint = (self.output_dir / f"checkpoint-{self.step}" if saved
                      else self.save_checkpoint())
        raise TrainingStopped(
            f"stopped by signal {signum} after step {self.step} of {self.total_steps}; "
            f"state saved in {checkpoint}; continue with --resume",
            StopRequest.exit_code(signum), checkpoint)

    def _stop_nonfinite(self) -> None:
        """Saves the last good state under its own step (skipped steps changed neither the
        weights nor the optimizer or schedule) and stops."""
        good = self.skips.last_good_step
        checkpoint = self.output_dir / f"checkpoint-{good}"
        if latest_checkpoint(self.output_dir) != checkpoint:
            checkpoint = self.save_checkpoint(step=good)
        raise TrainingStopped(self.skips.message(self.step, checkpoint), guard.EXIT_CODE,
                              checkpoint)

    # -- checkpoints -----------------------------------------------------------------
    def _run_state(self) -> dict:
        """What a checkpoint records to check a resume against (checkpoint.resume_mismatches)."""
        if getattr(self, "_pairs_fingerprint", None) is None:
            from preftune.refcache import fingerprint_pairs

            self._pairs_fingerprint = fingerprint_pairs(self.train_pairs)
        return {"total_steps": self.total_steps, "config": self.config.to_dict(),
                "processes": self.accelerator.num_processes,
                "pairs_fingerprint": self._pairs_fingerprint}

    def save_checkpoint(self, step: Optional[int] = None) -> Path:
        step = self.step if step is None else step
        state = {"step": step, **self._run_state()}
        return save_checkpoint(self.accelerator, self.output_dir, step, state,
                               scheduler=self.scheduler,
                               keep=self.config.training.save_total_limit)

    def _maybe_resume(self) -> None:
        if self.accelerator.is_main_process:
            removed = remove_partial(self.output_dir)
            if removed:
                self.log(f"removed incomplete checkpoint writes: {', '.join(removed)}")
        self.accelerator.wait_for_everyone()
        if not self.config.training.resume:
            return
        checkpoint = latest_checkpoint(self.output_dir)
        if checkpoint is None:
            self.log(f"--resume: no checkpoint in {self.output_dir}; starting from step 0")
            return
        state = load_checkpoint(self.accelerator, checkpoint, scheduler=self.scheduler)
        self.step = int(state["step"])
        self.log(f"resumed from {checkpoint} at step {self.step}")
        changed = resume_mismatches(state, self._run_state())
        if changed:
            self.log("warning: resuming with a different data order than the checkpoint's run "
                     "(" + "; ".join(changed) + "): the steps ahead will not be those it planned")

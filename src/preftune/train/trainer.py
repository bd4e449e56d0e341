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
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from preftune import distributed, setup
from preftune.assemble import RunParts, assemble, hold
from preftune.config import Config
from preftune.errors import ConfigError, TrainingStopped
from preftune.objectives import example_metrics, step_loss
from preftune.objectives.mixture import add_component_losses
from preftune.reference.sync import build_sync
from preftune.train import guard, trackers
from preftune.train import resume as run_check
from preftune.train.checkpoint import (STATE_FILE, latest_checkpoint, load_checkpoint,
                                       remove_partial, save_checkpoint)
from preftune.train.final_save import FINAL_STAGING, card_settings, save_final, write_model_files
from preftune.train.metrics import JsonlLog, MetricWindow, json_safe, total_loss
from preftune.train.saving import SaveClock
from preftune.train.scoring import batch_output, score_pairs
from preftune.train.signals import StopRequest
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
    """Runs the training loop over a run's parts (assemble.py): :meth:`train` steps to the
    end. Parts may be passed in (tests, notebooks) or are built from the config; they read
    as the trainer's own attributes (``trainer.model``, ``trainer.optimizer`` ...)."""

    def __init__(self, config: Config, *, model=None, tokenizer=None, ref_model=None,
                 train_pairs: Optional[list[TokenizedPair]] = None,
                 eval_pairs: Optional[list[TokenizedPair]] = None,
                 accelerator=None, forward=None, log: Optional[Callable[[str], None]] = None,
                 plan=None):
        self.parts: RunParts = assemble(
            config, model=model, tokenizer=tokenizer, ref_model=ref_model,
            train_pairs=train_pairs, eval_pairs=eval_pairs, accelerator=accelerator,
            forward=forward, log=log, plan=plan)
        t = config.training
        # The loop's state. total_steps starts as assembled; it is the loop's own, the one
        # part-derived value a caller may lower (a test stops a run early this way).
        self.step, self.total_steps = 0, self.parts.total_steps
        self.skips = guard.SkipLog(t.max_consecutive_nonfinite, guard.allowed_skips(
            t.max_nonfinite_fraction, self.total_steps))
        # Steps whose update broke the weights and was rolled back: skipped when reached.
        self.rolled_back: set[int] = set()
        # Forced resumes: the step each happened at and what it changed.
        self.resumes_forced: list[dict] = []
        self.metrics_log = None  # the JSONL log (and trackers) on the main process
        # The last logged training metrics (kept in checkpoints: a run resumed at its last
        # step reports the same final metrics as one never stopped).
        self.last_train: dict = {}
        self._pairs_fingerprint: Optional[str] = None
        # TR-DPO's reference updates (sync_ref_model), else None.
        self.ref_sync = build_sync(self.parts)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce(self.accelerator, tensor)

    def _agree(self, flag: bool) -> bool:
        """True on every rank when it is on any (clocks differ between processes)."""
        return distributed.agree(self.accelerator, flag)

    # -- one optimizer step ----------------------------------------------------------
    def train_step(self, window: MetricWindow) -> bool:
        """One optimizer step; False when it was skipped (guard.py): non-finite, a loss
        scale overflow, or a step rolled back earlier whose batch is consumed unused."""
        acc, t = self.accelerator, self.config.training
        if self.step + 1 in self.rolled_back:
            self.step += 1
            return False
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
                output, aux = batch_output(self.parts, pairs, self.step)
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
        rows = [p.example_id for pairs in micro for p in pairs]
        verdict = guard.classify_step(loss_flags, grad_norm, self._all_reduce)
        if verdict != "finite":
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if not (verdict == "overflow" and self._lower_loss_scale()):
                self._report_skip(rows, grad_norm)
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not guard.state_is_finite(guard.trained_tensors(self.model, self.optimizer),
                                     self._all_reduce):
            self._roll_back(self.step + 1, rows, grad_norm)
            return False
        self.step += 1
        self.skips.good(self.step)
        window.merge(step_metrics)
        # Same value on every rank: weight each by 1/world so the all-reduced mean is it.
        share = 1.0 / acc.num_processes
        window.add_scalar("grad_norm", float(grad_norm), share)
        window.add_scalar("learning_rate", self.scheduler.get_last_lr()[0], share)
        window.add_scalar("tokens_per_step", tokens, share)
        return True

    def _lower_loss_scale(self) -> bool:
        """fp16: an overflow at a loss scale of at least 1 lowers the scale (the scaler
        recorded the inf while unscaling) and is not counted as a non-finite step."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled() or scaler.get_scale() < 1.0:
            return False
        scaler.update()
        if self.metrics_log is not None:
            self.metrics_log.write({"step": self.step, "loss_scale_overflow": True,
                                    "loss_scale": scaler.get_scale()})
        return True

    def _roll_back(self, bad_step: int, row_ids: list[int], grad_norm) -> None:
        """A step left a non-finite weight or optimizer state: load the newest checkpoint
        that verifies (every checkpoint holds finite values: each step is checked before
        one is written), and skip the bad step when the replay reaches it. With no
        checkpoint yet, nothing holds a good state to go back to: stop, saving nothing."""
        self.rolled_back.add(bad_step)
        what = (f"step {bad_step} left non-finite values in the weights or the optimizer's "
                "state (finite loss and gradients: adam_epsilon of 0, or too high a "
                "learning rate)")
        checkpoint = self._resumable_checkpoint()
        if checkpoint is None:
            raise TrainingStopped(
                f"{what}; no checkpoint holds an earlier state, and this one is not saved. "
                "Lower the learning rate or raise adam_epsilon and start again",
                guard.EXIT_CODE, None)
        good = int(self._load(checkpoint)["step"])
        if self.accelerator.is_main_process:
            # The replay logs those steps again.
            JsonlLog(self.output_dir / "metrics.jsonl", truncate_after_step=good)
        self.log(f"preftune: {what}; rolled back to {checkpoint.name}: steps "
                 f"{good + 1}-{bad_step - 1} are retrained, step {bad_step} is skipped")
        self.step = bad_step
        self._report_skip(row_ids, grad_norm, f"non-finite weights after the update, rolled "
                                              f"back to {checkpoint.name}")
        self.step = self.skips.last_good_step = good

    def _report_skip(self, row_ids: list[int], grad_norm,
                     why: str = "non-finite loss or gradient") -> None:
        """metrics.jsonl and stderr name the step and the rows of its batch (all ranks)."""
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            row_ids = gather_object(row_ids)
        self.skips.skipped(row_ids)
        if self.accelerator.is_main_process:
            record = self.skips.record(self.step, row_ids, grad_norm)
            record["reason"] = why
            if self.metrics_log is not None:
                self.metrics_log.write(record)
            print(f"preftune: step {self.step} skipped: {why} (rows {record['rows']}); "
                  f"{self.skips.consecutive} in a row and {self.skips.total} in all, the run "
                  f"stops at {self.skips.max_consecutive} in a row or more than "
                  f"{self.skips.max_total} in all", file=sys.stderr, flush=True)

    def _aux_coef(self) -> float:
        coef = self.config.training.router_aux_loss_coef
        if coef is None:
            coef = getattr(getattr(self.model, "config", None), "router_aux_loss_coef", 0.0)
        return float(coef or 0.0)

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, stop: Optional[StopRequest] = None) -> dict:
        """Metrics over the eval pairs (scoring.score_pairs), named ``eval_*``. A stop
        signal abandons it between batches: the run then stops with a checkpoint of the
        step it evaluated."""
        def stop_if_asked() -> None:
            signum = stop.requested(self._all_reduce)
            if signum:
                self._stop_on_signal(signum, during="the evaluation")

        means = score_pairs(self.parts, self.eval_pairs,
                            self.config.training.per_device_eval_batch_size,
                            before_batch=stop_if_asked if stop is not None else None)
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
        info = {"precision": self.precision, "fast_forward": fast}
        if self.resumes_forced:
            info["resumes_forced"] = self.resumes_forced
        return info

    def _write_run_info(self) -> None:
        """``run_info.json`` in the output folder: a GPU run can be checked afterwards."""
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "run_info.json").write_text(
                json.dumps(self.run_info(), indent=2) + "\n")

    # -- the run ---------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Steps to the end, then a checkpoint of the last step, the final evaluation and
        the final save. SIGTERM/SIGINT at any moment end with a resumable state: after a
        step (a checkpoint is written), during an evaluation (it is abandoned) or during
        the final save (it completes first)."""
        # Held while the run writes into its folder (taken again if released since).
        distributed.on_main(self.accelerator, lambda: hold(self.lock, self.log))
        try:
            return self._train()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _train(self) -> TrainResult:
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
        self.log(self.saves.describe(self.output_dir))
        with StopRequest() as stop:
            last_train, last_eval = self._train_loop(stop, log)
            if t.do_eval and t.eval_strategy != "no":
                last_eval = self._log_eval(log, stop) or last_eval
            save_final(self.parts, {**last_train, **last_eval}, run_info=self.run_info(),
                       card_settings=card_settings(
                           self.config, self.method, step=self.step,
                           global_batch=self.plan.global_batch,
                           resumes_forced=self.resumes_forced))
            if stop.signum:
                raise TrainingStopped(
                    f"stopped by signal {stop.signum} during the final save, after it "
                    f"completed: the model in {self.output_dir} is whole",
                    StopRequest.exit_code(stop.signum), latest_checkpoint(self.output_dir))
        trackers.finish(acc)
        return TrainResult(self.output_dir, self.step, last_train, last_eval)

    def _train_loop(self, stop: StopRequest, log) -> tuple[dict, dict]:
        t = self.config.training
        bar = setup.progress_bar(self.total_steps, self.step,
                                 enabled=t.progress_bar and self.accelerator.is_local_main_process)
        window, last_train, last_eval = MetricWindow(), self.last_train, {}
        window_start, window_first_step = time.perf_counter(), self.step
        eval_every = self._eval_every()
        clock = SaveClock(self.saves)
        run_info_written = False
        while self.step < self.total_steps:
            kept = self.train_step(window)
            if self.ref_sync is not None:
                self.ref_sync.after_step(self.step)
            if not run_info_written:  # the fast path decides on its first call
                self._write_run_info()
                run_info_written = True
            if not kept and self.skips.must_stop():
                bar.close()
                self._stop_nonfinite()
            first = t.logging_first_step and self.step == 1
            every = t.logging_strategy == "steps" and self.step % t.logging_steps == 0
            if kept and (every or self.step == self.total_steps or first):
                last_train = self.last_train = self._log_window(
                    window, self.step - window_first_step, time.perf_counter() - window_start,
                    log, bar)
                window.reset()
                window_start, window_first_step = time.perf_counter(), self.step
            more = self.step < self.total_steps
            if kept and eval_every and self.step % eval_every == 0 and more:
                last_eval = self._log_eval(log, stop)
            # No checkpoint inside a run of skipped steps: the newest checkpoint stays a
            # state reached by a finite step. The last step always gets one, so a stop or
            # a crash in the final evaluation or save loses no training.
            saved = kept and (clock.due_by_steps(self.step, last=not more)
                              or self._agree(clock.due_by_time()))
            if saved:
                self.save_checkpoint()
                clock.saved()
            bar.update(1)
            signum = stop.requested(self._all_reduce) if more else None
            if signum:
                bar.close()
                self._stop_on_signal(signum, saved)
        bar.close()
        if self.skips.total:
            self.log(f"skipped {self.skips.total} non-finite steps (see metrics.jsonl)")
        return last_train, last_eval

    def _eval_every(self) -> Optional[int]:
        """Steps between evaluations during training: ``eval_steps``, an epoch's steps
        (``eval_strategy: epoch``), or None (the final evaluation only, or none)."""
        t = self.config.training
        if not t.do_eval or t.eval_strategy == "no":
            return None
        return self.plan.steps_per_epoch if t.eval_strategy == "epoch" else t.eval_steps

    def _log_window(self, window: MetricWindow, steps: int, seconds: float, log, bar) -> dict:
        means = add_component_losses(window.means(self._all_reduce), self.method.objective)
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

    def _log_eval(self, log, stop: Optional[StopRequest] = None) -> dict:
        metrics = self.evaluate(stop)
        if metrics and log is not None:
            log.write({"step": self.step,
                       "epoch": round(self.step / self.plan.steps_per_epoch, 4), **metrics})
        if metrics:
            self.log(f"step {self.step}: " + ", ".join(
                f"{k}={metrics[k]:.4f}" for k in ("eval_loss", "eval_rewards/accuracies",
                                                 "eval_rewards/margins") if k in metrics))
        return metrics

    # -- stopping early --------------------------------------------------------------
    def _stop_on_signal(self, signum: int, saved: bool = False, during: str = "") -> None:
        """Stop with the state of the last step in a checkpoint (written now unless one of
        this step exists)."""
        checkpoint = self.output_dir / f"checkpoint-{self.step}"
        if not (saved or self._agree((checkpoint / STATE_FILE).is_file())):
            checkpoint = self.save_checkpoint()
        when = f"during {during} " if during else ""
        raise TrainingStopped(
            f"stopped by signal {signum} {when}after step {self.step} of {self.total_steps}; "
            f"state saved in {checkpoint}; continue with --resume",
            StopRequest.exit_code(signum), checkpoint)

    def _stop_nonfinite(self) -> None:
        """Saves the last good state under its own step (skipped steps changed neither the
        weights nor the optimizer or schedule) and stops."""
        good = self.skips.last_good_step
        checkpoint = self.output_dir / f"checkpoint-{good}"
        if not self._agree((checkpoint / STATE_FILE).is_file()):
            checkpoint = self.save_checkpoint(step=good)
        raise TrainingStopped(self.skips.message(self.step, checkpoint), guard.EXIT_CODE,
                              checkpoint)

    # -- checkpoints -----------------------------------------------------------------
    def _run_state(self) -> dict:
        """What a checkpoint records: the run's settings, process count and pairs (to check
        a resume against, resume.py), and the guard's history."""
        if self._pairs_fingerprint is None:
            from preftune.reference.cache import fingerprint_pairs

            self._pairs_fingerprint = fingerprint_pairs(self.train_pairs)
        return {"total_steps": self.total_steps, "config": self.config.to_dict(),
                "processes": self.accelerator.num_processes,
                "pairs_fingerprint": self._pairs_fingerprint,
                "skipped_steps": self.skips.total, "rolled_back": sorted(self.rolled_back),
                "resumes_forced": self.resumes_forced, "last_train": self.last_train}

    def save_checkpoint(self, step: Optional[int] = None) -> Path:
        step = self.step if step is None else step
        state = json_safe({"step": step, **self._run_state()})
        # TR-DPO's mixed reference (resume restores it): gathered here on every process (a
        # collective under FSDP2 and ZeRO-3), written by the main one with the model files.
        reference = self.ref_sync.gather() if self.ref_sync is not None else None
        return save_checkpoint(self.accelerator, self.output_dir, step, state,
                               scheduler=self.scheduler,
                               keep=self.config.training.save_total_limit,
                               model_files=lambda folder: self._checkpoint_files(folder,
                                                                                 reference))

    def _checkpoint_files(self, folder: Path, reference: Optional[dict] = None) -> None:
        write_model_files(folder, self.parts)
        if reference is not None:
            self.ref_sync.save(folder, reference)

    def _resumable_checkpoint(self) -> Optional[Path]:
        """The newest checkpoint whose files match their manifest: verified on the main
        process (reading every file once), the choice sent to the other ranks."""
        from preftune.train.checkpoint import find_resumable

        found = [None]
        if self.accelerator.is_main_process:
            path = find_resumable(self.output_dir, self.log)
            found = [str(path) if path is not None else None]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(found)
        return Path(found[0]) if found[0] is not None else None

    def _load(self, checkpoint: Path) -> dict:
        """Weights, optimizer, schedule and RNG from ``checkpoint``, and the guard's
        history; returns the checkpoint's state."""
        state = load_checkpoint(self.accelerator, checkpoint, scheduler=self.scheduler)
        if self.ref_sync is not None:
            self.ref_sync.load(checkpoint, int(state["step"]))
        self.rolled_back |= set(state.get("rolled_back", []))
        self.skips.total = int(state.get("skipped_steps", 0))
        self.resumes_forced = list(state.get("resumes_forced", []))
        self.last_train = dict(state.get("last_train", {}))
        return state

    def _maybe_resume(self) -> None:
        t = self.config.training
        if self.accelerator.is_main_process:
            removed = remove_partial(self.output_dir)
            final_staging = self.output_dir / FINAL_STAGING
            if final_staging.is_dir():
                shutil.rmtree(final_staging)
                removed.append(final_staging.name)
            if removed:
                self.log(f"removed incomplete checkpoint writes: {', '.join(removed)}")
        self.accelerator.wait_for_everyone()
        if not t.resume:
            return
        checkpoint = self._resumable_checkpoint()
        if checkpoint is None:
            if any(self.output_dir.glob("checkpoint-*")):
                # Starting over would silently lose the run those checkpoints hold.
                raise ConfigError(f"--resume: no checkpoint in {self.output_dir} verifies (see "
                                  "above); restore one, or start over with "
                                  "--overwrite_output_dir true instead of --resume")
            self.log(f"--resume: no checkpoint in {self.output_dir}; starting from step 0")
            return
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        changed = run_check.run_differences(saved, self._run_state())
        if changed and not t.resume_force:
            raise ConfigError(run_check.refusal(checkpoint, changed))
        self.step = int(self._load(checkpoint)["step"])
        self.log(f"resumed from {checkpoint} at step {self.step}")
        if self.step > self.total_steps:
            # Only a forced resume gets here (max_steps or the epochs were lowered).
            self.log(f"{checkpoint.name} is past this run's {self.total_steps} steps: no "
                     "step is trained; the final evaluation and save follow")
        if changed:
            run_check.apply_changes(self.optimizer, self.scheduler, t)
            self.resumes_forced.append({"step": self.step, "changes": changed})
            self.log("--resume_force: from this step on the run takes the new values: "
                     + "; ".join(changed))


# The run's parts read as the trainer's own attributes, read-only: assembled once.
for _part in (f.name for f in fields(RunParts) if f.name != "total_steps"):
    setattr(Trainer, _part, property(attrgetter(f"parts.{_part}")))
del _part

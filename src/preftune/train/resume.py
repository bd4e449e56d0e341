"""Whether a checkpoint belongs to the run that resumes it.

``--resume`` continues the run a checkpoint was written by. A checkpoint records its run's
whole config, the process count and a fingerprint of the tokenized training pairs
(checkpoint's ``trainer_state.json``); a resume compares them with its own and refuses on
any difference in what decides the run's numbers: the objective and its hyperparameters,
the model, reference and precision, the data, the batch layout, the optimizer, the
learning rate and its schedule. Settings that do not change the numbers (logging,
evaluation, checkpointing, the fast path's switches, output plumbing) may change freely.

``resume_force`` resumes anyway; the new values then take effect (:func:`apply_changes`:
a new learning rate, schedule or AdamW setting replaces the checkpoint's) and the run
records what changed, at which step.
"""

from __future__ import annotations

from typing import Optional

# Settings that leave every number of the run as it was.
FREE_KEYS = frozenset({
    # model: how it is computed, not what
    "attn_implementation", "use_flash_attention_2", "trust_remote_code",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "precompute_ref_log_probs",
    "ref_cache_dir", "merge_lora",
    # data: the training pairs are compared by their fingerprint instead (a moved file
    # with the same rows is the same data); evaluation data are free
    "dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split",
    "eval_dataset", "eval_fraction", "dataset_mixer", "dataset_splits", "column_mapping",
    "data_format", "max_length", "max_prompt_length", "skip_bad_rows", "max_train_samples",
    "max_eval_samples", "tokenizer_name_or_path", "chat_template",
    # training: where and how often things are written, and the fast path's switches
    "output_dir", "overwrite_output_dir", "run_name", "per_device_eval_batch_size",
    "logging_steps", "eval_strategy", "eval_steps", "do_eval", "save_strategy", "save_steps",
    "save_minutes", "save_total_limit", "resume", "resume_force",
    "max_consecutive_nonfinite", "max_nonfinite_fraction", "report_to", "push_to_hub",
    "hub_model_id", "progress_bar", "chunked_logps", "logps_chunk_size", "prefix_sharing",
    "packing", "max_tokens_per_row", "fast_attention", "logging_first_step",
})


def _flat(state: dict) -> dict:
    return {k: v for section in (state.get("config") or {}).values() for k, v in
            section.items() if k != "hyperparameters"}


def _hyperparameters(state: dict) -> Optional[dict]:
    """The objective's hyperparameters as given (``method.hyperparameters``), by spelling;
    None in a checkpoint that predates them."""
    return ((state.get("config") or {}).get("method") or {}).get("hyperparameters")


def run_differences(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for each setting, the process count and the training pairs
    that differ between a checkpoint's state and the resuming run's. Keys a checkpoint
    predates are not compared; a hyperparameter given in one run only compares with None."""
    before, now = _flat(saved), _flat(current)
    found = [f"{key}: {before[key]!r} -> {now.get(key)!r}" for key in before
             if key not in FREE_KEYS and key in now and before[key] != now[key]]
    given_before, given_now = _hyperparameters(saved), _hyperparameters(current)
    if given_before is not None and given_now is not None:
        found += [f"{key}: {given_before.get(key)!r} -> {given_now.get(key)!r}"
                  for key in sorted({*given_before, *given_now})
                  if given_before.get(key) != given_now.get(key)]
    if "processes" in saved and saved["processes"] != current.get("processes"):
        found.append(f"processes: {saved['processes']} -> {current.get('processes')}")
    if "pairs_fingerprint" in saved and saved["pairs_fingerprint"] != current.get(
            "pairs_fingerprint"):
        found.append("training pairs: other rows, order or tokenization (fingerprint "
                     f"{str(saved['pairs_fingerprint'])[:12]} -> "
                     f"{str(current.get('pairs_fingerprint'))[:12]})")
    return found


def refusal(checkpoint, differences: list[str]) -> str:
    listed = "\n  ".join(differences)
    return (f"--resume: {checkpoint} was written by a run with other settings:\n  {listed}\n"
            "Resume with the checkpoint's settings, start a new run in another output_dir "
            "(or with --overwrite_output_dir true), or pass --resume_force true to continue "
            "with the new values from this step on")


def apply_changes(optimizer, scheduler, t) -> None:
    """After loading a checkpoint on a forced resume: the config's learning rate and AdamW
    settings replace the ones the optimizer and schedule state carried. The schedule's
    shape (warmup, decay, total steps) is already the new config's: a loaded schedule keeps
    its step count and base rates, and its rate functions are the new scheduler's own."""
    adamw = {"betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    for group in optimizer.param_groups:
        group["initial_lr"] = t.learning_rate
        # Adafactor's "eps" is a pair of its own; only AdamW's groups (with betas) take these.
        new = {"weight_decay": t.weight_decay, **(adamw if "betas" in group else {})}
        for key, value in new.items():
            if key in group:
                group[key] = value
    scheduler.base_lrs = [t.learning_rate] * len(scheduler.base_lrs)
    rules = getattr(scheduler, "lr_lambdas", None) or [lambda step: 1.0] * len(
        scheduler.base_lrs)
    rates = [base * rule(scheduler.last_epoch) for base, rule in zip(scheduler.base_lrs, rules)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates

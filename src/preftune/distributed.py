"""What DDP, FSDP2 and DeepSpeed each need from the loop, kept out of the loop.

    accelerate launch --config_file configs/accelerate/ddp.yaml -m preftune.cli train --config recipes/simpo.yaml
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m preftune.cli train --config recipes/simpo.yaml
    accelerate launch --config_file configs/accelerate/zero3.yaml -m preftune.cli train --config recipes/dpo.yaml

(docs/distributed.md lists every config and the multi-node command.)

The loop (trainer.py) is one loop for every backend: each micro-batch's loss is already its
share of the whole step's loss over all ranks, and is multiplied by the number of processes
before backward because DDP, FSDP and DeepSpeed all *average* gradients over ranks.
preftune accumulates gradients itself (a backward per micro-batch, one step). What differs
per backend is here:

- DDP: the step's non-last micro-batches run under ``no_sync`` (no all-reduce).
- FSDP2: the same through ``set_requires_gradient_sync(False)`` (no reduce-scatter); the
  frozen reference is copied *before* the policy is sharded (a copy taken afterwards would
  hold DTensor shards and FSDP hooks) and is sharded the same way.
- DeepSpeed: accelerate's ``backward`` steps the engine whenever ``sync_gradients`` is true,
  so the non-last micro-batches clear it (the engine then also treats them as
  accumulation, not boundary, micro-steps). The engine's own ``gradient_accumulation_steps``
  is forced to 1: it would divide the already normalised loss again. Micro-batch size and
  clipping come from the preftune config. The reference goes through
  ``deepspeed.initialize`` (ZeRO-3 partitions it; other stages get stage 0, i.e. only
  DeepSpeed's dtype handling), as TRL does. Under ZeRO-3 the chunked head runs as the
  head module's forward (``preftune.forward.fast.forward.head_logps``), so DeepSpeed's module hooks
  gather the partitioned head weight for it in forward and backward.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Callable

import torch

from preftune.errors import ConfigError


def _types():
    from accelerate.utils import DistributedType

    return DistributedType


def is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == _types().DEEPSPEED


def is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type == _types().FSDP


def engine(accelerator) -> str:
    """``deepspeed``, ``fsdp`` or ``plain`` (one device, DDP): what the optimizer needs."""
    return "deepspeed" if is_deepspeed(accelerator) else "fsdp" if is_fsdp(accelerator) \
        else "plain"


def configure(config, accelerator, log: Callable[[str], None] = print) -> None:
    """Before any part is built: settings the backend needs from the preftune config."""
    t = config.training
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        # Each process would train alone on the same data and write the same output_dir.
        raise RuntimeError(
            f"{launched} processes were launched but accelerate runs each alone: without GPUs, "
            "set ACCELERATE_USE_CPU=true (ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 "
            "-m preftune.cli train ...)")
    # preftune normalises each micro-batch's loss itself; accelerate's backward would divide
    # it again by its own accumulation count (which `accelerate launch` may set from YAML).
    accelerator.gradient_accumulation_steps = 1
    if is_deepspeed(accelerator):
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds.get("gradient_accumulation_steps") not in (None, "auto", 1):
            log(f"deepspeed gradient_accumulation_steps={ds['gradient_accumulation_steps']} "
                f"replaced by 1: preftune accumulates {t.gradient_accumulation_steps} "
                "micro-batches itself (gradient_accumulation_steps in the preftune config)")
        ds["gradient_accumulation_steps"] = 1
        ds["train_micro_batch_size_per_gpu"] = t.per_device_train_batch_size
        ds["train_batch_size"] = t.per_device_train_batch_size * accelerator.num_processes
        ds["gradient_clipping"] = t.max_grad_norm if t.max_grad_norm and t.max_grad_norm > 0 else 0.0


def prepare(accelerator, model, optimizer, copy_reference: bool):
    """``accelerator.prepare`` of the policy and optimizer. Returns ``(model, optimizer,
    reference_copy)``; with ``copy_reference`` under FSDP and DeepSpeed, ``reference_copy``
    is a copy of the starting policy taken before sharding (elsewhere None: the reference
    is copied later, from the prepared model)."""
    reference_copy = None
    if copy_reference and (is_fsdp(accelerator) or is_deepspeed(accelerator)):
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            raise ValueError(
                "the policy was partitioned while loading (DeepSpeed zero3_init_flag), so no "
                "whole copy of it can serve as the reference: set zero3_init_flag: false, or "
                "ref_model, or precompute_ref_log_probs")
        reference_copy = copy.deepcopy(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, reference_copy


def prepare_reference(accelerator, ref_model: torch.nn.Module) -> torch.nn.Module:
    """Place the frozen reference the way the policy is placed (sharded where it is)."""
    ref_model.eval().requires_grad_(False)
    if is_fsdp(accelerator) and accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        # Not accelerator.prepare_model: that would add the reference to the checkpoints.
        return fsdp2_prepare_model(accelerator, ref_model).eval()
    if is_deepspeed(accelerator):
        return _deepspeed_reference(accelerator, ref_model)
    # DDP, one device, and FSDP1: a whole copy on each device.
    return ref_model.to(accelerator.device)


def _deepspeed_reference(accelerator, ref_model: torch.nn.Module) -> torch.nn.Module:
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    if config["zero_optimization"]["stage"] != 3:
        # Nothing to partition without an optimizer: stage 0 keeps DeepSpeed's dtype casts.
        config["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=ref_model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None
    return engine


@contextlib.contextmanager
def accumulating(accelerator, model):
    """Backward passes inside add to the local gradients: no cross-rank reduction and no
    optimizer step. A step's last micro-batch runs outside it."""
    if is_deepspeed(accelerator):
        # accelerate's DeepSpeed backward calls engine.step() when sync_gradients is true.
        state = accelerator.gradient_state
        state._set_sync_gradients(False)
        try:
            yield
        finally:
            state._set_sync_gradients(True)
    else:
        with accelerator.no_sync(model):
            yield


# -- agreement between ranks -----------------------------------------------------------

def all_reduce(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (on the CPU); ``tensor`` itself with one process."""
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor.to(accelerator.device), "sum").cpu()


def agree(accelerator, flag: bool) -> bool:
    """True on every rank when it is on any (clocks and files differ between processes)."""
    if accelerator.num_processes == 1:
        return flag
    return all_reduce(accelerator, torch.tensor([float(flag)], dtype=torch.float64)).item() > 0


def on_main(accelerator, action: Callable[[], object]):
    """``action()`` on the main process, its result there (None elsewhere); a ConfigError
    there stops every rank (the others would otherwise wait for it at the next barrier)."""
    error, result = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except ConfigError as refused:
            error = refused
    if agree(accelerator, error is not None):
        raise error or ConfigError("the main process refused this run (see its message)")
    return result


class OneProcess:
    """What scoring asks of an accelerator, for a model scored outside a run: one process
    on ``device``, no autocast (evaluation.metrics.preference_metrics)."""

    num_processes, process_index = 1, 0
    is_main_process = is_local_main_process = True

    def __init__(self, device: torch.device):
        self.device = device

    def autocast(self):
        return contextlib.nullcontext()

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

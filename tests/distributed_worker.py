"""One rank of a multi-process test run (tests/test_distributed.py launches it):

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 --master_port 29511 \\
        tests/distributed_worker.py --backend ddp --runs '[{"output_dir": "/tmp/x", "args": []}]'
    OMP_NUM_THREADS=1 accelerate launch --config_file configs/accelerate/zero3.yaml \\
        --num_processes 2 tests/distributed_worker.py --backend launcher --runs '[...]'

Each entry of ``--runs`` is one Trainer run, in order, in this process: ``output_dir``,
``args`` (command-line config keys), optional ``copy_checkpoint`` (a checkpoint folder
of an earlier run, copied into ``output_dir`` first, for ``--resume``) and optional
``nan_on_rank``/``nan_at_step`` (that rank's forward passes return NaN during that step,
0-based: a non-finite step seen by one rank only) and optional ``record_syncs`` (TR-DPO:
after each reference update the whole policy it mixed in is written to
``output_dir/policy-{step}.safetensors``; FSDP and DeepSpeed checkpoints hold no
``model.safetensors`` to read it from). The data, model and
tokenizer are the ones test_trainer.py uses, so a 1-process run in the test compares step
for step.

Backends, all on CPU over gloo:
- ``ddp``: accelerate's multi-CPU state (DistributedDataParallel).
- ``fsdp2``: that state switched to FSDP2. accelerate selects FSDP on accelerators only, but
  ``torch.distributed.fsdp.fully_shard`` runs on CPU; with the state switched, the trainer
  goes through accelerate's own FSDP2 paths (``prepare`` -> ``fsdp2_prepare_model``,
  ``no_sync`` -> ``set_requires_gradient_sync``, DTensor-aware ``clip_grad_norm_``,
  ``get_state_dict``, ``save_state`` / ``load_state``).
- ``launcher``: whatever ``accelerate launch --config_file`` set up; for DeepSpeed on CPU
  (its CPU accelerator) accelerate is only told to use gloo.
"""

import argparse
import faulthandler
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accelerate import Accelerator, PartialState  # noqa: E402
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from tiny import random_pairs, tiny_llama  # noqa: E402
from preftune.config import load_config  # noqa: E402
from preftune.model_io import load_tokenizer  # noqa: E402
from preftune.train.trainer import Trainer  # noqa: E402

# The options test_trainer.make_trainer uses.
BASE_ARGS = ["--learning_rate", "1e-3", "--warmup_ratio", "0", "--logging_steps", "1",
             "--progress_bar", "false", "--seed", "7"]


def accelerator_for(backend: str) -> Accelerator:
    if backend == "launcher":  # whatever `accelerate launch --config_file ...` set up
        if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" and not torch.cuda.is_available():
            # accelerate finds no backend for DeepSpeed on CPU; DeepSpeed itself runs on gloo.
            PartialState(backend="gloo")
        return Accelerator(mixed_precision="no")
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    if backend == "fsdp2":
        if not torch.distributed.is_initialized():
            raise RuntimeError("fsdp2 needs a process group: launch with torch.distributed.run")
        state = accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=True,
            auto_wrap_policy="transformer_based_wrap", state_dict_type="SHARDED_STATE_DICT",
            cpu_ram_efficient_loading=False)
        # Both shared states: accelerate re-reads AcceleratorState's from PartialState's.
        state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
        assert accelerator.is_fsdp2
    return accelerator


def record_syncs(trainer: Trainer, output_dir: Path) -> None:
    """After each reference update, the whole policy (accelerate's get_state_dict: gathered
    under FSDP2 and ZeRO-3, on every rank) in ``output_dir/policy-{step}.safetensors``."""
    from safetensors.torch import save_file

    accelerator, after_step = trainer.accelerator, trainer.ref_sync.after_step

    def recording(step: int) -> bool:
        mixed = after_step(step)
        if mixed:
            policy = accelerator.get_state_dict(trainer.model)
            if accelerator.is_main_process:
                save_file({k: v.detach().cpu().clone() for k, v in policy.items()},
                          str(output_dir / f"policy-{step}.safetensors"))
        return mixed

    trainer.ref_sync.after_step = recording


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["ddp", "fsdp2", "launcher"], default="ddp")
    parser.add_argument("--runs", required=True, help="JSON list of runs")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--tokenizer", default="smollm2",
                        help="a saved copy of the test tokenizer loads in a fraction of the time")
    parser.add_argument("--timeout", type=float, default=240,
                        help="print every thread's stack and exit after this many seconds")
    options = parser.parse_args()
    # A rank stuck in a collective would hang the test: fail it with the stacks instead.
    faulthandler.dump_traceback_later(options.timeout, exit=True)
    tokenizer = load_tokenizer(options.tokenizer)
    for run in json.loads(options.runs):
        accelerator = accelerator_for(options.backend)
        config = load_config(None, ["--output_dir", run["output_dir"], *BASE_ARGS, *run["args"]])
        trainer = Trainer(config, model=tiny_llama(vocab_size=1000),
                          tokenizer=tokenizer, train_pairs=random_pairs(options.pairs, vocab=1000),
                          accelerator=accelerator, log=accelerator.print)
        if run.get("copy_checkpoint"):
            # Resume in a fresh folder from another run's checkpoint, leaving that run's
            # metrics and final model to compare with.
            if accelerator.is_main_process:
                source = Path(run["copy_checkpoint"])
                shutil.copytree(source, Path(run["output_dir"]) / source.name)
            accelerator.wait_for_everyone()
        if run.get("nan_on_rank") == accelerator.process_index:
            poison_step = run["nan_at_step"]
            accelerator.unwrap_model(trainer.model).get_input_embeddings().register_forward_hook(
                lambda module, inputs, output: output * float("nan")
                if trainer.step == poison_step else output)
        if run.get("record_syncs"):
            record_syncs(trainer, Path(run["output_dir"]))
        trainer.train()
        # The chunked head ran on the sharded model, not the full-logits fallback: it runs
        # as the head module's forward, which FSDP2 / ZeRO-3 gather the head weight for.
        assert trainer.forward.support[trainer.model].chunked, "chunked head fell back"
        if options.backend == "fsdp2":
            # The test would also pass on plain DDP: make sure FSDP2 is what ran, on the
            # reference too. (accelerate keeps the embedding/norm/head group gathered after
            # forward; the reference has no backward to reshard it, so only layers count.)
            assert accelerator.is_fsdp2, "accelerate left FSDP2"
            models = [trainer.model] + ([trainer.reference.model] if trainer.reference else [])
            for model in models:
                layers = [p for n, p in model.named_parameters() if ".layers." in n]
                assert layers and all(isinstance(p, DTensor) for p in layers), type(model)


if __name__ == "__main__":
    main()

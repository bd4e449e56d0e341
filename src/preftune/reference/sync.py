"""TR-DPO's reference updates (Gorbatovski et al. 2024, "Learn Your Reference Model for Real
Good Alignment", arXiv:2404.09656, soft update, Eq. 4): every ``ref_model_sync_steps``
optimizer steps the reference weights become ``alpha * policy + (1 - alpha) * reference``
(``ref_model_mixup_alpha``; alpha 1 is the paper's hard update, a copy of the policy).

The trainer calls :meth:`ReferenceSync.after_step` once per step counter value; the mixed
weights are written into each checkpoint (``reference_model.safetensors``, covered by the
manifest) and loaded back on resume, so a resumed run continues from the same reference,
bit for bit.

Where it runs: one process and DDP, whose reference is a whole copy on every device and
whose policy is the same on every rank, so each rank mixes the same numbers without
communication. Under FSDP and DeepSpeed the reference and policy parameters are shards or
partitions laid out by different wrappers (reference: distributed.prepare_reference), and
mixing them here is refused rather than guessed. A cached reference (precompute_ref_log_probs)
and a LoRA policy (adapters over the base, which is the reference) are refused in
validation.py.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import torch

from preftune import distributed
from preftune.errors import ConfigError

REFERENCE_FILE = "reference_model.safetensors"


class ReferenceSync:
    def __init__(self, policy: Callable[[], torch.nn.Module], reference: torch.nn.Module,
                 alpha: float, every: int):
        self.policy, self.reference = policy, reference
        self.alpha, self.every = float(alpha), int(every)
        # The last step counter value mixed at (0: none). A rolled-back or resumed run
        # restarts from a checkpoint that already holds that step's mixed weights.
        self.synced_step = 0

    @torch.no_grad()
    def mix(self) -> None:
        """``reference <- alpha * policy + (1 - alpha) * reference``, parameter by name, in
        float32 at least (a bf16 reference is rounded once, after the mix)."""
        policy = dict(self.policy().named_parameters())
        for name, ref in self.reference.named_parameters():
            source = policy[name].detach().to(ref.device)
            work = torch.promote_types(ref.dtype, torch.float32)
            mixed = torch.lerp(ref.to(work), source.to(work), self.alpha)
            ref.copy_(mixed.to(ref.dtype))

    def after_step(self, step: int) -> bool:
        """Mixes when ``step`` is a multiple of ``ref_model_sync_steps`` not mixed yet."""
        if step <= self.synced_step or step % self.every:
            return False
        self.mix()
        self.synced_step = step
        return True

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {n: p.detach().cpu().contiguous() for n, p in self.reference.named_parameters()}
        save_file(state, str(folder / REFERENCE_FILE))

    def load(self, folder: Path, step: int) -> None:
        from safetensors.torch import load_file

        path = folder / REFERENCE_FILE
        if not path.is_file():
            raise ConfigError(f"{folder} holds no {REFERENCE_FILE}: it was written without "
                              "sync_ref_model, whose reference it cannot restore")
        state = load_file(str(path))
        with torch.no_grad():
            for name, ref in self.reference.named_parameters():
                ref.copy_(state[name].to(ref.device))
        self.synced_step = step


def _check_names(policy: torch.nn.Module, reference: torch.nn.Module) -> None:
    mine = {n: p.shape for n, p in policy.named_parameters()}
    theirs = {n: p.shape for n, p in reference.named_parameters()}
    if mine != theirs:
        raise ConfigError("sync_ref_model: the reference model's parameters differ from the "
                          "policy's (names or shapes), so they cannot be mixed; drop ref_model "
                          "(the reference is then a copy of the starting policy)")


def build_sync(parts) -> Optional[ReferenceSync]:
    """The run's :class:`ReferenceSync`, or None without ``sync_ref_model``."""
    m, acc = parts.config.model, parts.accelerator
    if not m.sync_ref_model:
        return None
    for backend, on in (("FSDP", distributed.is_fsdp(acc)),
                        ("DeepSpeed", distributed.is_deepspeed(acc))):
        if on:
            raise ConfigError(f"sync_ref_model is not supported under {backend}: the "
                              "reference and policy are sharded by different wrappers; run "
                              "TR-DPO on one process or under DDP")
    reference = getattr(parts.reference, "model", None)
    if reference is None:
        raise ConfigError("sync_ref_model needs a reference model held in memory (not "
                          "precompute_ref_log_probs, not LoRA's adapters-off base)")
    # Looked up at each mix: the unwrapped module behind whatever wrapper prepare gave.
    policy = functools.partial(acc.unwrap_model, parts.model)
    _check_names(policy(), reference)
    return ReferenceSync(policy, reference, m.ref_model_mixup_alpha, m.ref_model_sync_steps)

"""TR-DPO's reference updates (Gorbatovski et al. 2024, "Learn Your Reference Model for Real
Good Alignment", arXiv:2404.09656, soft update, Eq. 4): every ``ref_model_sync_steps``
optimizer steps the reference weights become ``alpha * policy + (1 - alpha) * reference``
(``ref_model_mixup_alpha``; alpha 1 is the paper's hard update, a copy of the policy).

The trainer calls :meth:`ReferenceSync.after_step` once per step counter value; the mixed
weights are written into each checkpoint (``reference_model.safetensors``, whole, covered
by the manifest) and loaded back on resume, so a resumed run continues from the same
reference, bit for bit.

How each backend holds the two models, and so how they are mixed, parameter by parameter:
- one process, DDP, DeepSpeed ZeRO-0/1/2: both are whole on every device (ZeRO-2 shards the
  optimizer state and gradients, not the weights; its reference is a stage-0 engine) and
  the policy is the same on every rank, so each rank mixes the same numbers alone.
- FSDP2: both are DTensor shards placed by ``fsdp2_prepare_model`` with one wrap policy
  (distributed.prepare_reference), so each rank mixes its own shards, with no communication;
  a parameter laid out otherwise is gathered (``full_tensor``) and cut to the reference's
  layout. The modules are resharded first: FSDP2 keeps the reference's last group gathered
  after its forward (no backward reshards it), and writes into that gathered copy would be
  lost.
- DeepSpeed ZeRO-3: both are partitioned; one parameter of each at a time is gathered
  (``deepspeed.zero.GatheredParameters``), mixed, and the reference's re-partitioned from
  rank 0's result, so at most one whole parameter of each model is held at once.
Saving gathers the same way, one parameter at a time, onto the main process (a collective
under FSDP2 and ZeRO-3, so every rank calls :meth:`ReferenceSync.gather`); loading reads the
file one tensor at a time and writes each rank's part.

Refused: FSDP1 (flattened parameters that ``named_parameters`` does not show as the policy's
weights; use fsdp_version 2), a cached reference (precompute_ref_log_probs) and a LoRA policy
(adapters over the base, which is the reference; validation.py).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from preftune import distributed
from preftune.errors import ConfigError

REFERENCE_FILE = "reference_model.safetensors"


# -- one parameter, whatever holds it ----------------------------------------------------

def _is_dtensor(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@contextlib.contextmanager
def _gathered(param: torch.Tensor, modified: bool = False) -> Iterator[None]:
    """A ZeRO-3 parameter is whole inside (re-partitioned on exit, from rank 0's values when
    ``modified``: every rank computes the same ones); any other parameter is left as it is."""
    if not hasattr(param, "ds_id"):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([param], modifier_rank=0 if modified else None):
        yield


def _local(param: torch.Tensor) -> torch.Tensor:
    """The values this process holds and may write: a DTensor's shard, else the tensor."""
    return param.to_local() if _is_dtensor(param) else param.data


def _whole(param: torch.Tensor) -> torch.Tensor:
    """The whole parameter (a collective for a DTensor)."""
    return param.full_tensor() if _is_dtensor(param) else param.detach()


def _local_like(source: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``source``'s values cut to the part of ``like`` this process holds: a shard placed as
    ``like`` is taken as it is, anything else is made whole first and then cut."""
    if _is_dtensor(source) and _is_dtensor(like) and source.placements == like.placements \
            and source.device_mesh == like.device_mesh and source.shape == like.shape:
        return source.to_local()
    source = _whole(source)
    if not _is_dtensor(like):
        return source
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank holds the whole tensor; each keeps its part, no comms.
    return distribute_tensor(source.to(like.device), like.device_mesh, like.placements,
                             src_data_rank=None).to_local()


def _reshard(model: torch.nn.Module) -> None:
    """FSDP2 modules put their sharded parameters back (a no-op elsewhere)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


# -- the updates -------------------------------------------------------------------------

class ReferenceSync:
    def __init__(self, policy: Callable[[], torch.nn.Module], reference: torch.nn.Module,
                 alpha: float, every: int, is_main: bool = True):
        self.policy, self.reference = policy, reference
        self.alpha, self.every = float(alpha), int(every)
        self.is_main = is_main
        # The last step counter value mixed at (0: none). A rolled-back or resumed run
        # restarts from a checkpoint that already holds that step's mixed weights.
        self.synced_step = 0

    @torch.no_grad()
    def mix(self) -> None:
        """``reference <- alpha * policy + (1 - alpha) * reference``, parameter by name, in
        float32 at least (a bf16 reference is rounded once, after the mix)."""
        policy_model = self.policy()
        _reshard(policy_model)
        _reshard(self.reference)
        policy = dict(policy_model.named_parameters())
        for name, ref in self.reference.named_parameters():
            with _gathered(policy[name]), _gathered(ref, modified=True):
                target = _local(ref)
                source = _local_like(policy[name].detach(), ref).to(target.device)
                work = torch.promote_types(target.dtype, torch.float32)
                mixed = torch.lerp(target.to(work), source.to(work), self.alpha)
                target.copy_(mixed.to(target.dtype))

    def after_step(self, step: int) -> bool:
        """Mixes when ``step`` is a multiple of ``ref_model_sync_steps`` not mixed yet."""
        if step <= self.synced_step or step % self.every:
            return False
        self.mix()
        self.synced_step = step
        return True

    @torch.no_grad()
    def gather(self) -> Optional[dict[str, torch.Tensor]]:
        """The whole reference on the CPU of the main process (None elsewhere). Every rank
        calls it: under FSDP2 and ZeRO-3 each parameter is gathered in turn."""
        _reshard(self.reference)
        state = {}
        for name, ref in self.reference.named_parameters():
            with _gathered(ref):
                whole = _whole(ref)
                if self.is_main:
                    state[name] = whole.to("cpu", copy=True).contiguous()
        return state if self.is_main else None

    def save(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        """Writes :meth:`gather`'s result (main process)."""
        from safetensors.torch import save_file

        save_file(state, str(folder / REFERENCE_FILE))

    @torch.no_grad()
    def load(self, folder: Path, step: int) -> None:
        """Every rank reads the file, one tensor at a time, and writes its part."""
        from safetensors import safe_open

        path = folder / REFERENCE_FILE
        if not path.is_file():
            raise ConfigError(f"{folder} holds no {REFERENCE_FILE}: it was written without "
                              "sync_ref_model, whose reference it cannot restore")
        _reshard(self.reference)
        with safe_open(str(path), framework="pt") as saved:
            for name, ref in self.reference.named_parameters():
                with _gathered(ref, modified=True):
                    target = _local(ref)
                    target.copy_(_local_like(saved.get_tensor(name), ref).to(target.device))
        self.synced_step = step


def _shape(param: torch.Tensor) -> torch.Size:
    # A ZeRO-3 parameter's own shape is empty; ds_shape is the whole one.
    return getattr(param, "ds_shape", param.shape)


def _check_names(policy: torch.nn.Module, reference: torch.nn.Module) -> None:
    mine = {n: tuple(_shape(p)) for n, p in policy.named_parameters()}
    theirs = {n: tuple(_shape(p)) for n, p in reference.named_parameters()}
    if mine != theirs:
        raise ConfigError("sync_ref_model: the reference model's parameters differ from the "
                          "policy's (names or shapes), so they cannot be mixed; drop ref_model "
                          "(the reference is then a copy of the starting policy)")


def build_sync(parts) -> Optional[ReferenceSync]:
    """The run's :class:`ReferenceSync`, or None without ``sync_ref_model``."""
    m, acc = parts.config.model, parts.accelerator
    if not m.sync_ref_model:
        return None
    if distributed.is_fsdp(acc) and not getattr(acc, "is_fsdp2", False):
        raise ConfigError("sync_ref_model is not supported under FSDP1: its flattened "
                          "parameters are not the policy's weights by name; set fsdp_version: "
                          "2 (configs/accelerate/fsdp2.yaml)")
    reference = getattr(parts.reference, "model", None)
    if reference is None:
        raise ConfigError("sync_ref_model needs a reference model held in memory (not "
                          "precompute_ref_log_probs, not LoRA's adapters-off base)")
    # Both looked up behind their wrappers (DeepSpeed engines, DDP): the policy's at each mix.
    reference = acc.unwrap_model(reference)
    policy = functools.partial(acc.unwrap_model, parts.model)
    _check_names(policy(), reference)
    return ReferenceSync(policy, reference, m.ref_model_mixup_alpha, m.ref_model_sync_steps,
                         is_main=acc.is_main_process)

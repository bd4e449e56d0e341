"""The optimizer ``optim`` names: AdamW (the default), fused AdamW, Adafactor, SGD, or
bitsandbytes' 8-bit and paged AdamW; AdamW with float32 master weights when the trainable
weights are 16-bit.

A bf16 weight has 8 significant bits: an update smaller than about 1/256 of the weight
rounds away. At the learning rates preference tuning uses (5e-7 to 1e-5), AdamW's steps
are of that size, so plain AdamW on bf16 weights leaves almost every weight where it was
(two steps at lr 1e-6 moved 0.4% of SmolLM2's bf16 weights, against 97% in float32).

The default (``torch_dtype`` auto or null) loads float32 weights and runs the matmuls in
bf16 under autocast (``bf16``), as TRL and the SimPO repositories do. When the weights are
loaded in bf16 or fp16 to save memory, :class:`MasterWeightAdamW` keeps a float32 copy of
each trainable weight: AdamW updates the copy, and the model's weight is the copy rounded
once per step, so updates accumulate instead of rounding away. The copies and the moments
are what resume needs; they are part of the optimizer's state dict.
"""

from __future__ import annotations

import importlib.util
from typing import Iterable, Optional

import torch

from preftune.errors import ConfigError

LOW_PRECISION = (torch.bfloat16, torch.float16)
ADAMW = ("adamw_torch", "adamw_torch_fused")
# ``optim`` names (TRL's and transformers') of bitsandbytes' optimizers -> their class.
BITSANDBYTES = {"adamw_8bit": "AdamW8bit", "adamw_bnb_8bit": "AdamW8bit",
                "paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}
OPTIMIZERS = (*ADAMW, "adafactor", "sgd", *BITSANDBYTES)
FLOAT16_WEIGHTS = (
    "torch_dtype float16 trains float16 weights: their gradients underflow to 0 without "
    "loss scaling, and torch's loss scaler does not take float16 gradients. Train float32 "
    "weights (torch_dtype auto) with fp16: true (fp16 autocast with loss scaling, on a GPU) "
    "or bf16: true, or load torch_dtype bfloat16; LoRA over a float16 base model is fine "
    "(its adapters train in float32)")


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW over float32 copies of 16-bit parameters (the classic mixed-precision recipe).

    ``step`` reads each model parameter's gradient into its copy's gradient (float32),
    steps AdamW on the copies and writes the rounded copies back into the parameters.
    ``param_groups`` hold the copies, so learning-rate schedules work unchanged."""

    def __init__(self, params: Iterable[torch.nn.Parameter], **adamw):
        self.model_params = list(params)
        masters = [p.detach().to(torch.float32).clone() for p in self.model_params]
        super().__init__(masters, **adamw)

    def masters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        for param, master in zip(self.model_params, self.masters()):
            master.grad = None if param.grad is None else param.grad.to(torch.float32)
        loss = super().step(closure)
        for param, master in zip(self.model_params, self.masters()):
            param.copy_(master)
            master.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.model_params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()
        super().zero_grad(set_to_none)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["master_weights"] = [m.detach().clone() for m in self.masters()]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        masters = state_dict.pop("master_weights", None)
        super().load_state_dict(state_dict)
        if masters is None:  # a checkpoint of plain AdamW: start from the weights as saved
            masters = [p.detach() for p in self.model_params]
        with torch.no_grad():
            for master, saved, param in zip(self.masters(), masters, self.model_params):
                master.copy_(saved)
                param.copy_(master)


def optimizer_problem(name: str, cuda: bool) -> Optional[str]:
    """Why the optimizer ``optim`` names cannot run here, or None: checked before anything
    loads (preftune.validation)."""
    if name in BITSANDBYTES:
        if importlib.util.find_spec("bitsandbytes") is None:
            return f"optim {name} needs bitsandbytes: pip install bitsandbytes"
        if not cuda:
            return (f"optim {name}: bitsandbytes' 8-bit and paged optimizers run on CUDA GPUs; "
                    "use adamw_torch here")
    return None


def _make(name: str, params: list, t, master_weights: bool) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer ``name`` over ``params``, and its name for the start line."""
    adamw = dict(lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                 weight_decay=t.weight_decay)
    if name in ADAMW:
        fused = {"fused": True} if name == "adamw_torch_fused" else {}
        kind = MasterWeightAdamW if master_weights else torch.optim.AdamW
        try:
            return kind(params, **adamw, **fused), "fused AdamW" if fused else "AdamW"
        except RuntimeError as error:  # fused kernels exist for some devices and dtypes only
            raise ConfigError(f"optim {name}: {error}; use adamw_torch") from None
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # A fixed learning rate under the run's schedule, as TRL's optim adafactor.
        return Adafactor(params, lr=t.learning_rate, scale_parameter=False, relative_step=False,
                         warmup_init=False, weight_decay=t.weight_decay), "Adafactor"
    if name == "sgd":
        return torch.optim.SGD(params, lr=t.learning_rate, weight_decay=t.weight_decay), "SGD"
    if name in BITSANDBYTES:
        import bitsandbytes

        kind = BITSANDBYTES[name]
        return getattr(bitsandbytes.optim, kind)(params, **adamw), f"bitsandbytes {kind}"
    raise ConfigError(f"optim: unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def build_optimizer(model: torch.nn.Module, t, engine: str = "plain"
                    ) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer ``t.optim`` names over the trainable parameters, and a few words on how
    updates are kept for the run's start line. ``engine``: ``plain`` (one device, DDP),
    ``deepspeed`` (its bf16 optimizer keeps float32 masters itself) or ``fsdp`` (16-bit
    weights are refused: FSDP2 keeps float32 shards and computes in bf16 under its own mixed
    precision). 16-bit weights outside DeepSpeed train with the AdamW choices only, over
    float32 master copies (:class:`MasterWeightAdamW`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    dtypes = {p.dtype for p in params}
    if torch.float16 in dtypes:
        raise ConfigError(FLOAT16_WEIGHTS)
    low = sorted(str(d).replace("torch.", "") for d in dtypes & set(LOW_PRECISION))
    if low and engine == "fsdp":
        raise ConfigError(
            f"torch_dtype {low[0]} under FSDP2: its updates would round away. Load float32 "
            "weights (torch_dtype auto, the default) with bf16: true; FSDP2 then shards the "
            "float32 weights and runs the matmuls in bf16")
    if not low or engine == "deepspeed":
        where = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes)) or "none"
        note = " (DeepSpeed's bf16 optimizer keeps float32 masters)" if low else ""
        optimizer, label = _make(t.optim, params, t, master_weights=False)
        return optimizer, f"{label} on {where} weights{note}"
    if t.optim not in ADAMW:
        raise ConfigError(low_precision_refusal(t.optim, low[0]))
    optimizer, label = _make(t.optim, params, t, master_weights=True)
    return optimizer, f"{label} on float32 master copies of the {'/'.join(low)} weights"


def low_precision_refusal(name: str, dtype: str) -> str:
    return (f"optim {name} on {dtype} weights: its updates would round away (no float32 "
            "master copies). Load float32 weights (torch_dtype auto) with bf16: true for "
            "bf16 matmuls, or use adamw_torch, which keeps float32 master copies")

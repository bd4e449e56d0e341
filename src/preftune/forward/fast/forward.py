"""The fast forward station: same seam and same numbers as :class:`PaddedForward`.

Three independent switches (``TrainingConfig``):

- ``chunked_logps``: the model returns hidden states, not logits; the output head runs
  only where a completion token is scored, a chunk of tokens at a time, with the
  backward pass recomputing each chunk (chunked_logps.py);
- ``prefix_sharing``: ``[prompt | chosen | rejected]`` in one row, the prompt computed once;
- ``packing``: several pairs per row up to ``max_tokens_per_row``, no padding in between.

The last two need the model to take a custom 4-D attention mask and position ids
(transformers passes a 4-D mask through unchanged for ``sdpa`` and ``eager`` attention).
What a model cannot do is switched off for that model with a one-line notice: the
first call runs a few-token probe through both this station and PaddedForward and keeps
only the features that reproduce it, so a model that ignores or rejects the mask, or
transforms its logits in a way the chunked head does not know, falls back instead of
training on wrong numbers. With all features off this is PaddedForward.

The model is always called through its own (possibly wrapped) ``forward``, so DDP's
gradient hooks and hidden-state capture work as in the plain path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from preftune.forward.fast import flex
from preftune.forward.fast.chunked_logps import (chunked_log_sum_sq, chunked_token_logps,
                                                  head_transform)
from preftune.forward.fast.layout import Layout, build_layout, scatter_completions
from preftune.forward.fast.probe import ProbeJudge, probe_pairs
from preftune.forward.logps import (PaddedForward, log_sum_sq_probs, model_forward_kwargs,
                                    token_logps, unwrap)
from preftune.types import SequenceLogps, TokenizedPair

MASKABLE_ATTENTION = {"sdpa": "bool", "eager": "additive", flex.FLEX: "block"}
ATTENTION_CHOICES = ("auto", "dense", "flex")


@dataclass
class Support:
    """What the fast path does for one model, and why a feature is off."""

    chunked: bool
    custom_mask: bool
    notes: tuple[str, ...] = ()
    # The run's start line for this model (FastForward.describe).
    summary: str = field(default="", compare=False)
    flex: bool = field(default=False, compare=False)  # custom masks as FlexAttention blocks


def static_support(model: torch.nn.Module, chunked: bool, custom_mask: bool) -> Support:
    """What can be decided from the model's classes and config alone."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    notes = []
    if chunked:
        head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        if not isinstance(head, torch.nn.Linear):
            chunked = False
            notes.append(f"chunked_logps off: output head is {type(head).__name__}, not Linear")
    if custom_mask:
        impl = getattr(config, "_attn_implementation", None)
        if impl not in MASKABLE_ATTENTION:
            custom_mask = False
            notes.append(f"prefix_sharing/packing off: {impl!r} attention takes no custom "
                         "4-D mask (sdpa and eager do)")
        elif config is not None and hasattr(config, "output_router_logits"):
            # The router loss is averaged over the padded rows' tokens; another layout
            # would change it.
            custom_mask = False
            notes.append("prefix_sharing/packing off: mixture-of-experts router loss is "
                         "defined on padded rows")
    return Support(chunked, custom_mask, tuple(notes))


def sliding_window(config) -> Optional[int]:
    if config is None or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return getattr(config, "sliding_window", None)


def attention_mask(layout: Layout, kind: str, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    allowed = layout.attention_allowed(device)
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def head_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
               chunk_size: Optional[int], transform, squares: Optional[list] = None
               ) -> torch.Tensor:
    """The chunked head on ``hidden [N, H]``, with the head's whole weight in both passes.

    DeepSpeed ZeRO-3 gathers a partitioned weight only around its module's forward and
    backward, so there the chunked function runs as the head module's own forward for this
    one call and DeepSpeed's hooks gather the weight as for any layer. FSDP2 as accelerate
    wraps a model keeps the head in a group that stays gathered from forward to backward
    (the tail group / the root, ``reshard_after_forward=False``), so the weight is read
    directly; a second call of that module in one step would re-enter FSDP2's hooks.
    ``squares``: a list that receives WPO's alignment term (chunked_log_sum_sq), computed
    inside the same call, while the weight is gathered."""

    def forward(states: torch.Tensor) -> torch.Tensor:
        if squares is not None:
            squares.append(chunked_log_sum_sq(states.detach(), head.weight, head.bias,
                                              chunk_size, transform))
        return chunked_token_logps(states, head.weight, head.bias, targets, chunk_size,
                                   transform)

    if not hasattr(head.weight, "ds_id"):  # not a ZeRO-3 partitioned parameter
        return forward(hidden)
    # An instance attribute shadows the class's forward; another one (a hook that
    # replaced it) is put back afterwards.
    replaced = head.__dict__.get("forward")
    head.forward = forward
    try:
        return head(hidden)
    finally:
        if replaced is None:
            del head.forward
        else:
            head.forward = replaced


class FastForward:
    """Completion-only chunked log-probs over prefix-shared, packed rows."""

    name = "fast"

    def __init__(self, pad_token_id: int = 0, *, chunked: bool = True,
                 chunk_size: Optional[int] = None,
                 prefix_sharing: bool = True, packing: bool = True,
                 max_tokens_per_row: Optional[int] = None, probe: bool = True,
                 attention: str = "auto", log: Callable[[str], None] = print,
                 log_sum_sq: bool = False):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"logps_chunk_size must be >= 1, got {chunk_size}")
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"fast_attention must be one of {', '.join(ATTENTION_CHOICES)}, "
                             f"got {attention!r}")
        self.attention = attention
        self.padded = PaddedForward(pad_token_id, log_sum_sq=log_sum_sq)
        self.log_sum_sq = log_sum_sq  # WPO's alignment term (use_weighting)
        self.pad_token_id = pad_token_id
        self.chunked, self.chunk_size = chunked, chunk_size
        self.prefix_sharing, self.packing = prefix_sharing, packing
        self.max_tokens_per_row = max_tokens_per_row
        self.probe, self.log = probe, log
        self._dense_implementation = "sdpa"  # what flex falls back to
        # Per model object (policy, reference): decided on its first call.
        self.support: "weakref.WeakKeyDictionary[torch.nn.Module, Support]" = \
            weakref.WeakKeyDictionary()

    # -- the station -----------------------------------------------------------------
    def __call__(self, model: torch.nn.Module, pairs: Sequence[TokenizedPair],
                 device: torch.device) -> SequenceLogps:
        support = self.support.get(model)
        if support is None:
            support = self.support[model] = self.check(model, pairs, device)
        if not (support.chunked or support.custom_mask):
            return self.padded(model, pairs, device)
        if support.flex:
            try:
                return self.run(model, pairs, device, support.chunked, True, True)
            except Exception as error:  # noqa: BLE001 - a compile failure on a new shape
                support = self._drop_flex(model, support, error)
        return self.run(model, pairs, device, support.chunked, support.custom_mask, support.flex)

    def _drop_flex(self, model, support: Support, error: Exception) -> Support:
        """FlexAttention compiles per shape: a batch whose kernel fails to build switches
        this model to dense masks for the rest of the run, and says so."""
        if isinstance(error, torch.OutOfMemoryError):
            raise error
        self._set_attention(model, self._dense_implementation)
        note = f"flex attention off from here: {type(error).__name__}: {_first_line(error)}"
        dense = Support(support.chunked, support.custom_mask, support.notes + (note,))
        dense.summary = self.describe(type(unwrap(model)).__name__, dense, "")
        self.support[model] = dense
        self.log(f"fast forward ({type(unwrap(model)).__name__}): {note}")
        return dense

    def run(self, model, pairs: Sequence[TokenizedPair], device: torch.device,
            chunked: bool, custom_mask: bool, use_flex: bool = False) -> SequenceLogps:
        inner = unwrap(model)
        config = getattr(inner, "config", None)
        custom = custom_mask and (self.prefix_sharing or self.packing)
        if custom and (window := sliding_window(config)) is not None:
            # Our mask replaces the model's sliding-window mask: exact only while every
            # sequence fits in the window; longer batches take plain rows.
            longest = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))
                          for p in pairs)
            custom = longest < window
        layout = build_layout(pairs, self.pad_token_id,
                              prefix_sharing=custom and self.prefix_sharing,
                              packing=custom and self.packing,
                              max_tokens_per_row=self.max_tokens_per_row)
        kwargs = {"input_ids": layout.input_ids.to(device), "use_cache": False}
        if custom:
            dtype = next(inner.parameters()).dtype
            kind = MASKABLE_ATTENTION[config._attn_implementation]
            kwargs["attention_mask"] = (flex.block_mask(layout, device) if use_flex
                                        else attention_mask(layout, kind, dtype, device))
            kwargs["position_ids"] = layout.position_ids.to(device)
        else:
            kwargs["attention_mask"] = layout.padding_mask().to(device)
            kwargs.update(model_forward_kwargs(model))
        index, targets = layout.score_index.to(device), layout.targets.to(device)
        if chunked:
            # Only the final hidden state is kept; no logits are built (empty keep list).
            outputs = model(**kwargs, output_hidden_states=[-1],
                            logits_to_keep=torch.zeros(0, dtype=torch.long, device=device))
            hidden = outputs.hidden_states[-1]
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
            squares = [] if self.log_sum_sq else None
            logps = head_logps(inner.get_output_embeddings(), hidden, targets,
                               self.chunk_size, head_transform(config), squares)
        else:
            outputs = model(**kwargs)
            logits = outputs.logits
            picked = logits.reshape(-1, logits.shape[-1]).index_select(0, index)
            logps = token_logps(picked, targets)
            squares = [log_sum_sq_probs(picked.detach().to(logps.dtype))] \
                if self.log_sum_sq else None
        chosen, chosen_mask, rejected, rejected_mask = scatter_completions(logps, layout)
        result = SequenceLogps(chosen, chosen_mask, rejected, rejected_mask,
                               aux_loss=getattr(outputs, "aux_loss", None))
        if squares:
            sq = scatter_completions(squares[0], layout)
            result.chosen_log_sum_sq, result.rejected_log_sum_sq = sq[0], sq[2]
        return result

    # -- what this model supports ----------------------------------------------------
    def check(self, model, pairs: Sequence[TokenizedPair], device: torch.device) -> Support:
        """Static checks, then (``probe``) a few-token comparison with PaddedForward, judged
        in the run's own precision (:class:`ProbeJudge`). Logs one line saying what is on."""
        wanted_mask = self.prefix_sharing or self.packing
        support = static_support(model, self.chunked, wanted_mask)
        notes = list(support.notes)
        chunked, custom = support.chunked, support.custom_mask
        use_flex = custom and self._attention_switch(model, device, notes)
        judged = ""
        if self.probe and (chunked or custom):
            probe = probe_pairs(pairs)
            was_training = model.training
            model.eval()  # dropout (if enabled) would make the two passes differ
            try:
                with torch.no_grad():
                    judge = ProbeJudge(model, device, self.padded(model, probe, device),
                                       lambda: self.padded(model, probe, device))
                    if chunked:
                        problem = self._mismatch(model, probe, device, judge, True, False)
                        if problem:
                            chunked = False
                            notes.append(f"chunked_logps off: {problem}")
                    if custom and use_flex:
                        problem = (self._mismatch(model, probe, device, judge, chunked, True,
                                                  True) or self._flex_backward(model, probe,
                                                                                device, chunked))
                        if problem:
                            use_flex = False
                            notes.append(f"flex attention off: {problem}")
                            self._set_attention(model, self._dense_implementation)
                    if custom and not use_flex:
                        problem = self._mismatch(model, probe, device, judge, chunked, True)
                        if problem:
                            custom = False
                            notes.append(f"prefix_sharing/packing off: {problem}")
                    judged = judge.summary()
            finally:
                model.train(was_training)
        name = type(unwrap(model)).__name__
        for note in notes:
            self.log(f"fast forward ({name}): {note}")
        if (self.chunked or wanted_mask) and not (chunked or custom):
            self.log(f"fast forward ({name}): falling back to PaddedForward")
        result = Support(chunked, custom, tuple(notes), flex=custom and use_flex)
        result.summary = self.describe(name, result, judged)
        self.log(result.summary)
        return result

    def describe(self, name: str, support: Support, judged: str) -> str:
        """One line: each fast-path part on or off (off: because asked, or why)."""
        def state(wanted: bool, able: bool) -> str:
            return "on" if wanted and able else "off (asked)" if not wanted else "off"

        parts = [f"chunked_logps {state(self.chunked, support.chunked)}",
                 f"prefix_sharing {state(self.prefix_sharing, support.custom_mask)}",
                 f"packing {state(self.packing, support.custom_mask)}"]
        if support.custom_mask:
            parts.append("attention flex (block mask)" if support.flex
                         else "attention dense (4-D mask)")
        return f"fast forward ({name}): {', '.join(parts)}" + (f"; {judged}" if judged else "")

    # -- dense 4-D masks or FlexAttention blocks ---------------------------------------
    _dense_implementation = "sdpa"

    def _set_attention(self, model, implementation: str) -> None:
        unwrap(model).set_attn_implementation(implementation)

    def _attention_switch(self, model, device: torch.device, notes: list) -> bool:
        """Whether custom masks go in as FlexAttention blocks, switching the model's
        attention implementation where ``attention`` asks for it. auto takes flex on a GPU
        when the probe runs (it checks flex's forward and backward against the padded path
        before the first step), and otherwise keeps the model's own implementation."""
        config = getattr(unwrap(model), "config", None)
        current = getattr(config, "_attn_implementation", None)
        auto = current == flex.FLEX or (self.probe and device.type == "cuda"
                                        and flex.available())
        wanted = {"auto": auto, "flex": True, "dense": False}[self.attention]
        if wanted and not flex.available():
            notes.append("flex attention off: this torch has no FlexAttention")
            wanted = False
        elif wanted and device.type == "cpu":
            # No backward there, and torch 2.13's CPU code generation for it fails to
            # compile for some shapes: a later batch could stop the run.
            notes.append("flex attention off: torch runs FlexAttention on CPU without a "
                         "backward; dense masks instead")
            wanted = False
        if wanted != (current == flex.FLEX):
            try:
                if not wanted:
                    self._set_attention(model, self._dense_implementation)
                else:
                    self._dense_implementation = current or "sdpa"
                    self._set_attention(model, flex.FLEX)
            except (ValueError, ImportError) as error:
                notes.append(f"flex attention off: {_first_line(error)}")
                return False
        return wanted

    def _flex_backward(self, model, probe, device, chunked: bool) -> Optional[str]:
        """A model that trains needs FlexAttention's backward (torch has none on CPU)."""
        trainable = [p for p in unwrap(model).parameters() if p.requires_grad]
        if not trainable:
            return None  # a frozen reference: forward only
        try:
            with torch.enable_grad():
                got = self.run(model, probe, device, chunked, True, True)
                torch.autograd.grad(got.chosen.sum() + got.rejected.sum(), trainable[:1],
                                    allow_unused=True)
        except Exception as error:  # noqa: BLE001 - any failure means "not supported"
            return f"no backward ({type(error).__name__}: {_first_line(error, 100)})"
        return None

    def _mismatch(self, model, probe, device, judge: ProbeJudge, chunked: bool,
                  custom: bool, use_flex: bool = False) -> Optional[str]:
        try:
            got = self.run(model, probe, device, chunked, custom, use_flex)
        except Exception as error:  # noqa: BLE001 - any failure means "not supported"
            return f"probe failed ({type(error).__name__}: {_first_line(error)})"
        return judge(got, "prefix sharing/packing" if custom else "chunked head")


def _first_line(error: Exception, limit: int = 120) -> str:
    return (str(error).splitlines() or [""])[0][:limit]


def build_forward(config, tokenizer=None, log: Callable[[str], None] = print):
    """The forward station a run's ``TrainingConfig`` asks for."""
    t = config.training
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    if not (t.chunked_logps or t.prefix_sharing or t.packing):
        return PaddedForward(pad, log_sum_sq=config.method.use_weighting)
    return FastForward(pad, chunked=t.chunked_logps, chunk_size=t.logps_chunk_size,
                       prefix_sharing=t.prefix_sharing, packing=t.packing,
                       max_tokens_per_row=t.max_tokens_per_row, attention=t.fast_attention,
                       log=log, log_sum_sq=config.method.use_weighting)

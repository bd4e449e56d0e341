"""log pi(target | hidden) through the output head, a chunk of tokens at a time.

The plain path builds ``logits = head(hidden)`` for every position, ``[tokens, vocab]``,
and autograd keeps that tensor (and its log-softmax) until the backward pass: at a 128k
vocabulary and a few thousand tokens that is gigabytes, more than the model body needs.
Here the head runs only on the hidden states that score a completion token, and
:class:`ChunkedTokenLogps` fuses matmul + log-softmax + gather over ``chunk_size`` tokens
at a time, saving only its inputs; the backward pass recomputes each chunk's logits.
Extra memory: one ``chunk x vocab`` block (plus its gradient), whatever the number of
tokens; by default the chunk shrinks as the vocabulary grows (:func:`auto_chunk_size`), so
that block is the same size at any vocabulary. The same idea as Liger-Kernel's fused linear
cross-entropy, written in plain PyTorch so it runs on CPU and GPU alike.

Precision follows the plain path: the head's matmul runs in the model's (or autocast's)
dtype and ``logits[target] - logsumexp(logits)`` in float32 (float64 for a float64 model;
``preftune.forward.logps.token_logps`` says why not ``log_softmax``), so fp32 results agree to
rounding and bf16 ones to bf16 rounding of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from preftune.forward.logps import log_sum_sq_probs, logps_dtype, token_logps


@dataclass(frozen=True)
class HeadTransform:
    """What a model does to ``head(hidden)`` before the softmax: ``logits * scale``, then
    ``cap * tanh(logits / cap)`` when ``softcap`` is set (Gemma 2/3). Cohere multiplies by
    ``config.logit_scale``, Granite divides by ``config.logits_scaling``."""

    scale: float = 1.0
    softcap: Optional[float] = None


def head_transform(config) -> HeadTransform:
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    granite = getattr(config, "logits_scaling", None)
    if granite:
        scale /= float(granite)
    softcap = getattr(config, "final_logit_softcapping", None)
    return HeadTransform(scale, float(softcap) if softcap else None)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the plain path's head matmul would run in: autocast's, else the weight's."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _chunk_logits(hidden, weight, bias, transform: HeadTransform):
    """Logits of one chunk in ``logps_dtype`` and d(logits)/d(matmul output) (None when 1)."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(logps_dtype(logits.dtype))
    slope = None
    if transform.scale != 1.0:
        logits = logits * transform.scale
    if transform.softcap is not None:
        tanh = torch.tanh(logits / transform.softcap)
        logits = tanh * transform.softcap
        slope = (1.0 - tanh * tanh) * transform.scale
    elif transform.scale != 1.0:
        slope = transform.scale
    return logits, slope


CHUNK_ELEMENTS = 2 ** 23
"""Logit values per chunk by default: 32 MiB in float32. Small enough that a few such blocks
(logits, log-softmax, their gradient) are noise beside the body's activations, large enough
that the head matmul keeps dozens of rows even at a 256k vocabulary."""


def auto_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk holding one chunk's logits at ``CHUNK_ELEMENTS`` values (at least 16)."""
    return max(16, CHUNK_ELEMENTS // max(1, vocab_size))


def chunk_bounds(tokens: int, chunk_size: int) -> list[tuple[int, int]]:
    """``ceil(tokens / chunk_size)`` chunks of near-equal size (never above chunk_size).
    Equal sizes instead of a short remainder: a matmul over a handful of rows takes a
    different (GEMV-like) kernel on CPU, with a less accurate long vocab reduction in
    backward than the plain path's one big matmul."""
    count = max(1, -(-tokens // chunk_size))
    edges = [tokens * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


class ChunkedTokenLogps(torch.autograd.Function):
    """``out[i] = log_softmax(T(hidden[i] @ weight.T + bias))[targets[i]]``, chunked.

    Saved for backward: ``hidden [N, H]``, ``weight``/``bias`` (the parameters themselves,
    no copy) and ``targets [N]``; never an ``[N, vocab]`` tensor. Each chunk's logits and
    log-softmax are recomputed in backward (one more head matmul per token).

    FSDP / DeepSpeed ZeRO-3: ``weight`` must be the whole (gathered) head weight in both
    passes; ``preftune.forward.fast.forward.head_logps`` runs this function as the head module's
    forward so that the wrapper's own hooks gather it.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int, transform: HeadTransform):
        dtype = _compute_dtype(weight)
        device_type = hidden.device.type
        out = torch.empty(hidden.shape[0], dtype=logps_dtype(dtype), device=hidden.device)
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        # Casts are explicit above; autocast must not re-cast inside the chunk loop.
        with torch.autocast(device_type, enabled=False):
            for start, stop in chunk_bounds(hidden.shape[0], chunk_size):
                logits, _ = _chunk_logits(hidden[start:stop].to(dtype), w, b, transform)
                out[start:stop] = token_logps(logits, targets[start:stop])
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk_size, ctx.transform, ctx.dtype = chunk_size, transform, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets = ctx.saved_tensors
        dtype, transform = ctx.dtype, ctx.transform
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Accumulate the parameter gradients over chunks in float32 (float64 for a float64
        # head), cast once at the end.
        acc = logps_dtype(dtype)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) \
            if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) \
            if need_bias else None
        grad_out = grad_out.to(acc)
        with torch.autocast(hidden.device.type, enabled=False):
            for start, stop in chunk_bounds(hidden.shape[0], ctx.chunk_size):
                h = hidden[start:stop].to(dtype)
                logits, slope = _chunk_logits(h, w, b, transform)
                g = grad_out[start:stop, None]
                # d (logits[target] - logsumexp(logits)) / d logits = onehot - softmax.
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)
                grad_logits = logits.sub_(lse).exp_().mul_(-g)
                grad_logits.scatter_add_(-1, targets[start:stop, None], g)
                if slope is not None:
                    grad_logits = grad_logits * slope
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                grad_logits = grad_logits.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start:stop] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    if dtype == acc:  # in place: no vocab x hidden temporary
                        grad_weight.addmm_(grad_logits.t(), h)
                    else:
                        grad_weight += (grad_logits.t() @ h).to(acc)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def chunked_token_logps(hidden: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor], targets: torch.Tensor,
                        chunk_size: Optional[int] = None,
                        transform: HeadTransform = HeadTransform()) -> torch.Tensor:
    """``[N]`` log-probs (float32, float64 for a float64 head) of ``targets [N]`` given ``hidden [N, H]`` and the head;
    ``chunk_size`` tokens at a time (None: :func:`auto_chunk_size` of the vocabulary)."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"logps_chunk_size must be >= 1, got {chunk_size}")
    return ChunkedTokenLogps.apply(hidden, weight, bias, targets, chunk_size, transform)


@torch.no_grad()
def chunked_log_sum_sq(hidden: torch.Tensor, weight: torch.Tensor,
                       bias: Optional[torch.Tensor], chunk_size: Optional[int] = None,
                       transform: HeadTransform = HeadTransform()) -> torch.Tensor:
    """``[N]`` values of ``log sum_v softmax(logits)_v^2`` (WPO's alignment term, asked for by
    ``use_weighting``), through the head a chunk at a time like :class:`ChunkedTokenLogps`:
    one more head matmul per token, no gradient, no ``[N, vocab]`` tensor."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.shape[0])
    dtype = _compute_dtype(weight)
    out = torch.empty(hidden.shape[0], dtype=logps_dtype(dtype), device=hidden.device)
    w = weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    with torch.autocast(hidden.device.type, enabled=False):
        for start, stop in chunk_bounds(hidden.shape[0], chunk_size):
            logits, _ = _chunk_logits(hidden[start:stop].to(dtype), w, b, transform)
            out[start:stop] = log_sum_sq_probs(logits)
    return out


def plain_token_logps(hidden: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor], targets: torch.Tensor,
                      transform: HeadTransform = HeadTransform()) -> torch.Tensor:
    """The unchunked formula (autograd keeps ``[N, vocab]``): the tests' reference."""
    logits, _ = _chunk_logits(hidden, weight, bias, transform)
    return token_logps(logits, targets)

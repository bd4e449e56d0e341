"""The chunked head against the plain formula: values and gradients (hidden, weight, bias)
over odd chunk sizes, logit scaling and soft-capping, float64/float32/bf16 and autocast;
and what it keeps for backward: never a tokens x vocab tensor."""

from __future__ import annotations

import pytest
import torch

from float64_bounds import assert_no_farther_from_float64, max_diff, ulps_floor

FLOAT64_ATOL = 1e-12  # the chunked head alone: float64 throughout, short sums
from tiny import random_pairs, tiny_llama
from preftune.forward.fast import FastForward
from preftune.forward.fast.chunked_logps import HeadTransform, chunked_token_logps, plain_token_logps
from preftune.forward.logps import PaddedForward

TOKENS, HIDDEN, VOCAB = 37, 16, 300


def inputs(dtype=torch.float64, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=generator, dtype=torch.float64)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator, dtype=torch.float64) * 0.5
    b = torch.randn(VOCAB, generator=generator, dtype=torch.float64) if bias else None
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=generator)
    upstream = torch.randn(TOKENS, generator=generator, dtype=torch.float64)
    leaves = [t.to(dtype).requires_grad_() if t is not None else None for t in (hidden, weight, b)]
    return leaves, targets, upstream


def naive(hidden, weight, bias, targets, transform: HeadTransform):
    """float64, one token at a time, the formula written out."""
    out = []
    for h, t in zip(hidden.double(), targets):
        z = weight.double() @ h + (bias.double() if bias is not None else 0.0)
        z = z * transform.scale
        if transform.softcap is not None:
            z = transform.softcap * torch.tanh(z / transform.softcap)
        out.append(z[t] - torch.logsumexp(z, 0))
    return torch.stack(out)


def grads(fn, leaves, targets, upstream):
    for leaf in leaves:
        if leaf is not None:
            leaf.grad = None
    values = fn(*leaves, targets)
    (values.double() * upstream).sum().backward()
    return values.detach(), [leaf.grad.clone() if leaf is not None else None for leaf in leaves]


TRANSFORMS = [HeadTransform(), HeadTransform(scale=0.25), HeadTransform(softcap=3.0),
              HeadTransform(scale=2.0, softcap=5.0)]


@pytest.mark.parametrize("chunk_size", [1, 5, TOKENS, 100])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_naive_formula_in_float64(chunk_size, transform, bias):
    leaves, targets, upstream = inputs(bias=bias)
    got, got_grads = grads(lambda h, w, b, t: chunked_token_logps(h, w, b, t, chunk_size,
                                                                  transform),
                           leaves, targets, upstream)
    expected, expected_grads = grads(lambda h, w, b, t: naive(h, w, b, t, transform),
                                     leaves, targets, upstream)
    assert got.dtype == torch.float64  # a float64 head keeps float64 log-probs
    assert max_diff(got, expected) <= FLOAT64_ATOL
    for g, e in zip(got_grads, expected_grads):
        assert (g is None) == (e is None)
        if g is not None:
            assert max_diff(g, e) <= FLOAT64_ATOL


def assert_as_close_to_float64_as_plain(got, got_grads, plain, plain_grads, leaves, targets,
                                        upstream, dtype):
    """Values and each gradient: the chunked path no farther from the float64 formula on
    the same (rounded) inputs than a few times the plain path is (tests/float64_bounds.py)."""
    exact = [leaf.detach().double().requires_grad_() if leaf is not None else None
             for leaf in leaves]
    truth, truth_grads = grads(lambda h, w, b, t: naive(h, w, b, t, HeadTransform()), exact,
                               targets, upstream)
    assert_no_farther_from_float64(max_diff(got, truth), max_diff(plain, truth),
                                   ulps_floor(truth, dtype), "log-probs")
    for i, (g, p, t) in enumerate(zip(got_grads, plain_grads, truth_grads)):
        if t is not None:
            assert_no_farther_from_float64(max_diff(g, t), max_diff(p, t),
                                           ulps_floor(t, dtype), f"gradient {i}")


def test_float32_is_as_close_to_float64_as_the_plain_path():
    leaves, targets, upstream = inputs(torch.float32)
    got, got_grads = grads(lambda h, w, b, t: chunked_token_logps(h, w, b, t, 8), leaves,
                           targets, upstream)
    expected, expected_grads = grads(plain_token_logps, leaves, targets, upstream)
    assert got.dtype == torch.float32
    assert_as_close_to_float64_as_plain(got, got_grads, expected, expected_grads, leaves,
                                        targets, upstream, torch.float32)


@pytest.mark.parametrize("how", ["bf16 weights", "cpu autocast"])
def test_bf16_runs_the_matmul_in_bf16_and_the_softmax_in_float32(how):
    """Same rounding as the plain path: bf16 logits, float32 log-softmax."""
    dtype = torch.bfloat16 if how == "bf16 weights" else torch.float32
    leaves, targets, upstream = inputs(dtype, bias=False)

    def plain(h, w, b, t):
        return torch.log_softmax(torch.nn.functional.linear(h, w).float(), -1).gather(
            -1, t[:, None])[:, 0]

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "cpu autocast"):
        got, got_grads = grads(lambda h, w, b, t: chunked_token_logps(h, w, b, t, 6), leaves,
                               targets, upstream)
        expected, expected_grads = grads(plain, leaves, targets, upstream)
    assert got.dtype == expected.dtype == torch.float32
    for g, e in zip(got_grads[:2], expected_grads[:2]):
        assert g.dtype == e.dtype
    # A bf16 matmul's rounding depends on the CPU's kernel for each shape: both paths are
    # judged against the float64 formula, with a floor of bf16 ulps.
    assert_as_close_to_float64_as_plain(got, got_grads, expected, expected_grads, leaves,
                                        targets, upstream, torch.bfloat16)


def saved_tensor_sizes(fn, storages: list | None = None) -> list[torch.Size]:
    shapes = []

    def pack(tensor):
        shapes.append(tensor.shape)
        if storages is not None:
            storages.append(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return shapes


def test_saves_no_tokens_by_vocab_tensor():
    leaves, targets, _ = inputs(torch.float32)
    saved = saved_tensor_sizes(lambda: chunked_token_logps(*leaves, targets, chunk_size=4))
    assert max(s.numel() for s in saved) == VOCAB * HIDDEN  # the head weight itself
    # Besides the parameters themselves, nothing with a vocab dimension (no chunk x vocab).
    with_vocab = [s for s in saved if VOCAB in s]
    assert sorted(with_vocab) == [torch.Size([VOCAB]), torch.Size([VOCAB, HIDDEN])]
    plain = saved_tensor_sizes(lambda: plain_token_logps(*leaves, targets))
    assert torch.Size([TOKENS, VOCAB]) in plain  # the hook does see such tensors


def test_fast_forward_keeps_no_logits_for_backward():
    """Whole station on a tiny Llama: the padded path saves [rows, width, vocab] logits,
    the fast path nothing with a vocab dimension but the (tied) embedding matrix itself."""
    vocab = 2000
    model = tiny_llama(vocab_size=vocab)
    pairs = random_pairs(6, vocab=vocab, seed=1)
    device = torch.device("cpu")
    station = FastForward(0, chunk_size=16, log=lambda line: None)
    station(model, pairs, device)  # first call: the no-grad probe, outside the hook
    storages = []
    fast = saved_tensor_sizes(lambda: station(model, pairs, device), storages)
    padded = saved_tensor_sizes(lambda: PaddedForward(0)(model, pairs, device))
    scored = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    weight = model.get_output_embeddings().weight.untyped_storage().data_ptr()
    with_vocab = [(s, ptr) for s, ptr in zip(fast, storages) if vocab in s]
    # The weight (and a transposed view of it, from the model's head applied to its empty
    # logits_to_keep selection): no copies, no activations.
    assert with_vocab and all(ptr == weight for _, ptr in with_vocab), with_vocab
    assert max(s.numel() for s in padded) >= scored * vocab


class LargestOutput(torch.utils._python_dispatch.TorchDispatchMode):
    """The largest tensor any op creates (forward and backward), by element count, except
    tensors shaped like ``skip`` (the head weight's own gradient)."""

    def __init__(self, skip: torch.Size):
        super().__init__()
        self.skip, self.largest = skip, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(tensor, torch.Tensor) and tensor.shape != self.skip:
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("vocab", [4096, 16384])
def test_default_chunk_holds_the_same_logits_at_any_vocabulary(monkeypatch, vocab):
    """With the default chunk, the largest block built in forward and backward is close to
    the budget's 2**18 values at both vocabularies (at most 64 and 16 tokens a chunk; chunks
    are cut to equal sizes, 4 x 50 and 13 x 15-16 of 200); the plain path's block would be
    200 x vocab."""
    from preftune.forward.fast import chunked_logps

    monkeypatch.setattr(chunked_logps, "CHUNK_ELEMENTS", 2 ** 18)
    tokens, hidden_size = 200, 8
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    mode = LargestOutput(skip=weight.shape)
    with mode:
        chunked_logps.chunked_token_logps(hidden, weight, None, targets).sum().backward()
    assert chunked_logps.auto_chunk_size(vocab) == 2 ** 18 // vocab
    assert 0.75 * 2 ** 18 <= mode.largest <= 2 ** 18


def test_auto_chunk_size_keeps_a_floor_of_rows():
    from preftune.forward.fast.chunked_logps import CHUNK_ELEMENTS, auto_chunk_size

    assert auto_chunk_size(32_000) == CHUNK_ELEMENTS // 32_000 == 262
    assert auto_chunk_size(128_256) == 65
    assert auto_chunk_size(10 ** 9) == 16


def test_a_zero3_head_runs_as_the_head_module_forward():
    """DeepSpeed ZeRO-3 gathers a partitioned head weight in the head module's hooks: for
    such a parameter (DeepSpeed marks it with ``ds_id``) the chunked head goes through the
    module call, and leaves a forward some hook installed on the instance in place; other
    heads are read directly (FSDP2 must not see the head module called twice a step)."""
    from preftune.forward.fast.forward import head_logps

    leaves, targets, _ = inputs(torch.float32)
    head = torch.nn.Linear(HIDDEN, VOCAB)
    with torch.no_grad():
        head.weight.copy_(leaves[1]), head.bias.copy_(leaves[2])
    calls = []
    head.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    hidden = leaves[0].detach()
    head_logps(head, hidden, targets, 5, HeadTransform())
    assert calls == []
    head.weight.ds_id = 0
    got = head_logps(head, hidden, targets, 5, HeadTransform())
    assert calls == [hidden.shape] and "forward" not in head.__dict__
    # The same function on the same inputs: equal to the bit on one machine.
    assert torch.equal(got, chunked_token_logps(hidden, head.weight, head.bias, targets, 5))

    def hooked_forward(states):  # e.g. accelerate's device-alignment hook
        return head.__class__.forward(head, states)

    head.forward = hooked_forward
    head_logps(head, hidden, targets, 5, HeadTransform())
    assert head.forward is hooked_forward and len(calls) == 2

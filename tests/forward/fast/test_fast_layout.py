"""Row layout by hand: ids, positions, which keys each query sees, which hidden state
scores which token; packing and length grouping."""

from __future__ import annotations

from preftune.batching.plan import BatchPlan
from preftune.forward.fast.grouping import LengthGroupedPlan, length_grouped_order
from preftune.forward.fast.layout import build_layout, pack_rows
from preftune.types import TokenizedPair

PAIR = TokenizedPair(0, prompt_ids=[11, 12, 13], chosen_ids=[21, 22], rejected_ids=[31, 32, 33])


def test_prefix_shared_row():
    """[p p p | c c | r r r]: rejected restart at position 3 and skip the chosen keys."""
    layout = build_layout([PAIR], pad_token_id=0, packing=False)
    assert layout.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 32, 33]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    allowed = layout.attention_allowed()[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],  # chosen 21
        [1, 1, 1, 1, 1, 0, 0, 0],  # chosen 22
        [1, 1, 1, 0, 0, 1, 0, 0],  # rejected 31: prompt and itself
        [1, 1, 1, 0, 0, 1, 1, 0],
        [1, 1, 1, 0, 0, 1, 1, 1],
    ]
    # chosen 21 and rejected 31 are both scored by the prompt's last state (column 2).
    scores = list(zip(layout.score_index.tolist(), layout.targets.tolist(),
                      layout.side.tolist(), layout.token.tolist()))
    assert scores == [(2, 21, 0, 0), (3, 22, 0, 1), (2, 31, 1, 0), (5, 32, 1, 1),
                      (6, 33, 1, 2)]


def test_unshared_rows_are_the_padded_layout():
    layout = build_layout([PAIR], pad_token_id=0, prefix_sharing=False, packing=False)
    assert layout.input_ids.tolist() == [[11, 12, 13, 21, 22, 0], [11, 12, 13, 31, 32, 33]]
    assert layout.padding_mask().tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert layout.score_index.tolist() == [2, 3, 6 + 2, 6 + 3, 6 + 4]


def test_packed_row_is_block_diagonal_and_padding_sees_itself():
    short = TokenizedPair(1, prompt_ids=[14], chosen_ids=[23], rejected_ids=[34])
    layout = build_layout([PAIR, short, short], pad_token_id=0, max_tokens_per_row=10)
    # First-fit decreasing, budget 10: PAIR (8) fills row 0; both shorts (3 + 3) row 1.
    assert layout.input_ids.shape == (2, 8)
    assert layout.input_ids.tolist()[1] == [14, 23, 34, 14, 23, 34, 0, 0]
    assert layout.position_ids.tolist()[1] == [0, 1, 1, 0, 1, 1, 0, 0]
    allowed = layout.attention_allowed()[1, 0].int()
    assert allowed[3].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # second pair's prompt
    assert allowed[5].tolist() == [0, 0, 0, 1, 0, 1, 0, 0]  # its rejected token
    assert allowed[6].tolist() == [0, 0, 0, 0, 0, 0, 1, 0]  # padding: itself
    assert allowed.sum(-1).min() >= 1  # no fully masked query row
    assert layout.tokens == 8 + 6


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 4, 2], budget=7) == [[0, 3], [2, 1]]
    assert pack_rows([9, 3], budget=4) == [[0], [1]]  # too long: a row of its own
    assert pack_rows([3, 3, 3], budget=None) == [[0], [1], [2]]  # default: the longest


def test_length_grouped_order_is_a_seeded_grouped_permutation():
    lengths = [(i * 37) % 101 for i in range(230)]
    order = length_grouped_order(lengths, batch_size=4, seed=3, mega_batch=10)
    assert sorted(order) == list(range(230))
    assert order == length_grouped_order(lengths, batch_size=4, seed=3, mega_batch=10)
    for start in range(0, 230, 40):
        block = [lengths[i] for i in order[start:start + 40]]
        assert block == sorted(block, reverse=True)
    assert order != length_grouped_order(lengths, batch_size=4, seed=4, mega_batch=10)


def test_length_grouped_plan_keeps_the_batch_plan_contract():
    lengths = tuple((i * 7) % 23 + 1 for i in range(50))
    plan = LengthGroupedPlan(50, 4, 2, 1, seed=5, lengths=lengths)
    base = BatchPlan(50, 4, 2, 1, seed=5)
    assert plan.steps_per_epoch == base.steps_per_epoch
    seen = [i for step in range(plan.steps_per_epoch) for i in plan.step_indices(step)]
    assert sorted(seen) == list(range(50))
    # A pure function of its fields: a resumed run rebuilds the same plan.
    assert plan.micro_batches(1) == LengthGroupedPlan(50, 4, 2, 1, seed=5,
                                                      lengths=lengths).micro_batches(1)
    assert plan.order(0) != plan.order(1)

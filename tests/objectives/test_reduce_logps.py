"""The reduction station: sum, mean, and SamPO's seeded down-sampling."""

from __future__ import annotations

import pytest
import torch

from objective_fixtures import padded, sequence_logps
from preftune.forward.reduction import reduce_logps, sampo_keep_masks
from preftune.types import SequenceLogps


def test_sum_and_mean_ignore_padding():
    """Rows [-1, -2] and [-3] (padding holds garbage): sums [-3, -3], means [-1.5, -3];
    lengths [2, 1]."""
    policy = sequence_logps([[-1, -2], [-3]], [[-4], [-1, -1, -1, -1]])
    total = reduce_logps("sum", policy)
    mean = reduce_logps("mean", policy)
    torch.testing.assert_close(total.chosen, torch.tensor([-3.0, -3.0], dtype=torch.float64))
    torch.testing.assert_close(mean.chosen, torch.tensor([-1.5, -3.0], dtype=torch.float64))
    torch.testing.assert_close(mean.rejected, torch.tensor([-4.0, -1.0], dtype=torch.float64))
    assert total.chosen_lengths.tolist() == [2, 1]
    assert total.rejected_lengths.tolist() == [1, 4]
    assert total.ref_chosen is None


def test_reference_is_reduced_like_the_policy():
    """Reference rows [-2, -2] and [-5]: sums [-4, -5], means [-2, -5]."""
    policy = sequence_logps([[-1, -2], [-3]], [[-4], [-1]])
    reference = sequence_logps([[-2, -2], [-5]], [[-1], [-1]])
    assert reduce_logps("sum", policy, reference).ref_chosen.tolist() == [-4.0, -5.0]
    assert reduce_logps("mean", policy, reference).ref_chosen.tolist() == [-2.0, -5.0]


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce_logps("median", sequence_logps([[-1]], [[-1]]))


def ragged_masks(chosen_lengths, rejected_lengths, chosen_width=None, rejected_width=None):
    _, chosen_mask = padded([[0.0] * n for n in chosen_lengths], chosen_width)
    _, rejected_mask = padded([[0.0] * n for n in rejected_lengths], rejected_width)
    return chosen_mask, rejected_mask


def test_sampo_keeps_min_length_on_the_longer_side_and_everything_on_the_shorter():
    chosen_lengths, rejected_lengths = [9, 2, 6, 4], [3, 12, 6, 1]
    chosen_mask, rejected_mask = ragged_masks(chosen_lengths, rejected_lengths)
    keep_chosen, keep_rejected = sampo_keep_masks(chosen_mask, rejected_mask, [5, 6, 7, 8],
                                                  seed=0, step=0)
    for row, (n_w, n_l) in enumerate(zip(chosen_lengths, rejected_lengths)):
        assert int(keep_chosen[row].sum()) == min(n_w, n_l)
        assert int(keep_rejected[row].sum()) == min(n_w, n_l)
        # Only real tokens are kept; the shorter side (both, when equal) keeps all of them.
        assert not (keep_chosen[row] & ~chosen_mask[row]).any()
        assert not (keep_rejected[row] & ~rejected_mask[row]).any()
        if n_w <= n_l:
            assert torch.equal(keep_chosen[row], chosen_mask[row])
        if n_l <= n_w:
            assert torch.equal(keep_rejected[row], rejected_mask[row])


def test_sampo_uses_the_same_positions_for_policy_and_reference():
    """With reference == policy (distinct random values), the two down-sampled sums agree
    only if they cover the same positions; they also equal the masked sums over the drawn
    positions."""
    values = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rejected = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    chosen_mask, rejected_mask = ragged_masks([10, 7, 2], [4, 2, 4])
    policy = SequenceLogps(values, chosen_mask, rejected, rejected_mask)
    reference = SequenceLogps(values.clone(), chosen_mask, rejected.clone(), rejected_mask)
    reduced = reduce_logps("sampo", policy, reference, example_ids=[1, 2, 3], seed=4, step=9)
    torch.testing.assert_close(reduced.ref_chosen, reduced.chosen)
    torch.testing.assert_close(reduced.ref_rejected, reduced.rejected)
    keep_chosen, _ = sampo_keep_masks(chosen_mask, rejected_mask, [1, 2, 3], seed=4, step=9)
    torch.testing.assert_close(reduced.chosen, (values * keep_chosen).sum(-1))
    # Lengths stay the pre-sampling counts (R-DPO's length term and the metrics use them).
    assert reduced.chosen_lengths.tolist() == [10, 7, 2]


def draw(example_ids, seed, step, chosen_lengths=(40, 3), rejected_lengths=(10, 30)):
    masks = ragged_masks(list(chosen_lengths), list(rejected_lengths))
    return sampo_keep_masks(*masks, example_ids, seed=seed, step=step)


def test_sampo_draw_is_reproducible_and_changes_with_step_and_seed():
    first = draw([100, 101], seed=0, step=7)
    again = draw([100, 101], seed=0, step=7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # 10 of 40 positions: C(40, 10) ~ 8e8 possible draws, so a repeat would be a bug.
    assert not torch.equal(draw([100, 101], seed=0, step=8)[0][0], first[0][0])
    assert not torch.equal(draw([100, 101], seed=1, step=7)[0][0], first[0][0])
    assert not torch.equal(draw([102, 101], seed=0, step=7)[0][0], first[0][0])


def test_sampo_draw_does_not_depend_on_the_rest_of_the_batch():
    """Example 42 (chosen 40 tokens, rejected 10) at row 0 of a batch of 2 and at row 2 of a
    wider batch of 3 with other neighbours: the same positions are kept."""
    alone_chosen, _ = sampo_keep_masks(*ragged_masks([40, 5], [10, 9]), [42, 1], seed=3, step=2)
    other_chosen, _ = sampo_keep_masks(*ragged_masks([6, 50, 40], [20, 2, 10], 50, 20),
                                       [7, 8, 42], seed=3, step=2)
    assert torch.equal(alone_chosen[0].nonzero(), other_chosen[2].nonzero())


def test_sampo_needs_one_example_id_per_row():
    """Without ids no row would be down-sampled: SamPO would silently be DPO."""
    with pytest.raises(ValueError, match="one example id per row"):
        sampo_keep_masks(*ragged_masks([4, 2], [1, 3]), [], seed=0, step=0)

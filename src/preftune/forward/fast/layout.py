"""How a batch of pairs is laid out in rows: prefix sharing, packing, masks, positions.

A *unit* is what one sequence of the padded layout becomes:

- without prefix sharing, ``[prompt | chosen]`` and ``[prompt | rejected]`` (two units);
- with prefix sharing, ``[prompt | chosen | rejected]`` (one unit). The rejected tokens see
  the prompt and themselves, not the chosen tokens, and their position ids continue from
  the prompt (the first rejected token sits at ``len(prompt)``, like the first chosen one),
  so with rotary or absolute positions each completion sees exactly the sequence it would
  see alone. The first rejected token is scored from the prompt's last hidden state.

Rows hold one unit each, or with packing several, first-fit-decreasing up to a token
budget, with a block-diagonal mask and position ids restarting per unit. Every token
carries a unit id and a branch (0 prompt, 1 chosen, 2 rejected); query q may attend key
k iff ``k <= q``, same unit, and ``branch[k] in (0, branch[q])``. That rule is one line
for a FlexAttention ``mask_mod`` or, per unit, a varlen/cascade split, for when dense
``[rows, 1, T, T]`` masks get too large on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from preftune.types import TokenizedPair

PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3


@dataclass
class Layout:
    """Token ids and bookkeeping for one forward pass (CPU tensors; moved by the caller).

    ``score_index[i]`` is the flat position ``row * width + column`` whose hidden state
    scores ``targets[i]``; ``side[i]`` (0 chosen, 1 rejected), ``pair[i]`` and
    ``token[i]`` say where that log-prob goes in the completion-aligned output.
    """

    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # [rows, width]
    unit_ids: torch.Tensor  # [rows, width], -1 at padding
    branches: torch.Tensor  # [rows, width]
    score_index: torch.Tensor  # [N]
    targets: torch.Tensor  # [N]
    side: torch.Tensor  # [N]
    pair: torch.Tensor  # [N]
    token: torch.Tensor  # [N]
    num_pairs: int
    chosen_width: int
    rejected_width: int

    @property
    def tokens(self) -> int:
        """Non-padding tokens the model body processes."""
        return int((self.unit_ids >= 0).sum())

    def padding_mask(self) -> torch.Tensor:
        """2-D ``[rows, width]`` mask for layouts without custom attention (one unit per row,
        no shared prefix): the plain padded layout."""
        return (self.unit_ids >= 0).long()

    def attention_allowed(self, device: Optional[torch.device] = None) -> torch.Tensor:
        """Boolean ``[rows, 1, width, width]``, True where query q may attend key k."""
        unit, branch = self.unit_ids.to(device), self.branches.to(device)
        width = unit.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=unit.device).tril()
        same_unit = unit[:, :, None] == unit[:, None, :]
        visible = (branch[:, None, :] == PROMPT) | (branch[:, None, :] == branch[:, :, None])
        allowed = causal & same_unit & visible
        # Padding queries (unit -1, branch PADDING) see earlier padding, themselves at
        # least: a fully masked row would give NaN in SDPA, and NaN * 0 in backward is NaN.
        return allowed[:, None]


def _unit(pair_index: int, pair: TokenizedPair, prefix_sharing: bool) -> list[dict]:
    """The unit(s) of one pair, each ``{ids, positions, branches, scores}`` where a score
    is ``(offset of the scoring hidden state, target id, side, token index)``."""
    prompt = list(pair.prompt_ids)
    if not prompt:
        # The first completion token is scored from the prompt's last hidden state.
        raise ValueError(f"example {pair.example_id}: empty prompt (the data station adds BOS "
                         "or keeps at least one prompt token)")
    p = len(prompt)

    def completion(ids, side, offset):
        """Scores of one completion placed at ``offset`` after the prompt's tokens."""
        scorers = [p - 1] + [offset + k for k in range(len(ids) - 1)]
        return [(s, t, side, k) for k, (s, t) in enumerate(zip(scorers, ids))]

    chosen, rejected = list(pair.chosen_ids), list(pair.rejected_ids)
    if prefix_sharing:
        c = len(chosen)
        return [{"ids": prompt + chosen + rejected,
                 "positions": list(range(p + c)) + list(range(p, p + len(rejected))),
                 "branches": [PROMPT] * p + [CHOSEN] * c + [REJECTED] * len(rejected),
                 "scores": completion(chosen, 0, p) + completion(rejected, 1, p + c),
                 "pair": pair_index}]
    return [{"ids": prompt + ids, "positions": list(range(p + len(ids))),
             "branches": [PROMPT] * p + [branch] * len(ids),
             "scores": completion(ids, side, p), "pair": pair_index}
            for ids, side, branch in ((chosen, 0, CHOSEN), (rejected, 1, REJECTED))]


def pack_rows(lengths: Sequence[int], budget: Optional[int]) -> list[list[int]]:
    """First-fit decreasing: unit indices per row, each row's total <= budget (a unit
    longer than the budget gets a row of its own). ``budget=None`` packs up to the longest
    unit, so no row is wider than the padded layout's."""
    cap = budget or max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(cap - lengths[i])
    return rows


def build_layout(pairs: Sequence[TokenizedPair], pad_token_id: int, *,
                 prefix_sharing: bool = True, packing: bool = True,
                 max_tokens_per_row: Optional[int] = None) -> Layout:
    units = [u for i, pair in enumerate(pairs) for u in _unit(i, pair, prefix_sharing)]
    if packing:
        rows = pack_rows([len(u["ids"]) for u in units], max_tokens_per_row)
    else:
        rows = [[i] for i in range(len(units))]
    width = max(sum(len(units[i]["ids"]) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    unit_ids = torch.full(shape, -1, dtype=torch.long)
    branches = torch.full(shape, PADDING, dtype=torch.long)
    scores = []  # (flat index, target, side, pair, token)
    for r, row in enumerate(rows):
        column = 0
        for i in row:
            u, n = units[i], len(units[i]["ids"])
            input_ids[r, column:column + n] = torch.tensor(u["ids"])
            position_ids[r, column:column + n] = torch.tensor(u["positions"])
            unit_ids[r, column:column + n] = i
            branches[r, column:column + n] = torch.tensor(u["branches"])
            scores += [(r * width + column + s, t, side, u["pair"], k)
                       for s, t, side, k in u["scores"]]
            column += n
    columns = torch.tensor(scores, dtype=torch.long).reshape(-1, 5)  # [] if nothing is scored
    index, targets, side, pair, token = columns.unbind(-1)
    return Layout(input_ids, position_ids, unit_ids, branches, index, targets, side, pair,
                  token, num_pairs=len(pairs),
                  chosen_width=max(len(p.chosen_ids) for p in pairs),
                  rejected_width=max(len(p.rejected_ids) for p in pairs))


def scatter_completions(logps: torch.Tensor, layout: Layout
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[N]`` scored log-probs -> completion-aligned chosen/rejected tensors and masks,
    shaped as :class:`preftune.forward.logps.PaddedForward` returns them (0 at padding)."""
    device = logps.device
    side, pair, token = (t.to(device) for t in (layout.side, layout.pair, layout.token))
    out = []
    for which, width in ((0, layout.chosen_width), (1, layout.rejected_width)):
        keep = side == which
        values = torch.zeros(layout.num_pairs, width, dtype=logps.dtype, device=device)
        values = values.index_put((pair[keep], token[keep]), logps[keep])
        mask = torch.zeros(layout.num_pairs, width, dtype=torch.bool, device=device)
        mask[pair[keep], token[keep]] = True
        out += [values, mask]
    return out[0], out[1], out[2], out[3]

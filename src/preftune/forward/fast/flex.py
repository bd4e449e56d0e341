"""FlexAttention block masks for the fast path's layouts (prefix sharing, packing).

The dense path hands SDPA a ``[rows, 1, T, T]`` boolean mask: T squared bytes per row, and
a mask that keeps SDPA off its flash kernels. FlexAttention takes the same rule as a
``mask_mod`` over (row, query, key) and skips the blocks where it allows nothing: a packed
row of several pairs costs attention on its diagonal blocks only.

The rule is :meth:`Layout.attention_allowed`'s: query q may attend key k iff ``k <= q``,
same unit, and the key is a prompt token or on the query's own branch. Padding queries
(unit -1) see earlier padding, so no row is empty.

transformers runs FlexAttention through ``torch.compile``. On CPU, torch has no backward
for it (forward only: a reference pass); the probe in fast/forward.py tries a backward
before a policy uses it and falls back to the dense mask where there is none.
"""

from __future__ import annotations

import torch

from preftune.forward.fast.layout import PROMPT, Layout

FLEX = "flex_attention"


def available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def mask_mod(layout: Layout, device: torch.device):
    """The layout's attention rule as a FlexAttention ``mask_mod(b, h, q, k)``."""
    unit = layout.unit_ids.to(device)
    branch = layout.branches.to(device)

    def allowed(b, h, q, k):
        same_unit = unit[b, q] == unit[b, k]
        visible = (branch[b, k] == PROMPT) | (branch[b, k] == branch[b, q])
        return (k <= q) & same_unit & visible

    return allowed


def block_mask(layout: Layout, device: torch.device):
    """A ``BlockMask`` for the layout's rows (one per row, shared by every head)."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, width = layout.input_ids.shape
    return create_block_mask(mask_mod(layout, device), rows, None, width, width,
                             device=str(device))

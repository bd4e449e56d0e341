"""Batching station: tokenized pairs -> the order and grouping of micro-batches (plan.py).

The plan is pure (indices only) so resuming, sharding across processes and gradient
accumulation all read the same sequence of batches."""

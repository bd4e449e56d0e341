"""Forward station: batches -> per-token log-probs -> per-sequence values.

- logps.py: the padded reference path (one row per sequence, the model's own attention).
- fast/: the default path: completion-only chunked log-probs (no full-vocabulary logits),
  each prompt computed once, packed rows without padding.
- reduction.py: per-token log-probs -> the sequence statistic an objective reads (sum, mean,
  SamPO's down-sampled sum)."""

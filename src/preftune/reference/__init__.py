"""Reference station: the frozen model an objective compares against.

- build.py: one place that builds it (a copy of the policy, the LoRA base, or another model).
- cache.py: its log-probs computed once per pair and stored, so training loads no reference."""

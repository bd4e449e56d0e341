"""preftune: preference fine-tuning for Hugging Face causal language models.

The pipeline, one module per station: data/ (rows -> tokenized pairs), batching, forward
(per-token log-probs; fast/ for the chunked, prefix-shared, packed path), reduction,
objectives/, trainer, metrics. assemble builds a run's parts from its config (the one
place that does), trainer runs the loop over them, and scoring is the held-out scorer
training's evaluation and ``preftune eval`` share. ``preftune --help`` for the command line.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``preftune.train`` and ``preftune.TrainOutput`` (api.py), imported on first use so
    that ``import preftune`` stays light."""
    if name in ("train", "TrainOutput"):
        from preftune import api

        return getattr(api, name)
    raise AttributeError(f"module 'preftune' has no attribute {name!r}")

"""Training station: the loop over assembled parts (trainer.py) and what it leans on.

- optim.py: optimizers and schedules named by ``optim``/``lr_scheduler_type``.
- guard.py: finite-state checks after each step; saving.py / checkpoint.py / final_save.py /
  resume.py: when and how a run is written and continued; signals.py / pauses.py: stopping.
- scoring.py: the one scorer for held-out pairs (training's evaluation and ``preftune eval``).
- metrics.py / trackers.py: the metric rows and where they go; rounds.py: iterative rounds."""

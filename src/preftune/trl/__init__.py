"""TRL 1.16's trainers as a drop-in: change the import, keep the code.

    from preftune.trl import CPOConfig, CPOTrainer   # was: from trl import ...

``CPOConfig``/``DPOConfig``/``ORPOConfig``/``KTOConfig`` take TRL's fields with TRL's
defaults (config.py); mapping.py reads them into preftune's config with TRL's meanings and
refuses, by name, what preftune cannot honour; trainers.py has the trainers with TRL's
signatures; cli.py the ``preftune cpo|dpo|orpo|kto`` commands (TRL's script flags).
docs/coming-from-trl.md lists every difference kept on purpose.
"""

from preftune.trl.config import CPOConfig, DPOConfig, KTOConfig, ORPOConfig
from preftune.trl.mapping import describe, resolve, to_preftune
from preftune.trl.trainers import CPOTrainer, DPOTrainer, KTOTrainer, ORPOTrainer

__all__ = ["CPOConfig", "CPOTrainer", "DPOConfig", "DPOTrainer", "KTOConfig", "KTOTrainer",
           "ORPOConfig", "ORPOTrainer", "describe", "resolve", "to_preftune"]

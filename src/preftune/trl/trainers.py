"""TRL 1.16's ``CPOTrainer``, ``DPOTrainer``, ``ORPOTrainer`` and ``KTOTrainer``, with its
constructor signatures, over preftune's Trainer.

    from preftune.trl import CPOConfig, CPOTrainer     # was: from trl import ...
    trainer = CPOTrainer(model=model, args=CPOConfig(output_dir="out"),
                         processing_class=tokenizer, train_dataset=dataset)
    trainer.train(); trainer.evaluate(); trainer.save_model(); trainer.state.log_history

The config is read with TRL's meanings (preftune.trl.mapping) and refused, by field, where
preftune cannot honour it; so are constructor arguments preftune has no use for
(``data_collator``, ``callbacks``, ``compute_metrics`` ...), when given. Construction
checks the config, loads the model (if named) and tokenizes the data; the run's folder
is claimed, and the optimizer built, at the first ``train()`` or ``evaluate()``.
Differences from TRL on purpose: docs/coming-from-trl.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from preftune.config import ConfigError
from preftune.train.scoring import score_pairs
from preftune.trl.config import CPOConfig, DPOConfig, KTOConfig, ORPOConfig
from preftune.trl.mapping import resolve


@dataclass
class TrainerState:
    """The part of transformers' ``TrainerState`` TRL users read."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    log_history: list = field(default_factory=list)


class PreferenceTrainer:
    """What the four trainers share; each subclass states TRL's signature."""

    config_class: type = CPOConfig
    short_name: str = "CPO"

    def _setup(self, model, args, train_dataset, eval_dataset, processing_class,
               peft_config, ref_model=None, unsupported: Optional[dict] = None) -> None:
        from preftune.api import prepare

        refuse_arguments(type(self).__name__, unsupported or {})
        if model is None:
            raise ConfigError(f"{type(self).__name__}: give a model (an object or a name)")
        if train_dataset is None:
            raise ConfigError(f"{type(self).__name__}: give a train_dataset")
        self.args = args if args is not None else self.config_class(
            output_dir=f"{str(getattr(model, 'name_or_path', model)).split('/')[-1]}-"
                       f"{self.short_name}")
        if not isinstance(self.args, self.config_class):
            raise ConfigError(f"args: expected preftune.trl.{self.config_class.__name__} (the "
                              f"same fields as TRL's), got {type(self.args).__name__}")
        resolution = resolve(self.args)
        for note in resolution.notes:
            print(f"preftune: {note}")
        self._run = prepare(resolution.config, model=model, tokenizer=processing_class,
                            train_dataset=train_dataset, eval_dataset=eval_dataset,
                            ref_model=ref_model, peft_config=peft_config)
        if getattr(self.args, "pad_token", None) is not None:  # DPOConfig's, deprecated
            self._run.tokenizer.pad_token = self.args.pad_token
        self.model, self.processing_class = self._run.model, self._run.tokenizer
        self.ref_model, self.train_dataset, self.eval_dataset = ref_model, train_dataset, eval_dataset
        self.state = TrainerState()
        self._trainer = None
        self._trained = False

    @property
    def config(self):
        """The preftune config this trainer runs."""
        return self._run.config

    @property
    def accelerator(self):
        return self._preftune().accelerator

    def _preftune(self):
        """preftune's Trainer, built once (claims the output folder, builds the optimizer)."""
        if self._trainer is None:
            from preftune.api import build_trainer

            self._trainer = build_trainer(self._run)
            self.state.max_steps = self._trainer.total_steps
        return self._trainer

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """Trains to the end and saves the model in ``output_dir`` (preftune always does).
        Returns transformers' ``TrainOutput(global_step, training_loss, metrics)``."""
        from transformers.trainer_utils import TrainOutput

        from preftune.trl.mapping import resume_flag

        refuse_arguments("train()", {"trial": trial, **kwargs})
        if self._trained:
            raise RuntimeError("train() ran already; build a new trainer to train again")
        if resume_from_checkpoint is not None:
            t = self._run.config.training
            t.resume = resume_flag(resume_from_checkpoint, t.output_dir)
        start = time.perf_counter()
        trainer = self._preftune()
        result = trainer.train()
        seconds = time.perf_counter() - start
        self._trained = True
        self.model = trainer.accelerator.unwrap_model(trainer.model)
        steps_per_epoch = trainer.plan.steps_per_epoch
        self.state.global_step = result.steps
        self.state.epoch = round(result.steps / steps_per_epoch, 4)
        history = read_history(Path(result.output_dir) / "metrics.jsonl")
        training_loss = mean_loss(history)
        metrics = {"train_runtime": round(seconds, 4),
                   "train_samples_per_second": round(
                       result.steps * trainer.plan.global_batch / seconds, 3),
                   "train_steps_per_second": round(result.steps / seconds, 3),
                   "train_loss": training_loss, "epoch": self.state.epoch}
        self.state.log_history = history + [{**metrics, "step": result.steps}]
        return TrainOutput(result.steps, training_loss, metrics)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Metrics over ``eval_dataset`` (default: the trainer's), ``eval_*`` as TRL names
        them; a dict of datasets is scored set by set as ``eval_<name>_*``, as in TRL."""
        if isinstance(eval_dataset, Mapping):
            metrics = {}
            for name, data in eval_dataset.items():
                metrics.update(self.evaluate(data, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        pairs = self._run.eval_pairs if eval_dataset is None else self._pairs(eval_dataset)
        if not pairs:
            raise ValueError("Trainer: evaluation requires an eval_dataset.")
        trainer = self._preftune()
        batch = self._run.config.training.per_device_eval_batch_size
        start = time.perf_counter()
        means = score_pairs(trainer.parts, pairs, batch)
        seconds = time.perf_counter() - start
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in means.items()}
        metrics.update({f"{metric_key_prefix}_runtime": round(seconds, 4),
                        f"{metric_key_prefix}_samples_per_second": round(len(pairs) / seconds, 3),
                        f"{metric_key_prefix}_steps_per_second":
                            round(math.ceil(len(pairs) / batch) / seconds, 3),
                        "epoch": self.state.epoch})
        self.state.log_history.append({**metrics, "step": self.state.global_step})
        return metrics

    def _pairs(self, data) -> list:
        """Rows given to ``evaluate`` -> pairs, as the trainer's own eval rows became pairs."""
        from preftune.api import rows_of, tokenize

        run = self._run
        return tokenize(rows_of(data, "eval_dataset"), run.tokenizer, run.config, run.method,
                        "eval", lambda *_: None)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """The model and tokenizer into ``output_dir`` (default: the run's). After
        ``train()`` the run's folder holds them already, with the config and a model card."""
        run_dir = Path(self._run.config.training.output_dir)
        target = Path(output_dir) if output_dir else run_dir
        if self._trained and target.resolve() == run_dir.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(target, safe_serialization=True)
        self.processing_class.save_pretrained(target)

    def push_to_hub(self, commit_message: Optional[str] = "End of training", **kwargs) -> str:
        """The model and tokenizer to ``hub_model_id`` (default: the output folder's name);
        with ``push_to_hub`` set, the final save has pushed them already."""
        t = self._run.config.training
        repo = t.hub_model_id or Path(t.output_dir).name
        if not (self._trained and t.push_to_hub):
            self.model.push_to_hub(repo, commit_message=commit_message)
            self.processing_class.push_to_hub(repo, commit_message=commit_message)
        return repo


def refuse_arguments(where: str, given: dict) -> None:
    """Arguments of TRL's signatures that preftune has no use for: an error when given."""
    for name, value in given.items():
        if value is not None and value != (None, None):
            raise ConfigError(f"{where}: {name} is not supported by preftune (it runs its own "
                              "loop, data batching and metrics); leave it unset")


def read_history(path: Path) -> list[dict]:
    """metrics.jsonl as TRL's ``log_history``: the training and evaluation rows, with the
    non-finite numbers the log writes as strings ("nan") read back as floats."""
    from preftune.train.metrics import read_jsonl

    if not path.is_file():
        return []
    rows = []
    for record in read_jsonl(path):
        if "loss" in record or any(key.startswith("eval_") for key in record):
            rows.append({key: float(value) if value in ("nan", "inf", "-inf") else value
                         for key, value in record.items()})
    return rows


def mean_loss(history: list[dict]) -> float:
    """The mean training loss over the run, each logged window weighted by its steps."""
    total = steps = 0.0
    previous = 0
    for row in history:
        if "loss" in row:
            span = row["step"] - previous
            total, steps, previous = total + row["loss"] * span, steps + span, row["step"]
    return total / steps if steps else float("nan")


class CPOTrainer(PreferenceTrainer):
    """TRL 1.16's ``trl.experimental.cpo.CPOTrainer``: CPO, SimPO, CPO-SimPO, and hinge and
    IPO without a reference model, as ``CPOConfig.loss_type`` and ``cpo_alpha`` say."""

    config_class, short_name = CPOConfig, "CPO"

    def __init__(self, model=None, args: Optional[CPOConfig] = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, model_init=None,
                 callbacks=None, optimizers=(None, None), preprocess_logits_for_metrics=None,
                 peft_config=None, compute_metrics=None):
        self._setup(model, args, train_dataset, eval_dataset, processing_class, peft_config,
                    unsupported={"data_collator": data_collator, "model_init": model_init,
                                 "callbacks": callbacks, "optimizers": optimizers,
                                 "preprocess_logits_for_metrics": preprocess_logits_for_metrics,
                                 "compute_metrics": compute_metrics})


class ORPOTrainer(PreferenceTrainer):
    """TRL 1.16's ``trl.experimental.orpo.ORPOTrainer``."""

    config_class, short_name = ORPOConfig, "ORPO"

    def __init__(self, model=None, args: Optional[ORPOConfig] = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, model_init=None,
                 callbacks=None, optimizers=(None, None), preprocess_logits_for_metrics=None,
                 peft_config=None, compute_metrics=None):
        self._setup(model, args, train_dataset, eval_dataset, processing_class, peft_config,
                    unsupported={"data_collator": data_collator, "model_init": model_init,
                                 "callbacks": callbacks, "optimizers": optimizers,
                                 "preprocess_logits_for_metrics": preprocess_logits_for_metrics,
                                 "compute_metrics": compute_metrics})


class DPOTrainer(PreferenceTrainer):
    """TRL 1.16's ``trl.DPOTrainer``. ``ref_model`` None: a frozen copy of the starting
    policy, or the base model with the adapters off when training adapters."""

    config_class, short_name = DPOConfig, "DPO"

    def __init__(self, model: Any, ref_model=None, args: Optional[DPOConfig] = None,
                 data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None):
        self._setup(model, args, train_dataset, eval_dataset, processing_class, peft_config,
                    ref_model=ref_model,
                    unsupported={"data_collator": data_collator, "compute_metrics": compute_metrics,
                                 "callbacks": callbacks, "optimizers": optimizers,
                                 "quantization_config": quantization_config})


class KTOTrainer(PreferenceTrainer):
    """TRL 1.16's ``trl.KTOTrainer``: unpaired rows (prompt, completion, label), or
    preference pairs split into one desirable and one undesirable example each."""

    config_class, short_name = KTOConfig, "KTO"

    def __init__(self, model: Any, ref_model=None, args: Optional[KTOConfig] = None,
                 data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None):
        self._setup(model, args, train_dataset, eval_dataset, processing_class, peft_config,
                    ref_model=ref_model,
                    unsupported={"data_collator": data_collator, "compute_metrics": compute_metrics,
                                 "callbacks": callbacks, "optimizers": optimizers,
                                 "quantization_config": quantization_config})

"""Typed configuration shared by YAML files and the command line.

Keys are flat, as in TRL and the SimPO repositories (``beta``, ``learning_rate``,
``max_length`` ...); each belongs to exactly one section dataclass, documented by the
string under it (``preftune train --help`` and docs/config.md print those). The objectives'
hyperparameters are declared with each objective (objectives/hyperparameters.py): any
spelling a registered objective declares is a key, kept as given in
``method.hyperparameters``. A YAML file may be flat or grouped under ``model:``, ``data:``,
``method:``, ``training:``. Unknown keys are errors with a suggestion; a short list of keys
from those repositories that have no effect here (hub and logging plumbing) is accepted and
reported as ignored. This module reads values and checks their types; preftune.validation
checks what they mean, before anything loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from preftune.errors import ConfigError
from preftune.objectives.base import reserve_keys


@dataclass
class ModelConfig:
    model_name_or_path: str = "smollm2"
    """Hub id, local folder, or ``smollm2`` for the bundled SmolLM2-135M-Instruct."""
    model_revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of ``model_name_or_path`` and its tokenizer;
    a local folder has none (only ``main`` is accepted there)."""
    ref_model: Optional[str] = None
    """Reference model; default: a frozen copy of the starting policy."""
    tokenizer_name_or_path: Optional[str] = None
    """Tokenizer to use; default: the model's own."""
    torch_dtype: Optional[str] = "auto"
    """Weights' dtype. auto/null: float32 (master weights; ``bf16`` runs the matmuls in bf16
    under autocast). bfloat16 halves the weights' memory; AdamW then updates float32 master
    copies of the trainable weights (preftune.train.optim), so small updates still land. float16
    weights are refused for training, except as the frozen base of LoRA adapters."""
    attn_implementation: Optional[str] = None
    """Attention kernel of the model (eager, sdpa, flex_attention, flash_attention_2 ...);
    default: transformers' choice. flash_attention_2 needs CUDA and the flash-attn package."""
    use_flash_attention_2: bool = False
    """The SimPO repository's spelling of ``attn_implementation: flash_attention_2``."""
    trust_remote_code: bool = False
    """Run the modelling code a hub repository ships (only for repositories you trust)."""
    chat_template: Optional[str] = None
    """A Jinja chat template (or a path to one) overriding the tokenizer's."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    gradient_checkpointing_kwargs: Optional[dict] = None
    """Passed to ``gradient_checkpointing_enable``; default ``{use_reentrant: false}``."""
    precompute_ref_log_probs: bool = False
    """Compute reference log-probs once before training, cache them on disk, and train
    without a reference model in memory."""
    ref_cache_dir: Optional[str] = None
    """Where cached reference log-probs live; default ``~/.cache/preftune/reference``."""
    sync_ref_model: bool = False
    """TR-DPO (Gorbatovski et al. 2024): every ``ref_model_sync_steps`` optimizer steps the
    reference becomes ``alpha x policy + (1 - alpha) x reference`` (reference/sync.py)."""
    ref_model_mixup_alpha: float = 0.6
    """TR-DPO's alpha: the policy's share of the mixed reference weights."""
    ref_model_sync_steps: int = 512
    """TR-DPO: optimizer steps between reference updates."""
    use_peft: bool = False
    """Train LoRA adapters (peft); the reference is the base model with adapters off."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scale numerator: the adapters' output is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input."""
    lora_target_modules: Optional[Any] = "all-linear"
    """Module names (a list, or one name) that get adapters; ``all-linear``: every linear
    layer but the output head."""
    load_in_4bit: bool = False
    """QLoRA: load the base weights in 4 bits (bitsandbytes, CUDA only)."""
    merge_lora: bool = False
    """Save the merged model instead of the adapter alone."""


@dataclass
class DataConfig:
    dataset_name: Optional[str] = None
    """Hub dataset id, or a local file (jsonl/json/parquet/csv/arrow, .gz allowed) or folder."""
    dataset_config: Optional[str] = None
    """The hub dataset's configuration (subset) name."""
    dataset_train_split: str = "train"
    """Split (or file of a folder) to train on."""
    dataset_test_split: Optional[str] = None
    """Split to evaluate on; default: a test file of a folder, else none."""
    eval_dataset: Optional[str] = None
    """A separate file, folder or hub id for evaluation."""
    eval_fraction: float = 0.0
    """Hold out this fraction of the training rows (seeded) when no eval split is given."""
    dataset_mixer: Optional[dict] = None
    """SimPO/alignment-handbook style ``{dataset: fraction}``."""
    dataset_splits: Optional[list] = None
    """With ``dataset_mixer``: ``[train_split, test_split]``."""
    column_mapping: Optional[dict] = None
    """``{prompt|chosen|rejected|completion|label: source column}``; dotted paths reach
    into nested fields (``input.messages``)."""
    data_format: str = "auto"
    """auto, standard, conversational, implicit, unpaired."""
    max_length: int = 1024
    """Tokens of prompt plus completion; prompts are cut first (from the left), then
    completions (from the right), so every completion keeps at least one token."""
    max_prompt_length: Optional[int] = None
    """Longest prompt kept (cut from the left); null: half of ``max_length``. Must be below
    ``max_length``."""
    skip_bad_rows: bool = False
    """Skip rows that cannot be read (counted in a summary) instead of stopping at the first."""
    max_train_samples: Optional[int] = None
    """Use only the first this many training rows."""
    max_eval_samples: Optional[int] = None
    """Use only the first this many evaluation rows."""
    dataset_num_proc: Optional[int] = None
    """Processes that tokenize the rows (TRL's key); null: one."""
    dataset_cache_dir: Optional[str] = None
    """Where tokenized pairs are cached, keyed by the rows, tokenizer and settings; null:
    ``$PREFTUNE_TOKENIZED_CACHE``, else ``~/.cache/preftune/tokenized``."""
    streaming: bool = False
    """Read ``dataset_name`` as it streams (one .jsonl or .jsonl.gz file, or a hub dataset)
    rather than all at once: the data phase holds a few chunks of rows however many there
    are. Not with eval_fraction or dataset_mixer (use eval_dataset)."""
    tokenized_cache: bool = True
    """Reuse tokenized pairs between runs; false: tokenize every run (into a temporary
    folder, removed at exit)."""

    @property
    def prompt_limit(self) -> int:
        """``max_prompt_length``, or half of ``max_length`` when unset."""
        return self.max_length // 2 if self.max_prompt_length is None else self.max_prompt_length


@dataclass
class MethodConfig:
    method: Optional[str] = None
    """Objective name (``preftune methods`` lists them)."""
    loss_type: Union[str, list, None] = None
    """TRL's spelling: sigmoid/hinge/ipo/simpo as in its CPOConfig, with ``cpo_alpha``
    choosing cpo, simpo or cpo-simpo; ipo/hinge with a ``ref_model`` as in its DPOConfig
    (reference-based, no NLL term). Give ``method`` or ``loss_type``, not both. A list
    (``[sigmoid, bco_pair, sft]``, or ``sigmoid,bco_pair,sft`` on the command line) is a
    weighted mixture read as TRL's DPOConfig reads it (objectives/mixture.py)."""
    loss_weights: Optional[list] = None
    """Weights of a ``loss_type`` list, in its order; default 1 each."""
    use_weighting: bool = False
    """WPO (Zhou et al. 2024): weigh each pair's preference loss by the policy's own
    length-normalised, aligned probability of the pair (objectives/weighting.py)."""
    ld_alpha: Optional[float] = None
    """LD-DPO (Liu et al. 2024): log-prob tokens past the pair's shared length count
    ``ld_alpha`` times (forward/reduction.py); none: every token counts fully."""
    f_divergence_type: str = "reverse_kl"
    """f-DPO (Wang et al. 2023): the divergence whose f' scores the log-ratios:
    reverse_kl (DPO), forward_kl, js_divergence, alpha_divergence."""
    f_alpha_divergence_coef: float = 0.5
    """alpha of ``f_divergence_type: alpha_divergence`` (TRL's default 0.5; 1 is the
    reverse KL)."""
    cpo_alpha: Optional[float] = None
    """Weight of the chosen-completion NLL term, on any objective; default: the objective's."""
    sft_weight: Optional[float] = None
    """The SimPO repository's name for ``cpo_alpha``."""
    reference_free: bool = False
    """Score a reference-based objective against a uniform reference (TRL's flag)."""
    hyperparameters: dict = field(default_factory=dict)
    """The objective's hyperparameters as given, by spelling (``beta``, ``simpo_gamma`` ...).
    Each is a key of its own in YAML and on the command line; ``preftune methods`` lists
    which objective takes which, with defaults and bounds."""


@dataclass
class TrainingConfig:
    output_dir: str = "outputs/run"
    """The run's folder. A run owns it (a lock while it runs); a new run refuses a folder
    holding another run's checkpoints or model unless ``resume`` or
    ``overwrite_output_dir``."""
    overwrite_output_dir: bool = False
    """Start over in a folder holding another run: its checkpoints, logs and model go."""
    run_name: Optional[str] = None
    """The run's name for trackers (``report_to``)."""
    seed: int = 42
    """Seeds data order, held-out rows, SamPO's draws and weight initialisation."""
    learning_rate: float = 1e-6
    """Peak learning rate."""
    num_train_epochs: float = 1.0
    """Passes over the training pairs (fractions allowed); unused when ``max_steps`` > 0."""
    max_steps: int = -1
    """Optimizer steps to train; -1: ``num_train_epochs`` decide."""
    per_device_train_batch_size: int = 2
    """Pairs per micro-batch on each device."""
    per_device_eval_batch_size: int = 4
    """Pairs per evaluation batch on each device."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the step equals one batch of all of them."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule after warmup (transformers' schedules that need no extra
    arguments)."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming up linearly from 0 (unless ``warmup_steps``)."""
    warmup_steps: int = 0
    """Warmup steps; > 0 overrides ``warmup_ratio``."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW, Adafactor, SGD)."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay."""
    adam_beta2: float = 0.999
    """AdamW's second-moment decay."""
    adam_epsilon: float = 1e-8
    """AdamW's denominator epsilon."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global norm to this; 0: no clipping."""
    optim: str = "adamw_torch"
    """The optimizer: adamw_torch, adamw_torch_fused, adafactor (fixed learning rate, no
    relative step), sgd (plain, no momentum), or bitsandbytes' adamw_8bit, paged_adamw_8bit,
    paged_adamw_32bit. bfloat16 weights train with the AdamW choices only (float32 master
    copies)."""
    bf16: Optional[bool] = None
    """None: bf16 autocast on a GPU that supports it, fp32 on CPU."""
    fp16: bool = False
    """fp16 autocast over float32 weights with dynamic loss scaling (GPU only)."""
    logging_steps: int = 10
    """Steps between rows of metrics.jsonl (the last step is always logged)."""
    logging_first_step: bool = False
    """Also log the first step's metrics."""
    logging_strategy: str = "steps"
    """When metrics rows are written: ``steps`` (every ``logging_steps``) or ``no`` (only
    the last step's row)."""
    eval_strategy: str = "steps"
    """When to evaluate during training: ``steps`` (every ``eval_steps``), ``epoch`` (at
    each epoch's end) or ``no``; a run with eval data is always evaluated at its end
    unless ``no``."""
    eval_steps: Optional[int] = None
    """With ``eval_strategy: steps``: steps between evaluations; null: only at the end."""
    do_eval: bool = True
    """False: no evaluation at all, as ``eval_strategy: no``."""
    save_strategy: str = "steps"
    """When to checkpoint: ``steps`` (``save_steps`` and ``save_minutes``), ``epoch`` (at
    each epoch's end, and by time) or ``no``."""
    save_steps: Optional[int] = None
    """Steps between checkpoints; None: by time (``save_minutes``). Every run with
    checkpoints on also writes one at its last step, before the final evaluation and save."""
    save_minutes: Optional[float] = 30.0
    """Also checkpoint when this many minutes have passed since the last one (None: off)."""
    save_total_limit: Optional[int] = 2
    """Checkpoints kept (the newest); null keeps all. An older one is removed only once a
    newer one is complete, and ``--resume`` falls back to it if the newest is damaged."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir`` that verifies. The run must be
    the checkpoint's: a changed method, model, data, batch layout or schedule is refused."""
    resume_force: bool = False
    """Resume although settings changed; the new values take effect and are recorded."""
    max_consecutive_nonfinite: int = 5
    """A step with a non-finite loss or gradient is skipped (weights and optimizer state
    untouched); this many in a row stop the run, keeping the last good state (train/guard.py)."""
    max_nonfinite_fraction: float = 0.1
    """The run also stops once more than this share of its steps was skipped (at least one
    skipped step is always allowed)."""
    rounds: int = 1
    """Iterative training (iterative SamPO / DPO): split the data into this many parts; each
    round trains on one, starting from the last round's policy, which is also its reference."""
    disable_dropout: bool = True
    """Turn the model's dropout off, as TRL does for preference training."""
    router_aux_loss_coef: Optional[float] = None
    """Weight of a mixture-of-experts router's load-balancing loss; default: the model's."""
    report_to: Optional[Any] = None
    """Trackers fed the rows of metrics.jsonl: tensorboard, wandb, mlflow, trackio, or a
    comma list of them; none (the default) for the JSONL log alone. TensorBoard writes under
    ``OUTPUT_DIR/runs``."""
    push_to_hub: bool = False
    """Upload the final model and tokenizer to the hub."""
    hub_model_id: Optional[str] = None
    """Hub repository for ``push_to_hub``; default: the output folder's name."""
    progress_bar: bool = True
    """Show a progress bar with loss, margin, accuracy and tokens/s."""
    # The forward station (preftune/forward/fast/): each switch alone keeps results equal to the
    # plain padded, full-logits path; all three off is that path.
    chunked_logps: bool = True
    """Apply the output head only where completion tokens are scored, in chunks, with
    log-softmax recomputed in backward: memory one chunk x vocab, not tokens x vocab."""
    logps_chunk_size: Optional[int] = None
    """Tokens per head chunk when ``chunked_logps`` is on. None: as many as keep one chunk's
    logits at 2**23 values (32 MiB in float32) whatever the vocabulary, so the head's
    memory does not grow with it (256 tokens at a 32k vocabulary, 65 at 128k)."""
    prefix_sharing: bool = True
    """One row [prompt | chosen | rejected]: the prompt is computed once per pair."""
    packing: bool = True
    """Several pairs per row (block-diagonal mask), no padding between them."""
    max_tokens_per_row: Optional[int] = None
    """Token budget of a packed row; None: the batch's longest sequence."""
    fast_attention: str = "auto"
    """How prefix sharing and packing reach attention: ``dense`` (a [rows, 1, T, T] mask for
    SDPA or eager), ``flex`` (FlexAttention block masks; the model is switched to
    ``flex_attention``, and back to dense where the first-call probe finds no backward, as
    on CPU) or ``auto``: flex on a GPU once the first-call probe has checked it,
    else the model's own implementation (flex for a model loaded with
    ``attn_implementation: flex_attention``), dense otherwise."""
    group_by_length: bool = False
    """Batch pairs of similar length together (seeded, mega-batches of 50 batches)."""


SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig,
            "training": TrainingConfig}

# Keys of the SimPO / CPO-SimPO / TRL configs that have no effect here; accepted so their
# YAML files run unchanged, and reported when a run starts.
IGNORED_KEYS = {"log_level", "preprocessing_num_workers",
                "per_device_eval_batch_size_per_gpu", "remove_unused_columns", "save_only_model",
                "dataloader_num_workers", "dataloader_pin_memory", "ddp_timeout",
                "use_liger_kernel", "generate_during_eval", "truncation_mode",
                "padding_value", "label_pad_token_id", "model_init_kwargs", "hub_strategy",
                "hub_private_repo", "evaluation_strategy_epochs", "tf32"}
# Other spellings of the same key.
ALIASES = {"evaluation_strategy": "eval_strategy", "resume_from_checkpoint": "resume",
           "ref_model_name_or_path": "ref_model", "max_samples": "max_train_samples",
           "dataset_split": "dataset_train_split", "eval_split": "dataset_test_split",
           "lr": "learning_rate", "epochs": "num_train_epochs", "batch_size":
           "per_device_train_batch_size", "rpo_alpha": "cpo_alpha",
           "dataset_path": "dataset_name", "train_file": "dataset_name",
           "max_seq_length": "max_length"}
# TRL's SFTConfig is the one config with ``max_seq_length``: a file that uses it and names
# no objective was written for SFT (the SimPO repository's llama-3-8b-base-sft.yaml).
SFT_ONLY_KEYS = ("max_seq_length",)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    ignored: list = field(default_factory=list)
    given: set = field(default_factory=set)
    """The section fields the file or command line set (the rest are defaults)."""

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def _field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    index = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            index[f.name] = (section, f)
    return index


FIELDS = _field_index()
# Each objective's hyperparameter spellings are config keys too: none may be one of these.
reserve_keys({*FIELDS, *ALIASES, *IGNORED_KEYS, "hyperparameters"})


def _suggest(key: str) -> str:
    """The key meant, in the spellings TRL and the SimPO repository use. Their users type a
    key's first words (``--model``, ``--dataset``, ``--lr_scheduler``): a key that begins
    known ones suggests the first declared (``model_name_or_path``, not ``ref_model``);
    otherwise the closest spelling."""
    from preftune.objectives import hyperparameter_spellings

    known = [*FIELDS, *ALIASES, *hyperparameter_spellings()]
    begun = [name for name in known if name.startswith(f"{key}_")]
    close = begun[:1] or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _base_type(annotation: Any) -> Any:
    """``Optional[int]`` -> int; annotations are strings under ``from __future__``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), "Any": Any})  # noqa: S307 - our own literals
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else Any
    return origin or annotation


def coerce(key: str, value: Any, f: Optional[dataclasses.Field] = None) -> Any:
    """Check and convert one value to its field's type. Strings (from the command line) are
    read as YAML scalars, so ``--beta 2.5``, ``--bf16 true`` and ``--column_mapping
    '{prompt: question}'`` all work. ``f``: a field outside the training sections."""
    f = f or FIELDS[key][1]
    return coerce_to(key, value, _base_type(f.type))


def coerce_to(key: str, value: Any, kind: Any) -> Any:
    """:func:`coerce` to a type given directly (``Any`` accepts every value)."""
    if isinstance(value, str) and kind in (int, float):
        # PyYAML reads "5e-7" (no dot) as a string; numbers are numbers wherever they come from.
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            pass
    if isinstance(value, str) and kind is not str:
        value = _safe_yaml(value, key) if value.strip() else None
    if value is None or kind is Any:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is str and isinstance(value, (int, float)):
        return str(value)
    if kind is list and isinstance(value, (str, tuple)):
        return [value] if isinstance(value, str) else list(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


# Values a YAML document may hold once its aliases are expanded. A recipe holds hundreds;
# a "billion laughs" document of a few hundred bytes expands to hundreds of millions, which
# anything that walks the config (dataclasses.asdict, yaml.dump, json.dumps) would build.
MAX_YAML_VALUES = 100_000


def _safe_yaml(text: str, where: str) -> Any:
    """Plain YAML only: ``safe_load`` refuses tags such as ``!!python/object``, which would
    build arbitrary objects (and run code) from a recipe. Anchors and aliases work as long
    as their expansion stays under ``MAX_YAML_VALUES`` values and refers to no value
    inside itself."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML (plain values only): {error}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    _check_expansion(loaded, where)
    return loaded


class _SelfReference(Exception):
    """A container reached again from inside itself (``&a [*a]``)."""


def _check_expansion(loaded: Any, where: str) -> None:
    try:
        size = _expanded_size(loaded, {}, set())
    except _SelfReference:
        raise ConfigError(f"{where}: a YAML alias refers to the value that contains it (a "
                          "recursive structure); a config holds plain values") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    if size > MAX_YAML_VALUES:
        raise ConfigError(f"{where}: YAML aliases expand to {size:,} values, past the limit "
                          f"of {MAX_YAML_VALUES:,}; write the values out instead")


def _expanded_size(value: Any, sizes: dict[int, int], open_ids: set[int]) -> int:
    """Values in ``value``, each counted at every place an alias puts it, as a walk over
    the loaded object meets them. An alias loads as the same Python object, so sizes are
    memoised by ``id``: the count takes time linear in the parsed document, not in its
    expansion. ``open_ids``: the containers being counted, to catch one inside itself."""
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set)):
        children = value
    else:
        return 1
    key = id(value)
    if key in sizes:
        return sizes[key]
    if key in open_ids:
        raise _SelfReference
    open_ids.add(key)
    sizes[key] = 1 + sum(_expanded_size(child, sizes, open_ids) for child in children)
    open_ids.discard(key)
    return sizes[key]


def flatten(values: dict, where: str) -> dict:
    """Accept a flat mapping or one grouped by section names."""
    flat: dict = {}
    for key, value in (values or {}).items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(flatten(value, f"{where}:{key}"))
        else:
            flat[key] = value
    return flat


def build_config(values: dict, where: str = "config") -> Config:
    """Keys to a :class:`Config`: section fields, their other spellings (``ALIASES``), the
    hyperparameters some registered objective declares (name or alias, into
    ``method.hyperparameters``; which objective takes them is checked by
    ``preftune.objectives.method``), and the ignored keys."""
    config, flat = Config(), flatten(values, where)
    for raw_key, value in flat.items():
        key = ALIASES.get(raw_key, raw_key)
        if key in IGNORED_KEYS:
            config.ignored.append(raw_key)
        elif key == "hyperparameters":  # as a dumped config writes them
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: hyperparameters: expected a mapping, got {value!r}")
            for spelling, given in value.items():
                set_hyperparameter(config.method, spelling, given, where)
        elif key in FIELDS:
            section, _ = FIELDS[key]
            value = expand_home(key, coerce(key, value))
            setattr(getattr(config, section), key, value)
            config.given.add(key)
            if key == "use_flash_attention_2" and value:
                config.model.attn_implementation = "flash_attention_2"
        else:
            set_hyperparameter(config.method, raw_key, value, where)
    _sft_when_written_for_sft(config, flat)
    return config


def _sft_when_written_for_sft(config: Config, flat: dict) -> None:
    m = config.method
    names_one = (m.method or m.loss_type or m.hyperparameters or m.cpo_alpha is not None
                 or m.sft_weight is not None)
    if not names_one and any(k in flat for k in SFT_ONLY_KEYS):
        m.method = "sft"


PATH_KEYS = frozenset({"model_name_or_path", "ref_model", "tokenizer_name_or_path",
                       "chat_template", "ref_cache_dir", "dataset_name", "eval_dataset",
                       "dataset_cache_dir", "output_dir"})


def expand_home(key: str, value: Any) -> Any:
    """``~/x`` in a path setting is the home folder, from YAML as from a shell: unexpanded,
    a model path reads as a hub name and ``output_dir`` makes a folder named ``~``."""
    if key in PATH_KEYS and isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    if key == "dataset_mixer" and isinstance(value, dict):
        return {os.path.expanduser(k) if isinstance(k, str) and k.startswith("~") else k: v
                for k, v in value.items()}
    return value


def set_hyperparameter(method: MethodConfig, spelling: str, value: Any, where: str) -> None:
    """One objective hyperparameter, by any spelling an objective declares; null unsets it."""
    from preftune.objectives import hyperparameter_spellings

    declared = hyperparameter_spellings().get(spelling)
    if declared is None:
        raise ConfigError(f"{where}: unknown key {spelling!r}{_suggest(spelling)}")
    value = coerce_to(spelling, value, declared.type)
    if value is None:
        method.hyperparameters.pop(spelling, None)
    else:
        method.hyperparameters[spelling] = value


def parse_overrides(argv: list[str]) -> dict:
    """``--key value``, ``--key=value`` and bare ``--flag`` (true) into a mapping."""
    values: dict = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; options look like --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        else:
            value = "true"
        values[key.replace("-", "_")] = value
        i += 1
    return values


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """YAML file (safe loader) then command-line overrides, into one :class:`Config`."""
    values: dict = {}
    if path:
        text = _config_text(path)
        loaded = _safe_yaml(text, path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        values.update(flatten(loaded, path))
    values.update(parse_overrides(overrides or []))
    return build_config(values, where=path or "command line")


RUN_CONFIG_FILE = "preftune_config.yaml"
"""The run's config, in its output folder and in each checkpoint."""


def _config_text(path: str) -> str:
    """The YAML of ``--config``: a file, else a recipe bundled with preftune by name."""
    if Path(path).is_file():
        return Path(path).read_text()
    from preftune import recipes

    recipe = recipes.find(path)
    if recipe is None:
        raise ConfigError(f"--config: {path} is neither a file nor a recipe bundled with "
                          "preftune (`preftune recipes` lists those)")
    return recipe.read_text()


def dump_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_from_json(text: str) -> Config:
    return build_config(json.loads(text))


# Generation settings of `preftune eval` and `preftune pairs`. Not a training section:
# `preftune train` keeps rejecting these keys rather than ignoring them.
@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    """Answer budget; 0 skips generation in `preftune eval`."""
    do_sample: bool = False
    """Greedy when false (temperature and top_p are then unused)."""
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    """Answers per prompt (`preftune pairs`: the candidates a judge ranks)."""
    generation_batch_size: int = 16
    """Prompts per generate() call (left-padded together)."""
    max_prompts: Optional[int] = None
    """Use only the first this many prompts."""
    generation_seed: int = 0


def split_generation_keys(values: dict) -> tuple[GenerationConfig, dict]:
    """(GenerationConfig from the generation keys in ``values``, the remaining keys)."""
    fields = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    generation, rest = GenerationConfig(), {}
    for key, value in values.items():
        if key in fields:
            setattr(generation, key, coerce(key, value, fields[key]))
        else:
            rest[key] = value
    return generation, rest

"""TRL 1.16's trainer configs, field for field, with TRL's defaults.

``CPOConfig``, ``DPOConfig``, ``ORPOConfig`` and ``KTOConfig`` take the keyword arguments
TRL's classes take (transformers 5's ``TrainingArguments`` fields, TRL's own, and the two
fields of transformers 4 that TRL users still type: ``warmup_ratio`` and
``overwrite_output_dir``), with the same defaults and the same ``__post_init__``
resolutions (``bf16`` on unless ``fp16``, a DPO ``loss_type`` string becomes a list,
``alphapo`` becomes SimPO without the NLL term). They are plain dataclasses: TRL is not
imported. :func:`preftune.trl.mapping.to_preftune` reads one into preftune's
:class:`~preftune.config.Config`; a field it cannot honour, set to anything but its
default, is refused there, by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union


@dataclass
class TrainingArguments:
    """transformers 5's ``TrainingArguments`` with the defaults TRL's ``_BaseConfig`` sets
    (``logging_steps`` 10, ``gradient_checkpointing`` on, ``bf16`` unless ``fp16``) and
    TRL's trainers set (``learning_rate`` 1e-6)."""

    output_dir: Optional[str] = None
    per_device_train_batch_size: int = 8
    num_train_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: Optional[Union[dict, str]] = None
    warmup_steps: float = 0
    optim: str = "adamw_torch_fused"
    optim_args: Optional[str] = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optim_target_modules: Optional[Union[str, list]] = None
    gradient_accumulation_steps: int = 1
    average_tokens_across_devices: bool = True
    max_grad_norm: float = 1.0
    label_smoothing_factor: float = 0.0
    bf16: Optional[bool] = None
    fp16: bool = False
    bf16_full_eval: bool = False
    fp16_full_eval: bool = False
    tf32: Optional[bool] = None
    activation_checkpointing: Optional[bool] = None
    activation_checkpointing_kwargs: Optional[Union[dict, str]] = None
    gradient_checkpointing: bool = True
    gradient_checkpointing_kwargs: Optional[Union[dict, str]] = None
    torch_compile: bool = False
    torch_compile_backend: Optional[str] = None
    torch_compile_mode: Optional[str] = None
    use_liger_kernel: bool = False
    liger_kernel_config: Optional[dict] = None
    use_cache: bool = False
    neftune_noise_alpha: Optional[float] = None
    torch_empty_cache_steps: Optional[int] = None
    auto_find_batch_size: bool = False
    logging_strategy: str = "steps"
    logging_steps: float = 10
    logging_first_step: bool = False
    log_on_each_node: bool = True
    logging_nan_inf_filter: bool = True
    include_num_input_tokens_seen: Union[str, bool] = "no"
    log_level: str = "passive"
    log_level_replica: str = "warning"
    disable_tqdm: Optional[bool] = None
    report_to: Union[None, str, list] = "none"
    run_name: Optional[str] = None
    project: str = "huggingface"
    trackio_space_id: Optional[str] = None
    trackio_bucket_id: Optional[str] = None
    trackio_static_space_id: Optional[Any] = None
    eval_strategy: str = "no"
    eval_steps: Optional[float] = None
    eval_delay: float = 0
    per_device_eval_batch_size: int = 8
    prediction_loss_only: bool = False
    eval_on_start: bool = False
    eval_do_concat_batches: bool = True
    eval_use_gather_object: bool = False
    eval_accumulation_steps: Optional[int] = None
    include_for_metrics: list = field(default_factory=list)
    batch_eval_metrics: bool = False
    save_only_model: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_on_each_node: bool = False
    save_total_limit: Optional[int] = None
    enable_jit_checkpoint: bool = False
    push_to_hub: bool = False
    hub_token: Optional[str] = None
    hub_private_repo: Optional[bool] = None
    hub_model_id: Optional[str] = None
    hub_strategy: str = "every_save"
    hub_always_push: bool = False
    hub_revision: Optional[str] = None
    load_best_model_at_end: bool = False
    metric_for_best_model: Optional[str] = None
    greater_is_better: Optional[bool] = None
    ignore_data_skip: bool = False
    restore_callback_states_from_checkpoint: bool = False
    full_determinism: bool = False
    seed: int = 42
    data_seed: Optional[int] = None
    use_cpu: bool = False
    accelerator_config: Optional[Union[dict, str]] = None
    parallelism_config: Optional[Any] = None
    dataloader_drop_last: bool = False
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    dataloader_prefetch_factor: Optional[int] = None
    dataloader_multiprocessing_context: Optional[str] = None
    dataloader_in_order: bool = True
    remove_unused_columns: bool = True
    label_names: Optional[list] = None
    train_sampling_strategy: str = "random"
    length_column_name: str = "length"
    ddp_find_unused_parameters: Optional[bool] = None
    ddp_bucket_cap_mb: Optional[int] = None
    ddp_broadcast_buffers: Optional[bool] = None
    ddp_static_graph: Optional[bool] = None
    ddp_backend: Optional[str] = None
    ddp_timeout: int = 1800
    fsdp: Optional[str] = None
    fsdp_config: Optional[Union[dict, str]] = None
    deepspeed: Optional[Union[dict, str]] = None
    debug: Union[str, list] = ""
    skip_memory_metrics: bool = True
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    resume_from_checkpoint: Optional[str] = None
    local_rank: int = -1
    # transformers 4 (which TRL 1.16 also supports) has these two; transformers 5 has
    # neither (a warmup ratio is a warmup_steps below 1 there).
    warmup_ratio: Optional[float] = None
    overwrite_output_dir: bool = False

    def __post_init__(self):
        # TRL's _BaseConfig: bf16 unless fp16.
        self.bf16 = not self.fp16 if self.bf16 is None else self.bf16


@dataclass
class CPOConfig(TrainingArguments):
    """TRL 1.16's ``trl.experimental.cpo.CPOConfig``."""

    max_length: Optional[int] = 1024
    max_completion_length: Optional[int] = None
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    disable_dropout: bool = True
    cpo_alpha: float = 1.0
    simpo_gamma: float = 0.5
    alpha: float = 0.0
    generate_during_eval: bool = False
    is_encoder_decoder: Optional[bool] = None
    model_init_kwargs: Optional[Union[dict, str]] = None
    trust_remote_code: bool = False
    dataset_num_proc: Optional[int] = None

    def __post_init__(self):
        # As TRL: AlphaPO is SimPO without the NLL term (its alpha reshapes the reward).
        if self.loss_type == "alphapo":
            self.loss_type = "simpo"
            self.cpo_alpha = 0.0
        super().__post_init__()


@dataclass
class ORPOConfig(TrainingArguments):
    """TRL 1.16's ``trl.experimental.orpo.ORPOConfig``; ``beta`` is ORPO's lambda."""

    max_length: Optional[int] = 1024
    max_completion_length: Optional[int] = None
    beta: float = 0.1
    disable_dropout: bool = True
    padding_value: Optional[int] = None
    generate_during_eval: bool = False
    is_encoder_decoder: Optional[bool] = None
    model_init_kwargs: Optional[Union[dict, str]] = None
    trust_remote_code: bool = False
    dataset_num_proc: Optional[int] = None


@dataclass
class DPOConfig(TrainingArguments):
    """TRL 1.16's ``trl.DPOConfig``."""

    model_init_kwargs: Optional[Union[dict, str]] = None
    trust_remote_code: bool = False
    router_aux_loss_coef: Optional[float] = None
    disable_dropout: bool = True
    dataset_num_proc: Optional[int] = None
    max_length: Optional[int] = 1024
    truncation_mode: str = "keep_start"
    padding_free: bool = False
    pad_to_multiple_of: Optional[Union[int, str]] = "auto"
    precompute_ref_log_probs: bool = False
    precompute_ref_batch_size: Optional[int] = None
    loss_type: list = field(default_factory=lambda: ["sigmoid"])
    loss_weights: Optional[list] = None
    ld_alpha: Optional[float] = None
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    label_smoothing: float = 0.0
    beta: float = 0.1
    use_weighting: bool = False
    discopop_tau: float = 0.05
    activation_offloading: bool = False
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    pad_token: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights must have the same length as loss_type: got "
                             f"{len(self.loss_weights)} weights for {len(self.loss_type)} "
                             "loss types")
        super().__post_init__()


@dataclass
class KTOConfig(TrainingArguments):
    """TRL 1.16's ``trl.KTOConfig``."""

    train_sampling_strategy: str = "sequential"
    model_init_kwargs: Optional[Union[dict, str]] = None
    trust_remote_code: bool = False
    router_aux_loss_coef: Optional[float] = None
    disable_dropout: bool = True
    dataset_num_proc: Optional[int] = None
    max_length: Optional[int] = 1024
    pad_to_multiple_of: Optional[Union[int, str]] = "auto"
    precompute_ref_log_probs: bool = False
    precompute_ref_batch_size: Optional[int] = None
    loss_type: str = "kto"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    activation_offloading: bool = False
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512


# The example scripts' other two argument groups (trl/scripts/utils.py ScriptArguments and
# trl/trainer/model_config.py ModelConfig), for `preftune cpo|dpo|orpo|kto`.
@dataclass
class ScriptArguments:
    dataset_name: Optional[str] = None
    dataset_config: Optional[str] = None
    dataset_train_split: str = "train"
    dataset_test_split: str = "test"
    dataset_streaming: bool = False
    ignore_bias_buffers: bool = False


@dataclass
class ModelConfig:
    model_name_or_path: Optional[str] = None
    model_revision: str = "main"
    dtype: Optional[str] = "float32"
    attn_implementation: Optional[str] = None
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: Optional[list] = None
    lora_target_parameters: Optional[list] = None
    lora_modules_to_save: Optional[list] = None
    lora_task_type: str = "CAUSAL_LM"
    use_rslora: bool = False
    use_dora: bool = False
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    use_bnb_nested_quant: bool = False
    bnb_4bit_quant_storage: Optional[str] = None


CONFIGS = {"cpo": CPOConfig, "dpo": DPOConfig, "orpo": ORPOConfig, "kto": KTOConfig}

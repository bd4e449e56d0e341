"""Pre-flight: the checks that can fail a run, done before any heavy work.

A run that fails after an hour of tokenizing or on its first checkpoint wastes the hour.
These checks read only small files (configs, safetensors headers, the first rows) and run
before the model is loaded and before the rows are tokenized:

- ``output_dir`` is writable and has room for the checkpoints on disk at once (those
  ``save_total_limit`` keeps and the one being written: an old one goes only once the new
  one is complete) and the final model;
- the dataset exists (local paths), and its first rows have a recognisable format;
- the tokenizer has an EOS token (every completion ends with one) and a chat template
  when the rows are conversational;
- the policy and the reference model take the tokenizer's ids (embedding tables at least
  as large as the vocabulary, and the same vocabulary size for both).

Each failure is a :class:`ConfigError` saying what to change. :func:`offline_when_local`
keeps a run whose every input is local off the network.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Callable, Optional

from preftune.config import Config
from preftune.errors import ConfigError

DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
FLOAT32_BYTES = 4
GIB = 1024 ** 3


def check_run(config: Config, tokenizer, model=None, pairs=None,
              log: Callable[[str], None] = print) -> None:
    """Everything that needs no rows: output folder and space, data source, tokenizer,
    model and reference vocabularies. ``model`` and ``pairs``: parts passed in ready-made,
    if any (then the largest id in the pairs is what the embedding table must hold)."""
    m = config.model
    check_data_source(config.data.dataset_name)
    check_tokenizer(tokenizer)
    policy_path = None if model is not None else m.model_name_or_path
    policy_vocab = (_embedding_rows(model) if model is not None
                    else model_vocab_size(policy_path))
    ids_needed = (1 + max((max(p.prompt_ids + p.chosen_ids + p.rejected_ids) for p in pairs),
                          default=-1) if pairs else len(tokenizer))
    check_vocabularies(ids_needed, policy_vocab,
                       model_vocab_size(m.ref_model) if m.ref_model else None)
    params, dtype_bytes = ((sum(p.numel() for p in model.parameters()),
                            next(model.parameters()).element_size())
                           if model is not None else local_parameter_bytes(policy_path))
    copies = checkpoints_on_disk(config.training)
    need = checkpoint_bytes(params, dtype_bytes, full_optimizer=not m.use_peft,
                            checkpoints=copies)
    check_output_dir(Path(config.training.output_dir), need, copies)
    if need:
        log(f"pre-flight: output_dir writable; {copies} checkpoints and the final model need "
            f"about {need / GIB:.2f} GiB")


def checkpoints_on_disk(t) -> int:
    """Checkpoints on disk at once: those kept (``save_total_limit``) and the one being
    written, since an old one goes only once the new one is complete; at least two (with
    no limit, every checkpoint stays: two is then a floor, not the need)."""
    return t.save_total_limit + 1 if t.save_total_limit else 2


def check_rows(rows: list, tokenizer, data_format: str = "auto",
               column_mapping: Optional[dict] = None) -> None:
    """On the first rows, before tokenizing them all: a recognisable format (raises
    ConfigError naming the columns found), and a chat template if the rows hold messages."""
    from preftune.data.formats import detect_format, format_sample, get_path

    _, mapping = detect_format(rows, data_format, column_mapping)
    sample = format_sample(rows)
    conversational = data_format == "conversational" or any(
        isinstance(get_path(r, path), list) for r in sample for path in mapping.values())
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the rows hold message lists, which need a chat template, and the "
                          "tokenizer has none: set chat_template (a Jinja template or a file)")


def check_data_source(name: Optional[str]) -> None:
    from preftune.data.sources import _looks_like_path

    if name and _looks_like_path(name) and not Path(name).expanduser().exists():
        raise ConfigError(f"dataset_name: {name} does not exist")


def check_tokenizer(tokenizer) -> None:
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token, and every completion must end with "
                          "one: use a tokenizer that defines it")
    if tokenizer.pad_token_id is None:
        raise ConfigError("the tokenizer has no pad_token (preftune sets it to the EOS token "
                          "when loading; a tokenizer passed in must have one)")


def check_vocabularies(tokenizer_size: int, policy: Optional[int],
                       reference: Optional[int]) -> None:
    """Token ids run up to ``tokenizer_size - 1``: an embedding table with fewer rows fails
    on the first rare token, possibly hours in (a device-side assert on a GPU)."""
    if policy is not None and policy < tokenizer_size:
        raise ConfigError(f"token ids run up to {tokenizer_size - 1} (the tokenizer's) but the "
                          f"model's embedding table has {policy} rows: tokenizer and model do "
                          "not belong together")
    if reference is not None and policy is not None and reference != policy:
        raise ConfigError(f"ref_model has a vocabulary of {reference} tokens, the policy "
                          f"{policy}: log-prob ratios need the same tokenizer for both")
    if reference is not None and reference < tokenizer_size:
        raise ConfigError(f"token ids run up to {tokenizer_size - 1} but ref_model's embedding "
                          f"table has {reference} rows")


def model_vocab_size(name_or_path: str) -> Optional[int]:
    """``vocab_size`` from the model's config.json (local folders and the bundled model;
    hub ids are checked when the model loads, to keep this step off the network)."""
    from preftune.model_io import SMOLLM2_ALIASES, resolve_model_path

    if name_or_path.strip().lower() not in SMOLLM2_ALIASES \
            and not Path(name_or_path).expanduser().exists():
        if name_or_path.startswith((".", "/", "~")):
            raise ConfigError(f"model folder {name_or_path} does not exist")
        return None
    config = Path(resolve_model_path(name_or_path)).expanduser() / "config.json"
    if not config.is_file():
        raise ConfigError(f"{name_or_path} has no config.json: not a model folder")
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
        values = values.get("text_config", values)  # multimodal configs nest the text model
        return values.get("vocab_size")
    except (ValueError, AttributeError, RecursionError):
        raise ConfigError(f"{config} is not a readable model config (JSON object): "
                          "download the model again") from None


def _embedding_rows(model) -> Optional[int]:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(embeddings, "num_embeddings", None)


def local_parameter_bytes(name_or_path: Optional[str]) -> tuple[int, int]:
    """(parameter count, bytes per parameter) from the safetensors headers of a local model
    (8-byte length + JSON: no tensor is read); (0, 0) when unknown."""
    from preftune.model_io import SMOLLM2_ALIASES, resolve_model_path

    if not name_or_path or (name_or_path.strip().lower() not in SMOLLM2_ALIASES
                            and not Path(name_or_path).expanduser().is_dir()):
        return 0, 0
    params, size = 0, 0
    for file in Path(resolve_model_path(name_or_path)).expanduser().glob("*.safetensors"):
        for tensor in safetensors_header(file).values():
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            params += count
            size = max(size, DTYPE_BYTES.get(tensor["dtype"], 4))
    return params, size


LFS_POINTER = b"version https://git-lfs"
MAX_HEADER_BYTES = 100 * 1024 ** 2  # safetensors' own limit on the JSON header


def safetensors_header(file: Path) -> dict:
    """Tensor name -> {dtype, shape, data_offsets} from a safetensors file's header, read
    without its tensors; a ConfigError naming the file and the fix when it is not one (a
    Git-LFS pointer where the weights were never fetched, a truncated or other file)."""
    with file.open("rb") as handle:
        start = handle.read(8)
        size = file.stat().st_size
        if (start + handle.read(len(LFS_POINTER) - len(start))).startswith(LFS_POINTER):
            raise ConfigError(f"{file} is a Git-LFS pointer, not the weights: run `git lfs "
                              f"pull` in {file.parent} (or download the model again)")
        handle.seek(8)
        length = struct.unpack("<Q", start)[0] if len(start) == 8 else -1
        if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
            raise ConfigError(f"{file} is not a safetensors file (its first 8 bytes do not "
                              "give a header length that fits the file): download the model "
                              "again")
        try:
            header = json.loads(handle.read(length))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            for tensor in tensors.values():
                _ = (tensor["dtype"], [int(d) for d in tensor["shape"]])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            raise ConfigError(f"{file} is not a safetensors file (unreadable header): "
                              "download the model again") from None
    return tensors


def checkpoint_bytes(params: int, dtype_bytes: int, full_optimizer: bool = True,
                     checkpoints: int = 2) -> int:
    """Disk for ``checkpoints`` checkpoints and the final model (:func:`checkpoints_on_disk`).

    A checkpoint holds the weights at their dtype and, when all weights train
    (``full_optimizer``), AdamW's two moments in float32, plus the float32 master copy
    that optim.MasterWeightAdamW keeps of 16-bit weights. With LoRA the optimizer state
    covers the adapters only and is left out. The final model is the weights alone."""
    weights = params * dtype_bytes
    return checkpoints * (weights + optimizer_state_bytes(params, dtype_bytes,
                                                          full_optimizer)) + weights


def optimizer_state_bytes(params: int, dtype_bytes: int, full_optimizer: bool = True) -> int:
    """AdamW's state in a checkpoint: two float32 moments per weight, and a float32 master
    copy when the weights are bf16 or fp16; 0 for LoRA (adapter-sized, small)."""
    if not full_optimizer:
        return 0
    masters = params * FLOAT32_BYTES if dtype_bytes == 2 else 0
    return 2 * params * FLOAT32_BYTES + masters


def check_output_dir(output_dir: Path, need_bytes: int = 0, checkpoints: int = 2) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".preftune-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"output_dir {output_dir} is not writable: "
                          f"{error.strerror or error}") from None
    free = shutil.disk_usage(output_dir).free
    if need_bytes > free:
        raise ConfigError(f"output_dir {output_dir} has {free / GIB:.2f} GiB free; "
                          f"{checkpoints} checkpoints and the final model need about "
                          f"{need_bytes / GIB:.2f} GiB (fewer with a lower save_total_limit)")


def _is_local(name: str) -> bool:
    from preftune.model_io import SMOLLM2_ALIASES

    return name.strip().lower() in SMOLLM2_ALIASES or Path(name).expanduser().exists()


def offline_when_local(config: Config, environ=os.environ) -> bool:
    """Sets ``HF_HUB_OFFLINE=1`` when every model, tokenizer and dataset the config names is
    local and nothing is pushed to the hub, so no library looks anything up online; a value
    the user set is kept. Hub telemetry is off unless the user turned it on. Must run
    before transformers or huggingface_hub is imported: they read these at import."""
    environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    m, d, t = config.model, config.data, config.training
    names = [m.model_name_or_path, m.tokenizer_name_or_path, m.ref_model, d.dataset_name,
             d.eval_dataset, *(d.dataset_mixer or {})]
    local = all(_is_local(str(n)) for n in names if n) and not t.push_to_hub
    if local:
        environ.setdefault("HF_HUB_OFFLINE", "1")
        environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return local

"""Fixtures for the data-station tests: the real SmolLM2 tokenizer, a tiny tokenizer that adds
BOS (SmolLM2 does not), and the shared data files beside the project."""

from pathlib import Path

import pytest

# ../shared/data from the project root (this file is tests/data/conftest.py).
SHARED_DATA = (Path(__file__).resolve().parent / "../../../shared/data").resolve()
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
ORCA_FILE = SHARED_DATA / "orca-dpo-pairs-openai-format.jsonl"

TINY_WORDS = ("hello world how are you fine thanks good bad question answer "
              "a b c d e f g h i j k l m n o p").split()


def _shared_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (expected at the project root's "
                    "../shared/data)")
    return path


@pytest.fixture
def hh_file() -> Path:
    """2,312 HH-RLHF harmless-base test pairs, implicit-prompt transcripts."""
    return _shared_file(HH_FILE)


@pytest.fixture
def orca_file() -> Path:
    """Orca DPO pairs in the OpenAI fine-tuning preference schema."""
    return _shared_file(ORCA_FILE)


@pytest.fixture(scope="module")
def smollm2():
    from preftune.model_io import load_tokenizer

    try:
        return load_tokenizer("smollm2")
    except (FileNotFoundError, OSError) as error:
        pytest.skip(f"SmolLM2 tokenizer unavailable offline: {error}")


def make_bos_tokenizer():
    """A word-level tokenizer whose post-processor adds ``<s>``, like Llama's; no network."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["<unk>", "<s>", "</s>", "<pad>", *TINY_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="module")
def bos_tokenizer():
    return make_bos_tokenizer()

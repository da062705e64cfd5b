"""A tiny random-weight Llama for tests, built on this machine (no weights can be downloaded).

The model is real to vLLM (a Llama architecture, safetensors weights, a fast byte-level BPE
tokenizer with a chat template) but its output is noise: tests check the machinery (streaming,
usage, concurrency, retries), never the words. Everything is seeded, so greedy decoding gives the
same text on every build and on every machine with the same library versions.

Built once into ``.cache/tiny-llama`` at the repository root (about 2 MB, a few seconds) and
rebuilt when the directory is missing, incomplete (a build killed midway) or made by an older
recipe::

    model_dir = build_tiny_model()  # -> Path to a directory vLLM and transformers can load
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
TINY_MODEL_DIR: Path = REPO_ROOT / ".cache" / "tiny-llama"

#: Written last; its content must equal ``RECIPE`` for a cached build to be reused.
COMPLETE_MARKER = "telltale-recipe.json"

SEED = 1234
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# head_dim = hidden_size / num_attention_heads must be >= 32 for vLLM's CPU attention (64 here).
MODEL_CONFIG: dict[str, int | float | bool] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    # Wider than the usual 0.02 so the logits of the top tokens are far apart: greedy decoding
    # then picks the same token despite float rounding differences between batch shapes.
    "initializer_range": 0.3,
    "tie_word_embeddings": False,
}
# One turn per message, then the assistant's header when a reply is wanted; vLLM's chat
# endpoint and vllm.LLM.chat both render it through transformers.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# The tokenizer learns its merges from this text; any other text still encodes (byte-level).
TRAINING_TEXT = [
    "How do I sort a list in Python? Use sorted(xs) or xs.sort().",
    "Write a short poem about the sea and the wind at night.",
    "What is the capital of France? The capital of France is Paris.",
    "Summarise this email for me and draft a polite reply to the customer.",
    "I'm sorry, but I can't help with that request.",
    "Translate 'good morning' into German: Guten Morgen.",
    "Explain recursion to a five year old, with an example.",
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
]
RECIPE: dict[str, object] = {
    "version": 1,
    "seed": SEED,
    "config": MODEL_CONFIG,
    "special_tokens": SPECIAL_TOKENS,
    "chat_template": CHAT_TEMPLATE,
    "training_text": TRAINING_TEXT,
}


def build_tiny_model(directory: Path = TINY_MODEL_DIR, *, force: bool = False) -> Path:
    """Return a directory holding the tiny model, building it first if needed.

    Args:
        directory: Where the model lives; reused when it holds a complete build of ``RECIPE``.
        force: Rebuild even if a complete build is there.

    The build goes to a sibling temp directory that replaces ``directory`` only when complete,
    under a file lock, so parallel test processes neither race nor see half a model.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and is_complete(directory):
            return directory
        staging = directory.parent / f".{directory.name}.building"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _save_tokenizer(staging)
        _save_model(staging)
        (staging / COMPLETE_MARKER).write_text(json.dumps(RECIPE, sort_keys=True))
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    return directory


def is_complete(directory: Path) -> bool:
    """True if ``directory`` holds a finished build of the current ``RECIPE``."""
    marker = Path(directory) / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()) == json.loads(json.dumps(RECIPE))
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def _save_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="</s>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def _save_model(directory: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = LlamaConfig(
        **MODEL_CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(directory)

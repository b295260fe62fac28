"""Random-init models of named shapes, with a BPE tokenizer trained on the run's own data.

`model.name: random:<shape>` builds one of these into an ordinary model directory (config,
safetensors, tokenizer) that `from_pretrained` loads like any checkpoint, so the tiny config,
the tests and the benchmark go through exactly the same loading path as a hub model.
Built once and cached under `model.cache_dir/<shape>-<digest>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from ..errors import UserError
from ..files import atomic_directory

# Llama-3.2-1B / Qwen2.5-1.5B / Llama-3.1-8B shapes, with the vocabulary of the trained tokenizer.
SHAPES: dict[str, dict] = {
    "tiny": dict(
        arch="llama",
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        initializer_range=0.1,
    ),
    "llama-1b": dict(
        arch="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
    "qwen-1.5b": dict(
        arch="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=32000,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
    ),
    "llama-8b": dict(
        arch="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
        rope_theta=500000.0,
    ),
}

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|unk|>"
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]


def parse_random_name(name: str) -> str | None:
    """'random:tiny' -> 'tiny'; anything else -> None."""
    if not name.startswith("random:"):
        return None
    return name.split(":", 1)[1]


def model_dir_for(shape: str, texts_digest: str, root: str | os.PathLike) -> Path:
    return Path(root) / f"{shape}-{texts_digest[:12]}"


def digest_texts(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def train_tokenizer(texts: list[str], vocab_size: int):
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD, UNK] + CHAT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # A BOS at the start of every encoded text, like Llama tokenizers.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=CHAT_SPECIALS,
        model_max_length=131072,
    )
    return fast


def build_config(shape: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, max_positions: int):
    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    # The tiny shape uses a larger init: with the embeddings frozen under LoRA, the default 0.02 caps
    # the logits near 2-3, so the loss cannot fall far and a CPU demo learns too slowly.
    spec.setdefault("initializer_range", 0.02)
    spec["vocab_size"] = vocab_size
    common = dict(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        max_position_embeddings=max_positions,
        torch_dtype="float32",
    )
    if arch == "llama":
        return LlamaConfig(**spec, **common, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False)
    return Qwen2Config(**spec, **common, rms_norm_eps=1e-6, hidden_act="silu")


def build_random_model(
    shape: str, texts: list[str], root: str | os.PathLike, seed: int = 0, max_positions: int = 8192, log=print
) -> Path:
    """Build (or reuse) the random-init model directory for `shape`, tokenizer trained on `texts`."""
    if shape not in SHAPES:
        raise UserError(f"model.name 'random:{shape}': unknown shape; known shapes: {', '.join(SHAPES)}")
    digest = digest_texts(texts)
    out = model_dir_for(shape, hashlib.sha256(f"{digest}:{seed}:{max_positions}".encode()).hexdigest(), root)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    log(f"building random-init '{shape}' model with a tokenizer trained on {len(texts)} texts -> {out}")
    tok = train_tokenizer(texts, SHAPES[shape]["vocab_size"])
    config = build_config(shape, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, max_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    if shape != "tiny":
        model = model.to(torch.bfloat16)
    # Written whole under a temporary name and renamed: two runs building the same model at once both end
    # with a complete directory (the second rename replaces an identical one).
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "random_init.json").write_text(
            json.dumps({"shape": shape, "seed": seed, "texts": len(texts), "texts_sha256": digest}, indent=2)
        )
    return out

"""A GGUF file as a model source: checked, then converted once into an ordinary model directory.

    model.name: /models/SmolLM2-135M-Instruct.Q4_1.gguf      (also --model / --base of the other commands)

transformers reads GGUF (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) and dequantizes
the weights to floats; such a model cannot be saved as it is ("quantized with GGUF ... not
serializable"), so the weights move into a model built from the config. The directory goes to
`model.cache_dir/gguf-<name>-<content digest>-<dtype>/`, written atomically under a lock, so two runs
that start together convert once and a conversion killed halfway leaves nothing that looks complete.

Special tokens are repaired on the way, because a GGUF's tokenizer often disagrees with its model: for
SmolLM2 it reports EOS = `<|im_start|>` while the model ends a turn with `<|im_end|>`, and a trainer then
rewrites the model's EOS to the wrong token. For a chat model EOS becomes the chat template's end-of-turn
token, in the tokenizer, the config and the generation config alike; pad becomes a token distinct from
EOS where the vocabulary has one. What the conversion changed is logged and written to `gguf_conversion.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from ..errors import UserError
from ..files import atomic_directory, exclusive_lock, sha256_file
from ..layout import GGUF_CONVERSION_FILE

log = logging.getLogger("llm_summarizer.models")

GGUF_MAGIC = b"GGUF"
# Tried in order for a pad token distinct from EOS (what the vocabulary has decides).
PAD_CANDIDATES = (
    "<|finetune_right_pad_id|>",
    "<|pad|>",
    "<pad>",
    "[PAD]",
    "<|PAD_TOKEN|>",
    "<|endoftext|>",
    "<|reserved_special_token_0|>",
    "<|vision_pad|>",
    "<unk>",
    "<|unk|>",
)


def is_gguf_name(name: str) -> bool:
    return str(name).lower().endswith(".gguf")


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on a file in the cache (released by the OS if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path):
        yield


def inspect(path: Path, what: str = "model.name") -> dict:
    """Architecture, tensor types and size of a GGUF file; a UserError naming the file when it is not one."""
    if not path.exists():
        raise UserError(f"{what}: GGUF file not found: {path}")
    if not path.is_file():
        raise UserError(f"{what}: {path} is a directory; a .gguf model source is one file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise UserError(
            f"{what}: {path} is not a GGUF file (it starts with {head!r}, a GGUF file with b'GGUF'); "
            f"download it again, or point model.name at a model directory"
        )
    from gguf import GGUFReader  # the gguf package: only needed for GGUF sources

    try:
        reader = GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        types = Counter(t.tensor_type.name for t in reader.tensors)
        n_params = int(sum(int(t.n_elements) for t in reader.tensors))
    except Exception as e:  # a cut-off or damaged file fails in several ways inside the reader
        raise UserError(
            f"{what}: {path} looks truncated or damaged ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'unreadable header'}); download it again"
        ) from None
    return {"architecture": arch, "tensor_types": dict(types), "parameters": n_params, "bytes": path.stat().st_size}


def _supported(arch: str) -> bool:
    # transformers' GGUF reader (it needs the gguf package) only for a GGUF source
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return arch in GGUF_SUPPORTED_ARCHITECTURES


def end_of_turn_token(tokenizer) -> Optional[str]:
    """The special token the chat template puts right after an assistant's message (None without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\u2063ANSWER\u2063"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # a template that needs other roles: nothing to repair from it
        return None
    after = text.split(marker, 1)[-1]
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    for tid in tokenizer(after, add_special_tokens=False)["input_ids"]:
        tok = tokenizer.convert_ids_to_tokens(tid)
        if tok in special:
            return tok
        if tok.strip():
            return None
    return None


def repair_decoder(tokenizer) -> list[str]:
    """A byte-level BPE vocabulary decodes with ByteLevel alone. transformers rebuilds GGUF tokenizers with a
    SentencePiece-style decoder chain (ByteFallback, '▁' -> ' ', ByteLevel) that decodes the same text, but
    llama.cpp's converter takes that chain for a SentencePiece vocabulary and writes a GGUF whose output
    reads 'WeĠproposeĠa...'. Returns what changed."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    state = json.loads(backend.to_str())
    pre, dec = state.get("pre_tokenizer") or {}, state.get("decoder") or {}
    pre_types = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers") or []}
    dec_types = [d.get("type") for d in dec.get("decoders") or [dec]]
    if state["model"]["type"] != "BPE" or "ByteLevel" not in pre_types or dec_types == ["ByteLevel"]:
        return []
    # only for a byte-level BPE tokenizer whose decoder must be repaired
    from tokenizers import decoders

    backend.decoder = decoders.ByteLevel()
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece clean-up; on byte-level BPE it removes spaces
    return [
        f"tokenizer decoder {'+'.join(map(str, dec_types))} -> ByteLevel (a byte-level BPE vocabulary; "
        f"llama.cpp's converter reads the SentencePiece-style chain as a SentencePiece vocabulary)"
    ]


def repair_special_tokens(tokenizer, config, generation_config) -> list[str]:
    """EOS = the chat template's end of turn everywhere; pad distinct from EOS. Returns what changed."""
    changes = []
    eot = end_of_turn_token(tokenizer)
    if eot is not None and tokenizer.eos_token != eot:
        changes.append(f"tokenizer eos_token {tokenizer.eos_token!r} -> {eot!r} (the chat template's end of turn)")
        tokenizer.eos_token = eot
    eos_id = tokenizer.eos_token_id
    for name, obj in (("config", config), ("generation_config", generation_config)):
        if obj is not None and eos_id is not None and getattr(obj, "eos_token_id", None) != eos_id:
            changes.append(f"{name}.eos_token_id {getattr(obj, 'eos_token_id', None)} -> {eos_id}")
            obj.eos_token_id = eos_id
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos_id:
        vocab = tokenizer.get_vocab()
        pad = next((c for c in PAD_CANDIDATES if c in vocab and vocab[c] != eos_id), None)
        if pad is not None:
            changes.append(f"tokenizer pad_token {tokenizer.pad_token!r} -> {pad!r} (distinct from EOS)")
            tokenizer.pad_token = pad
    for name, obj in (("config", config), ("generation_config", generation_config)):
        if obj is not None and getattr(obj, "pad_token_id", None) != tokenizer.pad_token_id:
            changes.append(f"{name}.pad_token_id {getattr(obj, 'pad_token_id', None)} -> {tokenizer.pad_token_id}")
            obj.pad_token_id = tokenizer.pad_token_id
    return changes


def converted_dir(path: Path, cache_dir, dtype: torch.dtype, digest: str) -> Path:
    dname = str(dtype).replace("torch.", "")
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)[:60]
    return Path(cache_dir) / f"gguf-{stem}-{digest[:12]}-{dname}"


def _complete(d: Path) -> bool:
    return (
        (d / GGUF_CONVERSION_FILE).is_file() and (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    )


def materialize(path, cache_dir, dtype: torch.dtype, what: str = "model.name") -> Path:
    """The model directory for a GGUF file: converted on first use, reused after (by content and dtype)."""
    path = Path(os.path.expanduser(str(path))).resolve()
    facts = inspect(path, what)
    digest = sha256_file(path)
    out = converted_dir(path, cache_dir, dtype, digest)
    if _complete(out):
        return out
    if not _supported(facts["architecture"]):
        raise UserError(
            f"{what}: {path} is a {facts['architecture']!r} GGUF, which transformers "
            f"{metadata.version('transformers')} cannot convert (it reads llama, mistral, qwen2, "
            f"gemma, phi3 and a few more); use that model's original checkpoint instead"
        )
    with cache_lock(out.parent / f".{out.name}.convert.lock"):  # not atomic_directory's own .{name}.lock
        if _complete(out):  # another run converted it while we waited
            return out
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # a conversion killed halfway, under our lock now
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        t0 = time.time()
        log.info(
            "converting %s (%s, %s) into %s, %s; once, then reused",
            path,
            facts["architecture"],
            ", ".join(f"{n} {k}" for k, n in facts["tensor_types"].items()),
            out,
            dtype,
        )
        with atomic_directory(out) as tmp:
            changes = _convert(path, tmp, dtype, what)
            record = {
                "source": str(path),
                "sha256": digest,
                **facts,
                "dtype": str(dtype).replace("torch.", ""),
                "converted_with": f"transformers {metadata.version('transformers')}, gguf {metadata.version('gguf')}",
                "changes": changes,
                "seconds": round(time.time() - t0, 1),
            }
            (tmp / GGUF_CONVERSION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for c in changes:
            log.info("GGUF conversion changed: %s", c)
    return out


def _convert(path: Path, dst: Path, dtype: torch.dtype, what: str) -> list[str]:
    folder, name = str(path.parent), path.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except Exception as e:  # an unsupported quantization type, a tokenizer transformers cannot rebuild, ...
        raise UserError(
            f"{what}: transformers could not read {path} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}); its quantization types or tokenizer "
            f"may not be supported by this transformers version"
        ) from None
    # A GGUF-loaded model refuses save_pretrained: move its weights into a model built from the same config.
    config = AutoConfig.for_model(
        **{k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    )
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise UserError(
            f"{what}: the weights of {path} do not fit the model its config describes "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    del loaded
    try:
        gen = GenerationConfig.from_model_config(model.config)
    except Exception:
        gen = GenerationConfig()
    changes = repair_decoder(tok) + repair_special_tokens(tok, model.config, gen)
    model.generation_config = gen
    model.save_pretrained(str(dst), safe_serialization=True)
    tok.save_pretrained(str(dst))
    return changes

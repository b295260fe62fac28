"""Load the base model and tokenizer and attach LoRA: the only module that imports unsloth.

Two backends with one config and one set of output files:
  unsloth       FastLanguageModel.from_pretrained + FastLanguageModel.get_peft_model (patched, fast LoRA)
  transformers  AutoModelForCausalLM (+ bitsandbytes for 4/8-bit) + peft.get_peft_model: the fallback
                for architectures Unsloth lacks, and the baseline the benchmark compares against.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import ALL_LINEAR, Config, UserError

log = logging.getLogger("llm_summarizer.model")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def import_unsloth():
    """Import unsloth before transformers/trl/peft so its patches apply everywhere."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth  # noqa: F401

    return unsloth


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class Precision:
    bf16: bool
    fp16: bool
    dtype: object  # torch dtype for loading
    name: str


def pick_precision(cfg: Config) -> Precision:
    import torch

    want = cfg.train.precision
    cuda = torch.cuda.is_available()
    if want == "auto":
        if cuda:
            want = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            want = "fp32"
    if want in ("bf16", "fp16") and not cuda:
        raise UserError(f"train.precision={want} needs a CUDA GPU; this machine has none (use train.precision=auto)")
    if cfg.model.dtype != "auto":
        dtype = getattr(torch, cfg.model.dtype)
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[want]
    return Precision(bf16=want == "bf16", fp16=want == "fp16", dtype=dtype, name=want)


def resolve_model_path(cfg: Config, raw_splits=None) -> str:
    """The directory or hub id to load; builds 'random:<shape>' models on first use."""
    from .random_init import build_random_model, parse_random_name

    shape = parse_random_name(cfg.model.name)
    if shape is not None:
        if raw_splits is None:
            raise UserError("model.name random:<shape> needs the training data to train its tokenizer")
        texts = [t for r in raw_splits["train"].rows for t in (r["document"], r["summary"])]
        return str(build_random_model(shape, texts, cfg.model.random_init_dir, seed=cfg.train.seed,
                                      max_positions=max(2048, cfg.model.max_seq_length), log=log.info))
    name = os.path.expanduser(cfg.model.name)
    p = Path(name)
    looks_local = name.startswith((".", "/", "~")) or p.exists()
    if looks_local:
        check_model_dir(p)
    return name


def check_model_dir(p: Path) -> None:
    if not p.exists():
        raise UserError(f"model.name: directory not found: {p}")
    if not p.is_dir():
        raise UserError(f"model.name: {p} is a file; expected a model directory (config.json + weights)")
    if (p / "adapter_config.json").exists():
        import json

        try:
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (ValueError, OSError):
            raise UserError(f"model.name: {p}/adapter_config.json is not valid JSON") from None
        if not any((p / w).exists() for w in ("adapter_model.safetensors", "adapter_model.bin")):
            raise UserError(f"model.name: {p} has adapter_config.json but no adapter weights (adapter_model.safetensors)")
        if base and base.startswith(("/", ".", "~")) and not Path(os.path.expanduser(base)).exists():
            raise UserError(f"model.name: {p} is a LoRA adapter whose base model {base} is not found; "
                            f"restore the base model there, or use a merged model directory")
        return
    if not (p / "config.json").exists():
        raise UserError(f"model.name: {p} has no config.json; is it a model directory?")
    if not any((p / w).exists() for w in WEIGHT_FILES):
        raise UserError(f"model.name: {p} has config.json but no weights ({', '.join(WEIGHT_FILES[::2])})")
    _check_architecture(p)


def _check_architecture(p: Path) -> None:
    import json

    try:
        conf = json.loads((p / "config.json").read_text())
    except (ValueError, OSError):
        raise UserError(f"model.name: {p}/config.json is not valid JSON") from None
    model_type = conf.get("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        raise UserError(f"model.name: {p} has model_type {model_type!r}, which this transformers version does not "
                        f"know; use a supported causal LM (llama, qwen2, mistral, gemma, phi3, ...)")
    archs = conf.get("architectures") or []
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") or "ConditionalGeneration" in a
                         for a in archs):
        raise UserError(f"model.name: {p} is a {', '.join(archs)}, not a causal language model; "
                        f"summarization fine-tuning here needs a decoder (…ForCausalLM) model")


def _offline_hint(cfg: Config, e: Exception) -> UserError:
    return UserError(
        f"model.name={cfg.model.name!r}: could not load it ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
        "If this machine has no network access, use a local model directory "
        "(model.name=/path/to/local/model) or the offline demo: configs/demo.yaml"
    )


def load_tokenizer(cfg: Config, raw_splits=None):
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg, raw_splits)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code,
                                            revision=cfg.model.revision)
    except OSError as e:
        raise _offline_hint(cfg, e) from None
    return _finish_tokenizer(cfg, tok)


def _finish_tokenizer(cfg: Config, tok):
    from .data import apply_named_template, ensure_pad_token

    if cfg.data.template not in ("auto", "plain"):
        tok = apply_named_template(tok, cfg.data.template)
    ensure_pad_token(tok)
    tok.padding_side = "right"  # training; generation switches to left padding itself
    return tok


def _loftq_config(cfg: Config):
    if not cfg.lora.loftq:
        return None
    from peft import LoftQConfig

    return LoftQConfig(loftq_bits=cfg.lora.loftq_bits, loftq_iter=cfg.lora.loftq_iter)


def load_model_and_tokenizer(cfg: Config, raw_splits=None):
    """Returns (peft_model, tokenizer, info dict)."""
    if (cfg.model.load_in_4bit or cfg.model.load_in_8bit) and not has_cuda():
        bits = "4" if cfg.model.load_in_4bit else "8"
        raise UserError(f"model.load_in_{bits}bit=true needs a CUDA GPU (bitsandbytes); this machine has none. "
                        f"Set model.load_in_{bits}bit=false to train in 16/32-bit on the CPU.")
    path = resolve_model_path(cfg, raw_splits)
    prec = pick_precision(cfg)
    if cfg.model.backend == "unsloth":
        model, tok = _load_unsloth(cfg, path, prec)
    else:
        model, tok = _load_transformers(cfg, path, prec)
    tok = _finish_tokenizer(cfg, tok)
    if model.config.pad_token_id is None or model.config.pad_token_id != tok.pad_token_id:
        model.config.pad_token_id = tok.pad_token_id
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    info = {"base_model": cfg.model.name, "resolved_path": path, "backend": cfg.model.backend,
            "precision": prec.name, "trainable_params": trainable, "total_params": total}
    log.info("model: %s via %s, %s, %.2fM trainable of %.2fM parameters", path, cfg.model.backend, prec.name,
             trainable / 1e6, total / 1e6)
    return model, tok, info


def _load_unsloth(cfg: Config, path: str, prec: Precision):
    import_unsloth()
    from unsloth import FastLanguageModel

    m = cfg.model
    try:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=m.max_seq_length, dtype=None if m.dtype == "auto" and has_cuda() else prec.dtype,
            load_in_4bit=m.load_in_4bit, load_in_8bit=m.load_in_8bit, trust_remote_code=m.trust_remote_code,
            revision=m.revision,
        )
    except (OSError, RuntimeError) as e:
        msg = str(e)
        if "offline" in msg.lower() or "connect" in msg.lower() or "resolve" in msg.lower() or isinstance(e, OSError):
            raise _offline_hint(cfg, e) from None
        raise
    lo = cfg.lora
    kwargs = {}
    if lo.use_dora:
        kwargs["use_dora"] = True
    loftq = _loftq_config(cfg)
    model = FastLanguageModel.get_peft_model(
        model, r=lo.r, target_modules=cfg.lora.target_modules, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
        bias=lo.bias, use_gradient_checkpointing=m.gradient_checkpointing, random_state=cfg.train.seed,
        use_rslora=lo.use_rslora, init_lora_weights="loftq" if loftq else True,
        loftq_config=loftq if loftq else {}, **kwargs,
    )
    return model, tok


def _load_transformers(cfg: Config, path: str, prec: Precision):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    m = cfg.model
    kwargs = dict(dtype=prec.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    if m.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=prec.dtype if prec.dtype != torch.float32 else torch.float16)
    elif m.load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if has_cuda():
        kwargs["device_map"] = {"": 0}
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=m.trust_remote_code, revision=m.revision)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise _offline_hint(cfg, e) from None
    gc = bool(m.gradient_checkpointing)
    if m.load_in_4bit or m.load_in_8bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lo = cfg.lora
    loftq = _loftq_config(cfg)
    peft_cfg = LoraConfig(
        r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=cfg.lora.target_modules, bias=lo.bias,
        use_rslora=lo.use_rslora, use_dora=lo.use_dora, task_type="CAUSAL_LM",
        init_lora_weights="loftq" if loftq else True, loftq_config=loftq or {},
    )
    torch.manual_seed(cfg.train.seed)
    model = get_peft_model(model, peft_cfg)
    return model, tok


# ---------------------------------------------------------------------------------------------
# Mode switches around generation


def for_inference(model, backend: str) -> None:
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()


def for_training(model, backend: str) -> None:
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    model.train()

"""The two ways a model is loaded and given LoRA weights, behind one table (`BACKENDS`):

    unsloth       FastLanguageModel.from_pretrained + FastLanguageModel.get_peft_model (patched, fast LoRA)
    transformers  AutoModelForCausalLM (+ bitsandbytes for 4/8-bit) + peft: the fallback for architectures
                  Unsloth lacks, and the baseline the benchmark compares against

unsloth is imported (by unsloth_first.import_unsloth) only when the unsloth backend is asked for: a
process on the transformers backend never imports it (export checks load exports that way, as users
will). Unsloth must be imported before transformers, trl and peft to patch them; the command layer does
that first of all (`llm_summarizer.commands.boot`), so here the import only fetches the module.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from peft import LoftQConfig, LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from ..config import Config
from ..errors import UserError
from .device import Device, compute_dtype_4bit, current
from .unsloth_first import import_unsloth


def nf4_config(dtype, device: Optional[Device] = None) -> BitsAndBytesConfig:
    """The one 4-bit (QLoRA) setting: NF4 with double quantization, computing in the load dtype, as the device
    decides (models/device.py compute_dtype_4bit: a float32 load computes in the GPU's 16-bit type, never
    bfloat16 on a GPU without it, float32 on a CPU)."""
    compute = compute_dtype_4bit(dtype, device or current())
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def plain_cpu_4bit(model) -> int:
    """Keep bitsandbytes' 4-bit layers on their plain CPU path; returns how many layers there are.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weights in place for a faster kernel the
    first time the layer runs without gradients (generation, the ROUGE pass between training steps). After
    that, backward passes through the layer silently give no gradient to its input (its op has no autograd
    kernel), the layer computes in bfloat16 (results then depend on the CPU), and the repacking fails on layers
    whose sizes are not multiples of its blocks (out_features of 32, in_features of 64: the tiny model's
    intermediate size of 344 is neither). The plain path dequantizes and computes in the compute dtype."""
    # bitsandbytes is optional (4-bit models only): called only where a 4-bit model was loaded with it
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def _on_cpu_plain_4bit(model) -> None:
    # 4-bit layers exist only where bitsandbytes was imported (a 4-bit load, or a directory stored in 4-bit)
    if not torch.cuda.is_available() and "bitsandbytes" in sys.modules:
        plain_cpu_4bit(model)


@dataclass
class LoadSpec:
    """What to load and how: a model directory, hub id, or adapter directory (unsloth backend)."""

    name: str
    max_seq_length: int
    dtype: Optional[torch.dtype]  # None: the backend's choice (Unsloth on a GPU)
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    trust_remote_code: bool = False
    revision: Optional[str] = None
    attn_implementation: Optional[str] = None
    placement: Optional[dict] = None  # transformers backend: from_pretrained's device_map (+ max_memory) instead of
    # the current GPU (an export whose 16-bit model does not fit the GPU keeps some layers in CPU memory)


# ---------------------------------------------------------------------------------------------
# unsloth


def _unsloth_load(spec: LoadSpec):
    # unsloth is imported first by models/unsloth_first.py; here only on the unsloth backend
    from unsloth import FastLanguageModel

    with contextlib.redirect_stdout(sys.stderr):
        model, tok = FastLanguageModel.from_pretrained(
            model_name=spec.name,
            max_seq_length=spec.max_seq_length,
            dtype=spec.dtype,
            load_in_4bit=spec.load_in_4bit,
            load_in_8bit=spec.load_in_8bit,
            trust_remote_code=spec.trust_remote_code,
            revision=spec.revision,
        )
    _on_cpu_plain_4bit(model)
    return model, tok


def _loftq(cfg: Config):
    return LoftQConfig(loftq_bits=cfg.lora.loftq_bits, loftq_iter=cfg.lora.loftq_iter) if cfg.lora.loftq else None


def _unsloth_lora(model, cfg: Config):
    # unsloth is imported first by models/unsloth_first.py; here only on the unsloth backend
    from unsloth import FastLanguageModel

    lo = cfg.lora
    loftq = _loftq(cfg)
    return FastLanguageModel.get_peft_model(
        model,
        r=lo.r,
        target_modules=lo.target_modules,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        bias=lo.bias,
        use_gradient_checkpointing=cfg.model.gradient_checkpointing,
        random_state=cfg.train.seed,
        use_rslora=lo.use_rslora,
        init_lora_weights="loftq" if loftq else True,
        loftq_config=loftq or {},
        **({"use_dora": True} if lo.use_dora else {}),
    )


def _unsloth_mode(model, inference: bool) -> None:
    # unsloth is imported first by models/unsloth_first.py; here only on the unsloth backend
    from unsloth import FastLanguageModel

    (FastLanguageModel.for_inference if inference else FastLanguageModel.for_training)(model)


# ---------------------------------------------------------------------------------------------
# transformers + peft


def _transformers_load(spec: LoadSpec, adapter: Optional[str] = None):
    kwargs = dict(dtype=spec.dtype or "auto", trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.load_in_4bit:
        kwargs["quantization_config"] = nf4_config(spec.dtype or torch.float32)
    elif spec.load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if spec.placement:
        kwargs.update(spec.placement)
    elif torch.cuda.is_available():
        # each rank its own GPU: torchrun ranks set it from LOCAL_RANK (distributed.init), Ray Train per worker
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    tok = AutoTokenizer.from_pretrained(spec.name, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    model = AutoModelForCausalLM.from_pretrained(spec.name, **kwargs)
    _on_cpu_plain_4bit(model)
    return model, tok


def _transformers_lora(model, cfg: Config):
    gc = bool(cfg.model.gradient_checkpointing)
    if cfg.model.load_in_4bit or cfg.model.load_in_8bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lo = cfg.lora
    loftq = _loftq(cfg)
    peft_cfg = LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=lo.target_modules,
        bias=lo.bias,
        use_rslora=lo.use_rslora,
        use_dora=lo.use_dora,
        task_type="CAUSAL_LM",
        init_lora_weights="loftq" if loftq else True,
        loftq_config=loftq or {},
    )
    torch.manual_seed(cfg.train.seed)
    return get_peft_model(model, peft_cfg)


def _transformers_mode(model, inference: bool) -> None:
    pass  # model.eval() / model.train() is all it takes


def load_adapter(model, adapter_dir: str):
    """A saved LoRA adapter onto a base loaded by the transformers backend."""
    return PeftModel.from_pretrained(model, adapter_dir)


@dataclass(frozen=True)
class Backend:
    name: str
    load: Callable  # LoadSpec -> (model, tokenizer)
    add_lora: Callable  # (model, cfg) -> peft model
    set_mode: Callable  # (model, inference: bool) -> None, before model.eval() / model.train()
    loads_adapters: bool  # from_pretrained on an adapter directory loads base + adapter itself


BACKENDS = {
    "unsloth": Backend("unsloth", _unsloth_load, _unsloth_lora, _unsloth_mode, loads_adapters=True),
    "transformers": Backend(
        "transformers", _transformers_load, _transformers_lora, _transformers_mode, loads_adapters=False
    ),
}


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "unsloth":
        import_unsloth()
    return BACKENDS[name]


def for_inference(model, backend_name: str) -> None:
    BACKENDS[backend_name].set_mode(model, True)
    model.eval()


def for_training(model, backend_name: str) -> None:
    BACKENDS[backend_name].set_mode(model, False)
    model.train()


def apply_named_template(tokenizer, name: str):
    """Set one of Unsloth's named chat templates (chatml, llama-3, qwen-2.5, ...) on the tokenizer."""
    import_unsloth()
    # only on the unsloth backend, after unsloth_first
    from unsloth.chat_templates import CHAT_TEMPLATES, get_chat_template

    if name not in CHAT_TEMPLATES:
        raise UserError(
            f"data.template: unknown chat template {name!r}; known: auto, plain, " + ", ".join(sorted(CHAT_TEMPLATES))
        )
    return get_chat_template(tokenizer, chat_template=name)

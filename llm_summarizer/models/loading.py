"""The one loader: a base model for training (with LoRA attached) or a saved model for generation, on
either backend, from a local directory, a hub id or a `random:<shape>` model built on first use.

    model, tokenizer, info = load_for_training(cfg, raw_splits)       # the train command
    loaded = load_for_generation("fine_tuned/demo")                   # evaluate, summarize, export
    print(summarize_texts(loaded, ["A long text ..."])[0].text)        # (llm_summarizer.models.generation)

The prompt format, token budget and decoding settings of a saved model come from the `config.yaml` that
training saved beside its weights, so generation sees exactly the prompts the model was trained on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoTokenizer

from ..config import Config, ModelSection, is_local_path
from ..config_loading import load_config
from ..contracts import optional_model_file
from ..data.prompt import Formatter
from ..errors import UserError
from ..layout import ADAPTER_CONFIG, GGUF_CONVERSION_FILE
from ..redaction import env_secrets, redact
from . import gguf, random_init, registry
from .backends import LoadSpec, load_adapter
from .backends import backend as get_backend
from .device import cpu_4bit_ready, inference_dtype, training_plan, unsloth_float32
from .directory import ModelDir, check_architecture, describe_model_dir
from .tokenizer import finish_tokenizer, load_saved_tokenizer

log = logging.getLogger("llm_summarizer.models")


# ---------------------------------------------------------------------------------------------
# Training


def model_source(name: str, cache_dir, dtype, what: str = "model.name") -> str:
    """A named registry model or a .gguf file as the model directory it becomes (fetched / converted once);
    anything else as it is."""
    if registry.is_registry_name(name):
        name = str(registry.fetch(name, cache_dir))
    if gguf.is_gguf_name(name):
        return str(gguf.materialize(name, cache_dir, dtype, what))
    return name


def resolve_model_path(cfg: Config, raw_splits=None) -> str:
    """The directory or hub id to load for model.name; builds 'random:<shape>' models, fetches registry
    models and converts GGUF files on first use."""
    source = model_source(cfg.model.name, cfg.model.cache_dir, training_plan(cfg, probe_optim=False).dtype)
    if source != cfg.model.name:
        return source
    shape = random_init.parse_random_name(cfg.model.name)
    if shape is not None:
        if raw_splits is None:
            raise UserError("model.name random:<shape> needs the training data to train its tokenizer")
        texts = [t for r in raw_splits["train"].rows for t in (r["document"], r["summary"])]
        return str(
            random_init.build_random_model(
                shape,
                texts,
                cfg.model.cache_dir,
                seed=cfg.train.seed,
                max_positions=max(2048, cfg.model.max_seq_length),
                log=log.info,
            )
        )
    name = os.path.expanduser(cfg.model.name)
    if is_local_path(cfg.model.name):
        if cfg.rl.method == "grpo" and not os.path.exists(name):
            raise UserError(
                f"model.name={cfg.model.name}: directory not found. A GRPO stage starts from a fine-tuned model: "
                "train it first (for the ready config grpo-demo: llm-summarizer train --config demo), or name "
                "another model directory or a base model"
            )
        info = describe_model_dir(name, what="model.name")
        if info.kind == "merged":
            check_architecture(name, "model.name", cfg.model.trust_remote_code)
    return name


def _offline_hint(cfg: Config, e: Exception) -> UserError:
    return UserError(
        f"model.name={cfg.model.name!r}: could not load it ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
        "If this machine has no network access, use a local model directory "
        "(model.name=/path/to/local/model), a .gguf file (model.name=/path/to/model.gguf), or the ready configs that "
        "reach no hub: --config demo (a real model from the package registry) or --config tiny (nothing downloaded)"
    )


def _is_offline_error(e: Exception) -> bool:
    msg = str(e).lower()
    return isinstance(e, OSError) or any(w in msg for w in ("offline", "connect", "resolve"))


def load_tokenizer(cfg: Config, raw_splits=None):
    """model.name's tokenizer, finished as training uses it (for the data preview)."""
    path = resolve_model_path(cfg, raw_splits)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision
        )
    except OSError as e:
        raise _offline_hint(cfg, e) from None
    return finish_tokenizer(cfg, tok, cfg.model.backend)


def check_quantized_training(cfg: Config) -> None:
    """4-bit (NF4) training runs on a CPU too, on either backend, where bitsandbytes quantizes there; 8-bit
    loading needs a CUDA GPU (Unsloth's CPU backend would load 16-bit weights instead, and say so only in
    its banner)."""
    if torch.cuda.is_available():
        return
    if cfg.model.load_in_8bit:
        raise UserError(
            "model.load_in_8bit=true needs a CUDA GPU; this machine has none. On the CPU use "
            "model.load_in_4bit=true (NF4, QLoRA) or model.load_in_8bit=false (32-bit weights)."
        )
    if cfg.model.load_in_4bit:
        why = cpu_4bit_ready()
        if why:
            raise UserError(
                f"model.load_in_4bit=true: this machine has no CUDA GPU and {why}. Set "
                f"model.load_in_4bit=false to train in 32-bit on the CPU, or install bitsandbytes "
                f"0.50 (`bash scripts/setup_env.sh` pins it)."
            )


def add_lora(be, model, cfg: Config):
    """The backend's LoRA, with lora.target_modules that match no layer of the model named as a config error."""
    try:
        return be.add_lora(model, cfg)
    except ValueError as e:
        if "not found in the base model" not in str(e) and "Target modules" not in str(e):
            raise
        names = sorted(
            {n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)} - {"lm_head"}
        )
        raise UserError(
            f"lora.target_modules={cfg.lora.target_modules}: no such layer in {cfg.model.name}; its "
            f"linear layers are: {', '.join(names)} (or use lora.target_modules=all-linear)"
        ) from None


def load_for_training(cfg: Config, raw_splits=None):
    """(peft model, tokenizer, info dict): model.name loaded on model.backend with LoRA attached."""
    plan = training_plan(cfg, probe_optim=False)  # before anything loads: a pair that cannot run here is refused
    check_quantized_training(cfg)
    path = resolve_model_path(cfg, raw_splits)
    start = starting_adapter(cfg, path)
    if start is not None:
        path = start.base  # the adapter's base is loaded; the adapter's weights go onto the LoRA added below
    m = cfg.model
    be = get_backend(m.backend)
    # The plan's dtype, always given: Unsloth left to choose (dtype=None) picks by itself and its trainer then refuses
    # arguments that disagree (a T4 loaded in float16 with bf16 arguments); on a CPU it would pick bf16 on bf16 CPUs.
    spec = LoadSpec(
        path,
        m.max_seq_length,
        plan.dtype,
        m.load_in_4bit,
        m.load_in_8bit,
        m.trust_remote_code,
        m.revision,
        m.attn_implementation if be.name == "transformers" else None,
    )
    try:
        model, tok = be.load(spec)
    except (OSError, RuntimeError) as e:
        if _is_offline_error(e):
            raise _offline_hint(cfg, e) from None
        raise
    unsloth_float32(model, plan)
    model = add_lora(be, model, cfg)
    if start is not None:
        continue_adapter(model, start, cfg)
    tok = finish_tokenizer(cfg, tok, be.name)
    if model.config.pad_token_id is None or model.config.pad_token_id != tok.pad_token_id:
        model.config.pad_token_id = tok.pad_token_id
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    info = {
        "base_model": start.base if start is not None else cfg.model.name,
        "resolved_path": path,
        "backend": be.name,
        "precision": plan.precision,
        "precision_detail": plan.describe(),
        "trainable_params": trainable,
        "total_params": total,
    }
    if start is not None:
        info["started_from"], info["started_from_kind"] = str(start.path), "adapter (its LoRA weights continued)"
    elif is_local_path(cfg.model.name) and Path(os.path.expanduser(cfg.model.name)).is_dir():
        info["started_from"], info["started_from_kind"] = cfg.model.name, "model directory (a new LoRA)"
    # where the weights came from, and what was repaired
    gguf_record = optional_model_file(Path(path) / GGUF_CONVERSION_FILE, "its record in run_info.json", log)
    if gguf_record is not None:
        info["gguf"] = gguf_record
    log.info(
        "model: %s via %s, %s, %.2fM trainable of %.2fM parameters",
        path,
        be.name,
        plan.describe(),
        trainable / 1e6,
        total / 1e6,
    )
    return model, tok, info


def starting_adapter(cfg: Config, path: str) -> Optional[ModelDir]:
    """model.name as a fine-tuned adapter directory (e.g. fine_tuned/demo, to continue it with GRPO), else None."""
    if not is_local_path(cfg.model.name) or not Path(path).is_dir() or not (Path(path) / ADAPTER_CONFIG).is_file():
        return None
    info = describe_model_dir(path, what="model.name")
    ac = json.loads((info.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    own = {"lora.r": ac.get("r"), "lora.alpha": ac.get("lora_alpha")}
    mine = {"lora.r": cfg.lora.r, "lora.alpha": cfg.lora.alpha}
    targets = ac.get("target_modules")
    if isinstance(targets, list) and isinstance(cfg.lora.target_modules, list):
        own["lora.target_modules"], mine["lora.target_modules"] = sorted(targets), sorted(cfg.lora.target_modules)
    wrong = [k for k in own if own[k] is not None and own[k] != mine[k]]
    if wrong:
        raise UserError(
            f"model.name={cfg.model.name} is a LoRA adapter; training continues its weights, so its shape is the "
            f"run's: set {' '.join(f'{k}={own[k]}' for k in wrong)} (the config has "
            f"{', '.join(f'{k}={mine[k]}' for k in wrong)})"
        )
    log.info("model.name is an adapter: loading its base %s and continuing the adapter's weights", info.base)
    return info


def continue_adapter(model, start: ModelDir, cfg: Config) -> None:
    """The saved adapter's weights into the LoRA just added (the same shape: starting_adapter checked it)."""
    weights = start.path / "adapter_model.safetensors"
    if weights.is_file():
        state = load_file(str(weights))
    else:
        state = torch.load(start.path / "adapter_model.bin", map_location="cpu", weights_only=True)
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise UserError(
            f"model.name={cfg.model.name}: {len(unexpected)} adapter weights fit no layer of its base "
            f"(e.g. {unexpected[0]}): the adapter was trained on another model"
        )


# ---------------------------------------------------------------------------------------------
# Generation from a saved model directory


def model_config(info: ModelDir, overrides: Optional[list[str]] = None) -> Config:
    """The config the model was trained with (its config.yaml) plus overrides; defaults otherwise."""
    if info.config_yaml is not None:
        return load_config(info.config_yaml, overrides)
    log.info("%s has no config.yaml; using the default prompt format (override with data.* keys)", info.path)
    return load_config(None, [f"model.name={info.path}", "model.load_in_4bit=false"] + list(overrides or []))


@dataclass
class Loaded:
    model: object
    tokenizer: object
    formatter: object
    cfg: Config
    backend: str
    info: ModelDir
    dtype: str
    quantized: Optional[str] = None  # "4bit" / "8bit" when the base was loaded quantized, or is stored so
    # generation.chunk_formatters' (settings, formatters): built once per settings, not per request or round
    chunk_formatters_cache: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    @contextlib.contextmanager
    def base_model(self):
        """The adapter switched off: the base model, same weights in memory, same tokenizer and prompts."""
        if self.info.kind != "adapter":
            raise UserError("base_model() needs an adapter directory; load the base with load_base_for_generation")
        with self.model.disable_adapter():
            yield self.model

    def describe(self) -> dict:
        return {
            "path": str(self.info.path),
            "kind": self.info.kind,
            "base_model": self.info.base,
            "backend": self.backend,
            "dtype": self.dtype,
            "quantized": self.quantized,
        }


def _load_error(what: str, path: str, e: Exception) -> UserError:
    first = (str(e).strip().splitlines() or [""])[0][:400]
    hint = ""
    if isinstance(e, OSError) and not os.path.isdir(path):
        hint = (
            " If this machine has no network access, use a local model directory "
            "(pass --base /path/to/base/model for an adapter)."
        )
    elif "size mismatch" in str(e) or "not found in the base model" in str(e) or "Target modules" in str(e):
        hint = " The adapter does not fit this base model: it was trained on another one (pass the right --base)."
    return UserError(f"{what}: could not load {path} ({type(e).__name__}: {first}).{hint}")


@contextlib.contextmanager
def _adapter_with_base(info: ModelDir):
    """The adapter directory as a loader should see it: when its base was found somewhere other than
    where adapter_config.json says (moved, relative, or --base), a temporary copy of the small
    adapter files names the right base. The user's directory is never modified."""
    if info.base == info.base_recorded:
        yield info.path
        return
    tmp = Path(tempfile.mkdtemp(prefix="llm_summarizer-adapter-"))
    try:
        for f in info.path.iterdir():
            if f.is_file() and f.name != ADAPTER_CONFIG:
                os.symlink(f.resolve(), tmp / f.name)
        ac = json.loads((info.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        ac["base_model_name_or_path"] = info.base
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(ac, indent=2), encoding="utf-8")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_weights(
    info: ModelDir, cfg: Config, backend_name: str, dtype, q4: bool, q8: bool, placement: Optional[dict] = None
):
    """The model of a saved directory (an adapter with its base, or a merged model) on one backend."""
    be = get_backend(backend_name)
    spec = LoadSpec(
        str(info.path),
        cfg.model.max_seq_length,
        dtype,
        q4,
        q8,
        cfg.model.trust_remote_code,
        attn_implementation=cfg.model.attn_implementation if be.name == "transformers" else None,
        placement=placement if be.name == "transformers" else None,
    )
    if info.kind == "adapter" and be.loads_adapters:
        with _adapter_with_base(info) as name:
            spec.name = str(name)
            try:
                return be.load(spec)[0]
            except Exception as e:  # a user's file that does not load: say which and why
                raise _load_error("--model", str(info.path), e) from None
    if info.kind == "adapter":
        spec.name = info.base
    try:
        model = be.load(spec)[0]
    except Exception as e:  # a user's file that does not load: say which and why
        raise _load_error("--base" if info.kind == "adapter" else "--model", spec.name, e) from None
    if info.kind == "adapter":
        try:
            model = load_adapter(model, str(info.path))
        except Exception as e:  # a user's file that does not load: say which and why
            raise _load_error("--model", str(info.path), e) from None
    return model


def saved_model(model, base: Optional[str] = None, what: str = "--model") -> ModelDir:
    """describe_model_dir for what the other commands accept as --model / --base: a model directory, a
    .gguf file or a registry name (both converted into model.cache_dir's default place, in the inference
    dtype, on first use)."""
    cache, dtype = ModelSection.model_fields["cache_dir"].default, inference_dtype(load_config(None))
    model = from_hub(model_source(str(model), cache, dtype, what), what)
    base = from_hub(model_source(str(base), cache, dtype, "--base"), "--base") if base else None
    return describe_model_dir(model, base, what)


def from_hub(name: str, what: str) -> str:
    """A hub id (namespace/name) as the local folder of its files, downloaded once into the hub cache; a
    local path as it is. An unreachable hub or a missing repository is one message with what to do."""
    if is_local_path(name):
        return name
    # the hub client only for a hub id, never for a local model
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id=name, repo_type="model")
    except Exception as e:  # offline, no such repository, no access: all the same to the user
        first = redact((str(e).strip().splitlines() or [""])[0][:300], env_secrets())
        raise UserError(
            f"{what} {name}: not a local folder, and the hub id could not be downloaded "
            f"({type(e).__name__}: {first}). On a machine with network: `hf download {name} "
            f"--local-dir DIR` (a private repository needs HF_TOKEN), then pass {what} DIR"
        ) from None
    log.info("%s %s: the hub repository's files, in %s", what, name, path)
    return path


def load_for_generation(
    model_dir,
    backend: Optional[str] = None,
    base: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    info: Optional[ModelDir] = None,
    placement: Optional[dict] = None,
) -> Loaded:
    """Model + tokenizer + prompt formatter of a saved model directory, ready for `summarize_texts`.

    backend: "unsloth" or "transformers" (default: the backend the model was trained with).
    base: the base model of an adapter, when it is not where adapter_config.json says.
    overrides: config keys on top of the model's config.yaml, e.g. ["eval.num_beams=4"].
    placement: from_pretrained's device_map / max_memory (the transformers backend; export/memory.py decides it).
    """
    info = info or saved_model(model_dir, base)
    cfg = model_config(info, overrides)
    backend = backend or cfg.model.backend
    if backend not in ("unsloth", "transformers"):
        raise UserError(f"--backend {backend!r}: use 'unsloth' or 'transformers'")
    for p, what in ((str(info.path), "--model"), (info.base if info.kind == "adapter" else None, "base model")):
        if p:
            check_architecture(p, what, cfg.model.trust_remote_code)
    cuda = torch.cuda.is_available()
    cpu_4bit = None if cuda or not cfg.model.load_in_4bit else cpu_4bit_ready()
    q4, q8 = cfg.model.load_in_4bit and not cpu_4bit, cfg.model.load_in_8bit and cuda
    if cpu_4bit:
        log.info("the model was trained on a 4-bit base; on this CPU %s, so the base is loaded unquantized", cpu_4bit)
    elif cfg.model.load_in_8bit and not cuda:
        log.info("the model was trained on an 8-bit base; this machine has no GPU, so the base is loaded unquantized")
    dtype = inference_dtype(cfg)
    model = _load_weights(info, cfg, backend, dtype, q4, q8, placement)
    stored = _stored_quantization(info)
    tok = load_saved_tokenizer(info, cfg, backend)
    if getattr(model.config, "pad_token_id", None) != tok.pad_token_id:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    log.info(
        "loaded %s (%s%s) on the %s backend, %s",
        info.path,
        info.kind,
        f", base {info.base}" if info.kind == "adapter" else "",
        backend,
        str(dtype).replace("torch.", ""),
    )
    return Loaded(
        model,
        tok,
        Formatter(tok, cfg.data, cfg.model.max_seq_length),
        cfg,
        backend,
        info,
        str(dtype).replace("torch.", ""),
        "4bit" if q4 else "8bit" if q8 else stored,
    )


def _stored_quantization(info: ModelDir) -> Optional[str]:
    """Says "4bit" or "8bit" for a merged directory stored quantized by bitsandbytes (a merged-4bit export)."""
    conf = info.path / "config.json"
    if info.kind != "merged" or not conf.is_file():
        return None
    q = json.loads(conf.read_text(encoding="utf-8")).get("quantization_config") or {}
    if q.get("quant_method") != "bitsandbytes":
        return None
    return "4bit" if q.get("load_in_4bit") else "8bit" if q.get("load_in_8bit") else None


def load_base_for_generation(loaded: Loaded) -> Loaded:
    """The base model of a merged directory (recorded by the export, or --base), with the fine-tuned
    model's tokenizer and prompt format so both see identical prompts."""
    info = loaded.info
    if not info.base:
        raise UserError(
            f"--compare-base: {info.path} is a merged model that does not record its base model "
            f"(export_info.json base_model); pass --base /path/to/base/model"
        )
    if os.path.isdir(info.base):
        base_info = describe_model_dir(info.base, what="--base")
        check_architecture(info.base, "--base", loaded.cfg.model.trust_remote_code)
    else:
        base_info = ModelDir(Path(info.base), "merged")
    # quantized as the fine-tuned model was on loading; a directory stored in 4-bit (a merged-4bit export) has a
    # 16-bit base
    m = loaded.cfg.model
    model = _load_weights(
        base_info,
        loaded.cfg,
        loaded.backend,
        inference_dtype(loaded.cfg),
        loaded.quantized == "4bit" and m.load_in_4bit,
        loaded.quantized == "8bit" and m.load_in_8bit,
    )
    model.config.pad_token_id = loaded.tokenizer.pad_token_id
    model.eval()
    return Loaded(
        model, loaded.tokenizer, loaded.formatter, loaded.cfg, loaded.backend, base_info, loaded.dtype, loaded.quantized
    )


def saved_model_config(cfg):
    """The model config of cfg.model.name where it can be read without a network (a local folder, the hub cache),
    else None (chunking then reads the tokenizer's context): what `llm-summarizer data` plans windows with."""
    try:
        from transformers import AutoConfig  # only when `data` plans windows: nothing loads at import time

        return AutoConfig.from_pretrained(cfg.model.name, cache_dir=cfg.model.cache_dir, local_files_only=True)
    except Exception:  # a hub name not cached, a random: model, an adapter folder: the tokenizer's context instead
        return None

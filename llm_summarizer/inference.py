"""Load any saved model directory for generation: a LoRA adapter (its base named in
adapter_config.json) or a merged model, on the unsloth or the transformers backend.

    from llm_summarizer.inference import load_for_generation, summarize_texts
    m = load_for_generation("fine_tuned/demo")                    # backend from the model's config.yaml
    m = load_for_generation("fine_tuned/demo", backend="transformers", base="/models/base")
    print(summarize_texts(m, ["A long text ..."])[0].text)

The prompt format, token budget and decoding settings come from the `config.yaml` that training
saved beside the weights, so generation here sees exactly the prompts the model was trained on.
Every problem with the directory (missing weights, not a causal LM, an adapter whose base is gone)
is a `UserError` naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import Config, UserError, load_config

log = logging.getLogger("llm_summarizer.inference")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
EXPORT_INFO = "export_info.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass
class ModelDir:
    """What a saved model directory holds, found from its files alone (no torch)."""

    path: Path
    kind: str  # "adapter" or "merged"
    base: Optional[str] = None  # adapter: the base to load; merged: the base recorded by the export
    base_recorded: Optional[str] = None  # as written in adapter_config.json / export_info.json
    config_yaml: Optional[Path] = None
    metrics: dict = field(default_factory=dict)  # the run's metrics.json, when present

    @property
    def name(self) -> str:
        return self.path.resolve().name


def _read_json(p: Path, what: str) -> dict:
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UserError(f"{what}: {p} is not readable JSON ({type(e).__name__}); is the directory complete?") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what}: {p} should hold a JSON object")
    return obj


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(name)) or not _HUB_ID.fullmatch(name)


def _check_full_model_dir(p: Path, what: str) -> None:
    if not (p / "config.json").is_file():
        raise UserError(f"{what}: {p} has neither adapter_config.json (a LoRA adapter) nor config.json "
                        f"(a full model); is it a model directory?")
    if not any((p / w).is_file() for w in FULL_WEIGHTS):
        raise UserError(f"{what}: {p} has config.json but no weights ({', '.join(FULL_WEIGHTS[::2])}); "
                        f"the save or copy did not finish")


def resolve_base(recorded: Optional[str], adapter_dir: Path, override: Optional[str], what: str) -> str:
    """The base model an adapter is loaded onto: --base, else the recorded one (found from the
    current directory or beside the adapter), else a hub id."""
    if override:
        p = os.path.expanduser(override)
        if looks_local(override) and not os.path.isdir(p):
            raise UserError(f"--base {override}: directory not found")
        if os.path.isdir(p):
            _check_full_model_dir(Path(p), f"--base {override}")
        return p
    if not recorded:
        raise UserError(f"{what}: {adapter_dir / ADAPTER_CONFIG} names no base model (base_model_name_or_path); "
                        f"pass --base /path/to/base/model")
    rec = os.path.expanduser(recorded)
    candidates = [Path(rec)]
    if not os.path.isabs(rec):
        candidates += [adapter_dir / rec, adapter_dir.parent / rec]
    for c in candidates:
        if c.is_dir():
            _check_full_model_dir(c, f"{what}: base model of the adapter")
            return str(c) if c == Path(rec) else str(c.resolve())
    if looks_local(recorded):
        raise UserError(f"{what}: {adapter_dir} is a LoRA adapter whose base model {recorded!r} is not found "
                        f"(looked in: {', '.join(str(c) for c in candidates)}). Restore the base model there, "
                        f"pass --base /path/to/base/model, or use a merged model directory")
    return recorded  # a hub id; loading says what to do when it cannot be fetched


def describe_model_dir(path, base: Optional[str] = None, what: str = "--model") -> ModelDir:
    """Validate a saved model directory from its files; raises UserError naming what is wrong."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"{what} {path}: directory not found")
    if not p.is_dir():
        raise UserError(f"{what} {path}: is a file; expected a model directory (an adapter or a merged model)")
    cfg_yaml = p / "config.yaml"
    metrics = _read_json(p / "metrics.json", what) if (p / "metrics.json").is_file() else {}
    if (p / ADAPTER_CONFIG).is_file():
        ac = _read_json(p / ADAPTER_CONFIG, what)
        if not any((p / w).is_file() for w in ADAPTER_WEIGHTS):
            raise UserError(f"{what} {path}: has adapter_config.json but no adapter weights "
                            f"({' or '.join(ADAPTER_WEIGHTS)}); the save or copy did not finish")
        recorded = ac.get("base_model_name_or_path")
        return ModelDir(p, "adapter", resolve_base(recorded, p, base, what), recorded,
                        cfg_yaml if cfg_yaml.is_file() else None, metrics)
    _check_full_model_dir(p, f"{what} {path}")
    recorded = None
    if (p / EXPORT_INFO).is_file():
        recorded = _read_json(p / EXPORT_INFO, what).get("base_model")
    b = base or recorded
    if b and (base or os.path.isdir(os.path.expanduser(b)) or not looks_local(b)):
        b = os.path.expanduser(b)
    elif b:
        b = None  # recorded base no longer there; only --compare-base needs it, and says so
    return ModelDir(p, "merged", b, recorded, cfg_yaml if cfg_yaml.is_file() else None, metrics)


def check_architecture(model_path: str, what: str, trust_remote_code: bool = False) -> None:
    """A local model directory must hold a causal LM this transformers version knows."""
    p = Path(model_path)
    if not (p / "config.json").is_file():
        return  # a hub id: checked when it is loaded
    conf = _read_json(p / "config.json", what)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = conf.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES and not (trust_remote_code and conf.get("auto_map")):
        raise UserError(f"{what}: {p}/config.json has model_type {model_type!r}, which transformers "
                        f"{_version('transformers')} does not know; use a supported causal LM (llama, qwen2, "
                        f"mistral, gemma, phi3, ...) or upgrade transformers")
    archs = conf.get("architectures") or []
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    if (archs and not causal_arch) or (model_type in CONFIG_MAPPING_NAMES and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        archs = ", ".join(archs or [model_type])
        raise UserError(f"{what}: {p} is a {archs} ({model_type}), not a causal language model; summarization "
                        f"here needs a decoder model (...ForCausalLM)")
    q = conf.get("quantization_config") or {}
    if q.get("quant_method") == "bitsandbytes" and not _cuda():
        raise UserError(f"{what}: {p} is stored quantized with bitsandbytes, which needs a CUDA GPU; this machine "
                        f"has none. Use a 16-bit model directory on the CPU")


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def model_config(info: ModelDir, overrides: Optional[list[str]] = None) -> Config:
    """The config the model was trained with (its config.yaml) plus overrides; defaults otherwise."""
    if info.config_yaml is not None:
        return load_config(info.config_yaml, overrides)
    log.info("%s has no config.yaml; using the default prompt format (override with data.* keys)", info.path)
    return load_config(None, [f"model.name={info.path}", "model.load_in_4bit=false"] + list(overrides or []))


def inference_dtype(cfg: Config):
    """float32 on the CPU (exact, and faster there than 16-bit); bf16/fp16 on a GPU; model.dtype wins."""
    import torch

    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class Loaded:
    model: object
    tokenizer: object
    formatter: object
    cfg: Config
    backend: str
    info: ModelDir
    dtype: str
    quantized: Optional[str] = None  # "4bit" / "8bit" when the base was loaded quantized

    @contextlib.contextmanager
    def base_model(self):
        """The adapter switched off: the base model, same weights in memory, same tokenizer and prompts."""
        if self.info.kind != "adapter":
            raise UserError("base_model() needs an adapter directory; load the base with load_base_for_generation")
        with self.model.disable_adapter():
            yield self.model

    def describe(self) -> dict:
        return {"path": str(self.info.path), "kind": self.info.kind, "base_model": self.info.base,
                "backend": self.backend, "dtype": self.dtype, "quantized": self.quantized}


def _load_error(what: str, path: str, e: Exception) -> UserError:
    first = (str(e).strip().splitlines() or [""])[0][:400]
    hint = ""
    if isinstance(e, OSError) and not os.path.isdir(path):
        hint = (" If this machine has no network access, use a local model directory "
                "(pass --base /path/to/base/model for an adapter).")
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


def _load_unsloth(info: ModelDir, cfg: Config, dtype, q4: bool, q8: bool):
    from .model import import_unsloth

    import_unsloth()
    from unsloth import FastLanguageModel

    # Unsloth prints its loading notes; standard output belongs to the commands' results (summaries).
    with contextlib.redirect_stdout(sys.stderr), \
            _adapter_with_base(info) if info.kind == "adapter" else contextlib.nullcontext(info.path) as name:
        try:
            model, _ = FastLanguageModel.from_pretrained(
                model_name=str(name), max_seq_length=cfg.model.max_seq_length, dtype=dtype, load_in_4bit=q4,
                load_in_8bit=q8, trust_remote_code=cfg.model.trust_remote_code)
        except Exception as e:  # a user's file that does not load: say which and why
            raise _load_error("--model", str(info.path), e) from None
    return model


def _load_transformers(info: ModelDir, cfg: Config, dtype, q4: bool, q8: bool):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    if q4 or q8:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype) if q4 else BitsAndBytesConfig(load_in_8bit=True))
    if _cuda():
        kwargs["device_map"] = {"": 0}
    src = info.base if info.kind == "adapter" else str(info.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except Exception as e:  # a user's file that does not load: say which and why
        raise _load_error("--base" if info.kind == "adapter" else "--model", src, e) from None
    if info.kind == "adapter":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(info.path))
        except Exception as e:  # a user's file that does not load: say which and why
            raise _load_error("--model", str(info.path), e) from None
    return model


def _load_tokenizer(info: ModelDir, cfg: Config, backend: str):
    from transformers import AutoTokenizer

    from .data import apply_named_template, ensure_pad_token

    src = str(info.path) if any((info.path / f).is_file() for f in TOKENIZER_FILES) else info.base
    if src is None:
        raise UserError(f"--model {info.path}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error("--model", src, e) from None
    if cfg.data.template not in ("auto", "plain") and not getattr(tok, "chat_template", None):
        if backend != "unsloth":
            raise UserError(f"data.template={cfg.data.template!r} is a named chat template, which only the unsloth "
                            f"backend can apply; the saved tokenizer in {src} has none. Use --backend unsloth")
        tok = apply_named_template(tok, cfg.data.template)
    ensure_pad_token(tok)
    return tok


def load_for_generation(model_dir, backend: Optional[str] = None, base: Optional[str] = None,
                        overrides: Optional[list[str]] = None, info: Optional[ModelDir] = None) -> Loaded:
    """Model + tokenizer + prompt formatter of a saved model directory, ready for `summarize_texts`.

    backend: "unsloth" or "transformers" (default: the backend the model was trained with).
    base: the base model of an adapter, when it is not where adapter_config.json says.
    overrides: config keys on top of the model's config.yaml, e.g. ["eval.num_beams=4"].
    """
    info = info or describe_model_dir(model_dir, base)
    cfg = model_config(info, overrides)
    backend = backend or cfg.model.backend
    if backend not in ("unsloth", "transformers"):
        raise UserError(f"--backend {backend!r}: use 'unsloth' or 'transformers'")
    if backend == "unsloth":
        from .model import import_unsloth

        with contextlib.redirect_stdout(sys.stderr):
            import_unsloth()  # before transformers is imported by anything below
    from .data import Formatter

    for p, what in ((str(info.path), "--model"), (info.base if info.kind == "adapter" else None, "base model")):
        if p:
            check_architecture(p, what, cfg.model.trust_remote_code)
    cuda = _cuda()
    q4, q8 = cfg.model.load_in_4bit and cuda, cfg.model.load_in_8bit and cuda
    if (cfg.model.load_in_4bit or cfg.model.load_in_8bit) and not cuda:
        log.info("the model was trained on a %s-bit base; this machine has no GPU, so the base is loaded unquantized",
                 "4" if cfg.model.load_in_4bit else "8")
    dtype = inference_dtype(cfg)
    load = _load_unsloth if backend == "unsloth" else _load_transformers
    model = load(info, cfg, dtype, q4, q8)
    tok = _load_tokenizer(info, cfg, backend)
    if getattr(model.config, "pad_token_id", None) != tok.pad_token_id:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    log.info("loaded %s (%s%s) on the %s backend, %s", info.path, info.kind,
             f", base {info.base}" if info.kind == "adapter" else "", backend, str(dtype).replace("torch.", ""))
    return Loaded(model, tok, Formatter(tok, cfg.data, cfg.model.max_seq_length), cfg, backend, info,
                  str(dtype).replace("torch.", ""), "4bit" if q4 else "8bit" if q8 else None)


def load_base_for_generation(loaded: Loaded) -> Loaded:
    """The base model of a merged directory (recorded by the export, or --base), with the fine-tuned
    model's tokenizer and prompt format so both see identical prompts."""
    info = loaded.info
    if not info.base:
        raise UserError(f"--compare-base: {info.path} is a merged model that does not record its base model "
                        f"(export_info.json base_model); pass --base /path/to/base/model")
    base_info = ModelDir(Path(info.base), "merged")
    if os.path.isdir(info.base):
        _check_full_model_dir(Path(info.base), "--base")
        check_architecture(info.base, "--base", loaded.cfg.model.trust_remote_code)
    dtype = inference_dtype(loaded.cfg)
    load = _load_unsloth if loaded.backend == "unsloth" else _load_transformers
    model = load(base_info, loaded.cfg, dtype, loaded.quantized == "4bit", loaded.quantized == "8bit")
    model.config.pad_token_id = loaded.tokenizer.pad_token_id
    model.eval()
    return Loaded(model, loaded.tokenizer, loaded.formatter, loaded.cfg, loaded.backend, base_info, loaded.dtype,
                  loaded.quantized)


def default_max_new_tokens(loaded: Loaded) -> tuple[int, str]:
    """The generation budget and where it came from: eval.max_new_tokens, else what the model was
    validated with during training, else derived from the training summaries' lengths."""
    import math

    from .generation import derive_max_new_tokens

    ev = loaded.cfg.eval
    if ev.max_new_tokens:
        return ev.max_new_tokens, "eval.max_new_tokens"
    m = loaded.info.metrics
    n = ((m.get("eval_protocol") or {}).get("decoding") or {}).get("max_new_tokens")
    if isinstance(n, int) and n > 0:
        return n, "metrics.json eval_protocol (as validated during training)"
    p95 = (((m.get("data") or {}).get("train") or {}).get("summary_tokens") or {}).get("p95")
    if isinstance(p95, (int, float)) and p95 > 0:
        return int(math.ceil(p95 * 1.5)) + 8, "1.5 x p95 of the training summaries' token lengths + 8"
    return derive_max_new_tokens([], ev), "default (no lengths recorded; set eval.max_new_tokens)"


def summarize_texts(loaded: Loaded, texts: list[str], max_new_tokens: Optional[int] = None,
                    batch_size: Optional[int] = None, model=None, progress=None):
    """Generated summaries (generation.Generated: text, new_tokens, hit_max, truncated_input), in order."""
    from .generation import generate

    n = max_new_tokens or default_max_new_tokens(loaded)[0]
    return generate(model or loaded.model, loaded.tokenizer, loaded.formatter, list(texts), loaded.cfg.eval, n,
                    loaded.backend, batch_size=batch_size, seed=loaded.cfg.eval.sample_seed, progress=progress)

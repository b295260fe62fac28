"""What a model directory is, decided from its files alone (no torch): the one description used by
training (`model.name`) and by evaluate / summarize / export (`--model`, `--base`).

    a full model     config.json + weights (model.safetensors, sharded, or pytorch_model.bin)
    a LoRA adapter   adapter_config.json + adapter_model.safetensors; its base named in adapter_config.json
    (+ beside either, when this project wrote it: config.yaml, metrics.json, run_info.json, export_info.json)

Every problem (missing weights, not a causal LM, an architecture transformers does not know, an adapter
whose base is gone) is a `UserError` naming the directory, the file and what to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..config import is_local_path
from ..contracts import RunMetrics, optional_model_file
from ..errors import UserError
from ..layout import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    EXPORT_INFO,
    FULL_WEIGHTS,
    METRICS_FILE,
    SHARD_PATTERNS,
)
from ..untrusted import Obj, read_json
from .device import cpu_4bit_ready

log = logging.getLogger("llm_summarizer.models")


@dataclass
class ModelDir:
    """What a saved model directory holds, found from its files alone (no torch)."""

    path: Path
    kind: str  # "adapter" or "merged"
    base: Optional[str] = None  # adapter: the base to load; merged: the base recorded by the export
    base_recorded: Optional[str] = None  # as written in adapter_config.json / export_info.json
    config_yaml: Optional[Path] = None
    metrics: Optional[RunMetrics] = None  # the run's metrics.json, when present

    @property
    def name(self) -> str:
        return self.path.resolve().name


def read_metrics(p: Path) -> Optional[RunMetrics]:
    """The folder's metrics.json, when present and sound; a damaged or hostile one is left out with a warning
    (every command works without it: it holds the validated generation budget and the training scores)."""
    f = p / METRICS_FILE
    if not f.is_file():
        return None
    try:
        return RunMetrics.read(f)
    except UserError as e:
        log.warning(
            "%s; going on without it (the generation budget validated in training and the training scores in reports "
            "and cards are left out)",
            e,
        )
        return None


def _read_json(p: Path, what: str) -> dict:
    """A JSON object file of the folder (adapter_config.json, config.json), read as untrusted input."""
    try:
        return read_json(p, Obj(), str(p))
    except UserError as e:
        raise UserError(f"{what}: {e}. Is the directory complete?") from None


def _check_full_model_dir(p: Path, what: str) -> None:
    if not (p / "config.json").is_file():
        raise UserError(
            f"{what}: {p} has no config.json (a full model) and no adapter_config.json (a LoRA "
            f"adapter); is it a model directory?"
        )
    if not any((p / w).is_file() for w in FULL_WEIGHTS):
        raise UserError(
            f"{what}: {p} has config.json but no weights ({', '.join(FULL_WEIGHTS[::2])}); "
            f"the save or copy did not finish"
        )


def resolve_base(recorded: Optional[str], adapter_dir: Path, override: Optional[str], what: str) -> str:
    """The base model an adapter is loaded onto: --base, else the recorded one (found from the
    current directory or beside the adapter), else a hub id."""
    if override:
        p = os.path.expanduser(override)
        if is_local_path(override) and not os.path.isdir(p):
            raise UserError(f"--base {override}: directory not found")
        if os.path.isdir(p):
            _check_full_model_dir(Path(p), f"--base {override}")
        return p
    if not recorded:
        raise UserError(
            f"{what}: {adapter_dir / ADAPTER_CONFIG} names no base model (base_model_name_or_path); "
            f"pass --base /path/to/base/model"
        )
    rec = os.path.expanduser(recorded)
    candidates = [Path(rec)]
    if not os.path.isabs(rec):
        candidates += [adapter_dir / rec, adapter_dir.parent / rec]
    for c in candidates:
        if c.is_dir():
            _check_full_model_dir(c, f"{what}: base model of the adapter")
            return str(c) if c == Path(rec) else str(c.resolve())
    if is_local_path(recorded):
        raise UserError(
            f"{what}: {adapter_dir} is a LoRA adapter whose base model {recorded} is not found "
            f"(looked in: {', '.join(str(c) for c in candidates)}). Restore the base model there, "
            f"pass --base /path/to/base/model, or use a merged model directory"
        )
    return recorded  # a hub id; loading says what to do when it cannot be fetched


def describe_model_dir(path, base: Optional[str] = None, what: str = "--model") -> ModelDir:
    """Validate a saved model directory from its files; raises UserError naming what is wrong."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"{what} {path}: directory not found")
    if not p.is_dir():
        raise UserError(f"{what} {path}: is a file; expected a model directory (an adapter or a merged model)")
    cfg_yaml = p / CONFIG_FILE
    metrics = read_metrics(p)
    if (p / ADAPTER_CONFIG).is_file():
        ac = _read_json(p / ADAPTER_CONFIG, what)
        if not any((p / w).is_file() for w in ADAPTER_WEIGHTS):
            raise UserError(
                f"{what} {path}: has adapter_config.json but no adapter weights "
                f"({' or '.join(ADAPTER_WEIGHTS)}); the save or copy did not finish"
            )
        recorded = ac.get("base_model_name_or_path")
        if recorded is not None and not isinstance(recorded, str):
            raise UserError(
                f"{what}: {p / ADAPTER_CONFIG} key base_model_name_or_path is {recorded!r}; expected the base "
                f"model's path or hub id (a string). Pass --base /path/to/base/model"
            )
        return ModelDir(
            p,
            "adapter",
            resolve_base(recorded, p, base, what),
            recorded,
            cfg_yaml if cfg_yaml.is_file() else None,
            metrics,
        )
    _check_full_model_dir(p, f"{what} {path}")
    export_info = optional_model_file(p / EXPORT_INFO, "the base model it records: --compare-base needs --base", log)
    recorded = (export_info or {}).get("base_model")
    b = base or recorded
    if b and (base or os.path.isdir(os.path.expanduser(b)) or not is_local_path(b)):
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
    model_type = conf.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES and not (trust_remote_code and conf.get("auto_map")):
        raise UserError(
            f"{what}: {p}/config.json has model_type {model_type!r}, which transformers "
            f"{_version('transformers')} does not know; use a supported causal LM (llama, qwen2, "
            f"mistral, gemma, phi3, ...) or upgrade transformers"
        )
    archs = conf.get("architectures") or []
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    if (archs and not causal_arch) or (
        model_type in CONFIG_MAPPING_NAMES and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        archs = ", ".join(archs or [model_type])
        raise UserError(
            f"{what}: {p} is a {archs}, not a causal language model (model_type {model_type}); "
            f"summarization here needs a decoder model (...ForCausalLM)"
        )
    q = conf.get("quantization_config") or {}
    if q.get("quant_method") == "bitsandbytes" and not torch.cuda.is_available():
        why = "8-bit weights need a CUDA GPU" if q.get("load_in_8bit") else cpu_4bit_ready()
        if why:
            raise UserError(
                f"{what}: {p} is stored quantized with bitsandbytes and this machine has no CUDA GPU "
                f"({why}). Use a 16-bit model directory on the CPU"
            )


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


def weight_files(path: Path) -> list[str]:
    """The weight files of a model or adapter directory, shards included, by name."""
    names = [n for n in ADAPTER_WEIGHTS + FULL_WEIGHTS if (path / n).is_file()]
    return names + sorted(p.name for pat in SHARD_PATTERNS for p in path.glob(pat))

"""merged-16bit: the LoRA adapter folded into the base weights, saved in 16 bits, checked by plain transformers.

The dtype is a function of the base checkpoint only, never of the machine (see DTYPE_RULE).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import ExportFailed
from ..layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE
from .job import DTYPES16, Job
from .verify import check_text, compare, run_worker

log = logging.getLogger("llm_summarizer.export")


def stored_dtype(path: Optional[str]) -> Optional[str]:
    """The dtype a model directory's config.json records (None when it records none)."""
    if not path or not (Path(path) / "config.json").is_file():
        return None
    conf = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return conf.get("dtype") or conf.get("torch_dtype")


DTYPE_RULE = (
    "the base checkpoint's own 16-bit dtype (bfloat16 or float16); float16 for a float32 base or one that "
    "does not record its dtype; --dtype overrides. The same on every machine: the CPU's or GPU's bfloat16 "
    "support does not enter into it"
)


def merged_dtype(loaded, requested: str = "auto") -> tuple[str, str]:
    """(dtype name, why) of a merged-16bit export: a function of the base checkpoint, never of the hardware."""
    if requested != "auto":
        return requested, f"--dtype {requested}"
    stored = stored_dtype(loaded.info.base)
    if stored in DTYPES16:
        return stored, f"the base checkpoint is {stored}"
    return "float16", (
        f"the base checkpoint is {stored}" if stored else "the base checkpoint records no dtype"
    ) + ", so float16 (the project's rule for float32 bases)"


def _written_dtype(dst: Path) -> Optional[str]:
    """The floating-point dtype the saved weights hold (the first floating tensor's), from safetensors headers."""
    files = sorted(dst.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                t = st.get_slice(k).get_dtype()
                if t in ("F16", "BF16", "F32", "F64"):
                    return {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}[t]
    return None


def _recast(dst: Path, dtype: str) -> None:
    """Cast every floating tensor of the saved safetensors to `dtype`, and say so in config.json."""
    target = getattr(torch, dtype)
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(str(f))
        save_file(
            {k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()},
            str(f),
            metadata={"format": "pt"},
        )
    conf_path = dst / "config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in conf:
            conf[key] = dtype
    conf_path.write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")


def _peft_merge(loaded, dst: Path, dtype: str) -> str:
    merged = loaded.model.merge_and_unload()  # in the loaded dtype (float32 on a CPU), then one rounding
    merged = merged.to(getattr(torch, dtype))
    merged.config.pad_token_id = loaded.tokenizer.pad_token_id
    merged.save_pretrained(str(dst), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(dst))
    return f"PEFT merge_and_unload, cast to {dtype}"


def merge_16bit(loaded, dst: Path, scratch: Path, dtype: str) -> str:
    """Fold the adapter into the base weights and save them in `dtype`; returns how it was done.

    On a GPU the unsloth backend uses Unsloth's save_pretrained_merged. On a CPU Unsloth's version is a
    PEFT merge whose final cast follows the CPU's bfloat16 support (bfloat16 on AVX512-BF16/AMX machines,
    float16 elsewhere), so there the merge is PEFT's, cast once to the project's dtype, on either backend.
    """
    dst.mkdir(parents=True, exist_ok=True)
    if loaded.backend != "unsloth" or not torch.cuda.is_available():
        how = _peft_merge(loaded, dst, dtype)
        return how + (
            " (Unsloth's CPU merge is the same PEFT merge with a hardware-dependent cast)"
            if loaded.backend == "unsloth"
            else ""
        )
    try:
        loaded.model.save_pretrained_merged(
            str(dst),
            loaded.tokenizer,
            save_method="merged_16bit",
            temporary_location=str(scratch / "unsloth-buffers"),
            safe_serialization=None,
        )  # None pins safetensors on small machines
        if not any((dst / w).is_file() for w in ("model.safetensors", "model.safetensors.index.json")):
            raise RuntimeError(f"no safetensors weights in {dst} after saving")
    except Exception as e:  # a fallback that says why, rather than no export at all
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
        log.warning("Unsloth's save_pretrained_merged failed (%s); falling back to PEFT merge_and_unload", reason)
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        return _peft_merge(loaded, dst, dtype) + f" (fallback: Unsloth's save_pretrained_merged failed: {reason})"
    how = "Unsloth save_pretrained_merged (merged_16bit)"
    written = _written_dtype(dst)
    if written != dtype:
        _recast(dst, dtype)
        how += f", then cast from {written} to {dtype}"
    return how


_LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")


def stream_plan(base_dir: str, adapter_dir: Path) -> tuple[Optional[dict], str]:
    """({base tensor name: adapter module}, "") when the adapter can be folded into the base's files shard by shard,
    else (None, why not). Reads configs and safetensors headers only."""
    ac = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    for key, ok in (("use_dora", False), ("bias", "none"), ("fan_in_fan_out", False)):
        if ac.get(key, ok) not in (ok, None):
            return None, f"adapter_config.json {key}={ac.get(key)!r}"
    for key in ("modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform"):
        if ac.get(key):
            return None, f"adapter_config.json sets {key}"
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        return None, f"no {ADAPTER_WEIGHTS[0]} in {adapter_dir}"
    with safe_open(str(weights), framework="pt") as st:
        names = list(st.keys())
    modules = {}
    for k in names:
        m = _LORA_KEY.fullmatch(k)
        if not m:
            return None, f"adapter tensor {k} is not a LoRA A/B matrix"
        modules[m.group(1) + ".weight"] = m.group(1)
    base_names = set()
    for f in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            base_names.update(st.keys())
    missing = sorted(set(modules) - base_names)
    if missing:
        return None, f"the base's files have no tensor {missing[0]} (named otherwise in the checkpoint)"
    return modules, ""


def stream_merge(base_dir: str, adapter_dir: Path, dst: Path, dtype: str, tokenizer) -> str:
    """Fold the adapter into the base's 16-bit weights one safetensors shard at a time: W + (alpha / r) * B @ A in
    float32, then one rounding to `dtype`, as PEFT's merge of a float32 model does; the other tensors are cast. CPU
    memory holds one shard and the small adapter; no whole model is ever loaded."""
    modules, why = stream_plan(base_dir, adapter_dir)
    if modules is None:
        raise ExportFailed(
            f"the adapter cannot be merged shard by shard ({why}); use --merge load. Nothing was written."
        )
    ac = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    r, alpha = ac["r"], ac.get("lora_alpha", ac["r"])
    scale = alpha / math.sqrt(r) if ac.get("use_rslora") else alpha / r
    lora = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS[0]))
    target = getattr(torch, dtype)
    dst.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for shard in sorted(Path(base_dir).glob("*.safetensors")):
        tensors = load_file(str(shard))
        for name, t in tensors.items():
            module = modules.get(name)
            if module is not None:
                a = lora[f"base_model.model.{module}.lora_A.weight"].float()
                b = lora[f"base_model.model.{module}.lora_B.weight"].float()
                t = t.float() + (b @ a) * scale
            tensors[name] = t.to(target) if t.is_floating_point() else t
        save_file(tensors, str(dst / shard.name), metadata={"format": "pt"})
        sizes[shard.name] = sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index = Path(base_dir) / "model.safetensors.index.json"
    if index.is_file():
        idx = json.loads(index.read_text(encoding="utf-8"))
        idx.setdefault("metadata", {})["total_size"] = sum(sizes.values())
        (dst / index.name).write_text(json.dumps(idx, indent=2) + "\n", encoding="utf-8")
    conf = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    conf["dtype"] = dtype
    conf.pop("torch_dtype", None)
    conf["pad_token_id"] = tokenizer.pad_token_id
    (dst / "config.json").write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")
    if (Path(base_dir) / "generation_config.json").is_file():
        shutil.copy2(Path(base_dir) / "generation_config.json", dst / "generation_config.json")
    tokenizer.save_pretrained(str(dst))
    return f"merged shard by shard from the base's safetensors files (float32 merge, cast to {dtype})"


def release(loaded) -> None:
    """Free the source model (an export holds one model at a time: the check's process loads its own)."""
    loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def merge_and_check(job: Job, dst: Path, write_metadata) -> None:
    """Merge the adapter into `dst` (into the loaded model, or shard by shard from the base's files: job.memory
    says which) and check it in a plain-transformers process against the adapter, the source model freed first."""
    target, why = merged_dtype(job.loaded, job.options.dtype)
    if job.memory is not None and job.memory.merge == "stream":
        release(job.loaded)
        job.meta["method"] = stream_merge(job.loaded.info.base, job.info.path, dst, target, job.loaded.tokenizer)
    else:
        job.meta["method"] = merge_16bit(job.loaded, dst, job.scratch, target)
        release(job.loaded)
    job.meta["dtype_rule"] = f"{target}: {why}. Rule: {DTYPE_RULE}"
    write_metadata(dst)
    res = run_worker(
        {
            "action": "greedy",
            "model_dir": str(dst),
            "config": str(dst / CONFIG_FILE),
            "documents": job.docs,
            "max_new_tokens": job.max_new_tokens,
            "score": job.reference,
            "load": job.memory.load_kwargs() if job.memory is not None else None,
        },
        job.scratch,
        "loading the merged model",
    )
    job.check.update(
        compare(
            job.reference,
            res["texts"],
            job.docs,
            "the merged model (plain transformers AutoModelForCausalLM)",
            job.ref_logprobs,
            res["logprobs"],
            job.options.logprob_tolerance,
        )
    )
    job.meta["dtype"] = res["dtype"]
    job.merged_texts = res["texts"]
    if res["dtype"] != target:
        raise ExportFailed(f"the merged weights load as {res['dtype']}, expected {target}. Nothing was written.")
    job.check["summary"] = check_text(
        job.check,
        len(job.docs),
        f"plain transformers AutoModelForCausalLM loads the merged weights ({res['dtype']})",
        job.docs_source,
    )


def merged_source(job: Job, write_metadata) -> Path:
    """A checked merged 16-bit model to build on (merged-4bit, gguf): the source itself when it is already
    merged, else the adapter merged into the scratch space. The source model is freed afterwards."""
    if job.info.kind == "adapter":
        merged = job.scratch / "merged-16bit"
        merge_and_check(job, merged, write_metadata)
    else:
        merged = job.info.path
        job.meta["method"] = "already merged"
        release(job.loaded)  # the next steps run in other processes
    return merged


def write(job: Job, write_metadata) -> None:
    """--format merged-16bit"""
    merge_and_check(job, job.tmp, write_metadata)

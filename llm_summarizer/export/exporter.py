"""export_model(): one saved model directory in, one checked export out, or nothing at all.

A new format is one module with `write(job, write_metadata)` (and an optional `preflight(options)` that
refuses before anything is loaded), added to FORMATS below.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .. import hub, progress
from ..config_loading import config_to_yaml
from ..contracts import optional_model_file
from ..environment import package_versions
from ..errors import UserError
from ..evaluation.modelcard import write_model_card
from ..files import atomic_directory, scratch_beside, write_json
from ..layout import CONFIG_FILE, EXPORT_INFO, METRICS_FILE, MODEL_CARD, RUN_INFO_FILE
from ..models.device import current
from ..models.generation import default_max_new_tokens, inference_mode, summarize_texts
from ..models.loading import load_for_generation, model_config, saved_model
from ..paths import Place, check_places
from . import adapter, gguf, merged, quantized
from .job import DTYPES16, FORMAT_NAMES, ExportOptions, Job
from .memory import ExportMemory, plan_export
from .verify import completion_logprobs, run_worker, verification_documents

log = logging.getLogger("llm_summarizer.export")


@dataclass(frozen=True)
class Format:
    write: Callable  # (job, write_metadata) -> None: writes job.tmp, fills job.meta / job.check
    sources: tuple  # the kinds of model directory it accepts: "adapter", "merged"
    card: str  # the model card's kind
    preflight: Optional[Callable] = None  # (options) -> tools; refuses before anything is loaded


FORMATS = {
    "adapter": Format(adapter.write, ("adapter",), "adapter"),
    "merged-16bit": Format(merged.write, ("adapter",), "merged"),
    "merged-4bit": Format(quantized.write, ("adapter", "merged"), "merged", quantized.preflight),
    "gguf": Format(gguf.write, ("adapter", "merged"), "gguf", gguf.preflight),
}
assert tuple(FORMATS) == FORMAT_NAMES


@dataclass
class ExportResult:
    output_dir: Path
    info: dict
    hub_url: Optional[str] = None


def default_output(info, fmt: str) -> Path:
    return info.path.parent / f"{info.name}-{fmt}"


def _write_metadata(dst: Path, loaded, fmt: str, copied: tuple = ()) -> None:
    """config.yaml (the prompt format and budgets for summarize/evaluate) and the run's metrics.json."""
    cfg = loaded.cfg.model_copy(deep=True)
    if fmt != "adapter":
        cfg.model.load_in_4bit = False  # the weights say how they are stored; nothing to quantize on load
        cfg.model.load_in_8bit = False
    (dst / CONFIG_FILE).write_text(config_to_yaml(cfg), encoding="utf-8")
    src = loaded.info.path
    for name in copied:  # the run's records that were read sound (a damaged one was named and left out)
        shutil.copy2(src / name, dst / name)


def _write_card(dst: Path, loaded, kind: str, info: dict, run_info: Optional[dict]) -> None:
    model_info = (run_info or {}).get("model") or {}
    write_model_card(dst / MODEL_CARD, loaded.cfg, loaded.info.metrics, model_info, kind=kind, export_info=info)


def _preflight(fmt: str, info, target: Path, overwrite: bool, options: ExportOptions):
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    options.check()
    if options.dtype not in ("auto",) + DTYPES16:
        raise UserError(f"--dtype {options.dtype!r}: one of auto, {', '.join(DTYPES16)}")
    if info.kind not in FORMATS[fmt].sources:
        raise UserError(
            f"{info.path} is already a merged model; --format {fmt} needs a LoRA adapter directory "
            f"(merged-4bit and gguf accept a merged model)"
        )
    base = info.base if info.kind == "adapter" else info.base_recorded
    check_places(
        [Place("--output", target, "export", replaced=True)],
        [
            ("the model directory", info.path),
            ("its base model", base if base and os.path.isdir(base) else None),
            ("--verify-data", options.verify_data),
        ],
    )
    if target.exists() and not overwrite:
        raise UserError(
            f"--output {target} already exists; pass --overwrite to replace it (only once the new "
            f"export is complete and checked), or choose another --output"
        )
    return FORMATS[fmt].preflight(options) if FORMATS[fmt].preflight else None


def export_model(
    model_dir,
    fmt: str,
    output=None,
    backend: Optional[str] = None,
    base: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    overwrite: bool = False,
    push_to_hub: Optional[bool] = None,
    hub_model_id: Optional[str] = None,
    hub_private: Optional[bool] = None,
    options: Optional[ExportOptions] = None,
    **option_values,
) -> ExportResult:
    """Export a saved model directory; the Python face of `llm-summarizer export`.

    Options are an ExportOptions or its fields as keywords (verify_examples=4, dtype="bfloat16", ...).
    Raises UserError for bad input (before anything is written) and ExportFailed when the export does not
    behave like its source (nothing is left behind)."""
    t0 = time.time()
    options = options or ExportOptions(**option_values)
    # 1. Everything checkable without loading the model, before anything is written.
    info = saved_model(model_dir, base)
    run_info = optional_model_file(info.path / RUN_INFO_FILE, "the training details in the model card", log)
    copied = tuple(n for n, sound in ((METRICS_FILE, info.metrics), (RUN_INFO_FILE, run_info)) if sound is not None)
    cfg0 = model_config(info, overrides)
    target = Path(output) if output else default_output(info, fmt)
    tools = _preflight(fmt, info, target, overwrite, options)
    push = cfg0.output.push_to_hub if push_to_hub is None else push_to_hub
    repo = hub_model_id or cfg0.output.hub_model_id
    private = cfg0.output.hub_private if hub_private is None else hub_private
    if push:
        if not repo:
            raise UserError("--push-to-hub needs --hub-model-id namespace/name (or output.hub_model_id in config.yaml)")
        hub.require_token()
    # 2. Where its models go (one at a time; said before anything loads), then the model with 16-bit base weights
    # (what a merge folds the adapter into), decoding greedy.
    memory = export_memory(info, fmt, options)
    log.info("%s", memory.describe(fmt))
    if memory.placement == "offload" and (backend or cfg0.model.backend) == "unsloth":
        log.info("the source loads on the transformers backend: Unsloth places every layer on the GPU")
        backend = "transformers"
    forced = ["model.load_in_4bit=false", "model.load_in_8bit=false", "eval.num_beams=1", "eval.do_sample=false"]
    loaded = load_for_generation(
        model_dir, backend, base, list(overrides or []) + forced, info=info, placement=memory.load_kwargs() or None
    )
    max_new = default_max_new_tokens(loaded)[0]
    # 3. The fixed documents.
    docs, docs_source = verification_documents(loaded.cfg, options.verify_examples, options.verify_data)
    base_model = info.base if info.kind == "adapter" else info.base_recorded
    meta = {
        "format": fmt,
        "source": str(info.path.resolve()),
        "source_kind": info.kind,
        "base_model": str(Path(base_model).resolve()) if base_model and os.path.isdir(base_model) else base_model,
        "backend": loaded.backend,
        "memory": memory.record(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
    }
    with atomic_directory(target, owner="export") as tmp, scratch_beside(target) as scratch:
        job = Job(
            fmt,
            options,
            loaded,
            tmp,
            scratch,
            docs,
            docs_source,
            max_new,
            meta=meta,
            tools=tools,
            memory=memory,
            check={
                "documents": len(docs),
                "documents_source": docs_source,
                "max_new_tokens": max_new,
                "decoding": "greedy",
            },
        )
        # 4. The source model's own greedy summaries of them: the reference every export must reproduce.
        _reference(job)

        def write_metadata(d: Path) -> None:
            _write_metadata(d, loaded, fmt, copied)

        write_metadata(tmp)
        # 5. The format writes the export into the temporary directory and checks it the way users will load it.
        FORMATS[fmt].write(job, write_metadata)
        meta["verification"] = job.check
        meta["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / EXPORT_INFO, meta)
        _write_card(tmp, loaded, FORMATS[fmt].card, meta, run_info)
    log.info("exported %s -> %s (%s); %s", info.path, target, fmt, job.check["summary"])
    # 6. The hub, when asked: the export is complete locally whatever happens there.
    url = hub.push_folder(target, repo, private) if push else None
    return ExportResult(target, meta, url)


def export_memory(info, fmt: str, options: ExportOptions) -> ExportMemory:
    """Where the export's models go on this device: the 16-bit model is the adapter's base (folded into for every
    format but adapter) or the merged source itself."""
    merges = info.kind == "adapter" and fmt != "adapter"
    sixteen = info.base if info.kind == "adapter" else str(info.path)
    return plan_export(current(), sixteen, info.path if merges else None, options.merge)


def _reference(job: Job) -> None:
    loaded = job.loaded
    if job.info.kind == "adapter":
        n = len(job.docs)
        with progress.bar(n, f"export check: the adapter's summaries of {n} fixed documents", "summary") as b:
            job.reference = [
                g.text
                for g in summarize_texts(
                    loaded, job.docs, job.max_new_tokens, progress=lambda done, _t: b.update_to(done)
                )
            ]
        with inference_mode(loaded.model, loaded.tokenizer, loaded.backend):
            job.ref_logprobs = completion_logprobs(
                loaded.model, loaded.formatter, job.docs, job.reference, job.max_new_tokens
            )
        return
    _write_metadata(job.scratch, loaded, job.fmt)
    src = run_worker(
        {
            "action": "greedy",
            "model_dir": str(job.info.path),
            "config": str(job.scratch / CONFIG_FILE),
            "documents": job.docs,
            "max_new_tokens": job.max_new_tokens,
            "load": job.memory.load_kwargs() if job.memory is not None else None,
        },
        job.scratch,
        "loading the source model",
    )
    job.reference, job.ref_logprobs = src["texts"], src["logprobs"]

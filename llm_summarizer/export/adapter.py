"""adapter: the LoRA adapter + tokenizer with its base resolved, checked by plain transformers + PEFT."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE, TOKENIZER_FILES
from .job import Job
from .merged import release
from .verify import check_text, compare, run_worker


def _copy_adapter(loaded, dst: Path) -> str:
    src = loaded.info.path
    for name in ADAPTER_WEIGHTS + TOKENIZER_FILES + ("special_tokens_map.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    ac = json.loads((src / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = loaded.info.base
    ac["base_model_name_or_path"] = str(Path(base).resolve()) if os.path.isdir(base) else base
    (dst / ADAPTER_CONFIG).write_text(json.dumps(ac, indent=2), encoding="utf-8")
    if not any((dst / f).is_file() for f in TOKENIZER_FILES):
        loaded.tokenizer.save_pretrained(str(dst))
    return "copied adapter files, base_model_name_or_path resolved to " + ac["base_model_name_or_path"]


def write(job: Job, write_metadata) -> None:
    """--format adapter"""
    job.meta["method"] = _copy_adapter(job.loaded, job.tmp)
    release(job.loaded)  # one model at a time: the check's process loads its own
    res = run_worker(
        {
            "action": "greedy-adapter",
            "model_dir": str(job.tmp),
            "base": job.info.base,
            "config": str(job.tmp / CONFIG_FILE),
            "dtype": job.loaded.dtype,
            "documents": job.docs,
            "max_new_tokens": job.max_new_tokens,
            "score": job.reference,
            "load": job.memory.load_kwargs() if job.memory is not None else None,
        },
        job.scratch,
        "loading the exported adapter",
    )
    job.check.update(
        compare(
            job.reference,
            res["texts"],
            job.docs,
            "the exported adapter (plain transformers + PEFT)",
            job.ref_logprobs,
            res["logprobs"],
            job.options.logprob_tolerance,
        )
    )
    job.check["summary"] = check_text(job.check, len(job.docs), "plain transformers + PEFT loads it", job.docs_source)

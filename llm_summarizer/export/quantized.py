"""merged-4bit: the merged model quantized to bitsandbytes NF4 (on a CUDA GPU, or on a CPU where bitsandbytes
quantizes there), checked by agreement."""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from ..errors import ExportFailed, UserError
from ..layout import CONFIG_FILE
from ..models.device import cpu_4bit_ready
from .job import Job
from .merged import merged_source, stored_dtype
from .verify import agreement, logprob_gaps, run_worker


def _bitsandbytes_ready() -> Optional[str]:
    """None when 4-bit quantization can run here, else why not."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    if not torch.cuda.is_available():
        why = cpu_4bit_ready()
        return f"this machine has no CUDA GPU and {why}" if why else None
    return None


def preflight(options) -> None:
    why = _bitsandbytes_ready()
    if why:
        raise UserError(
            f"--format merged-4bit quantizes with bitsandbytes, which cannot run here: {why}. Use "
            f"--format merged-16bit (and load that with model.load_in_4bit where bitsandbytes runs). "
            f"Nothing was written."
        )


def write(job: Job, write_metadata) -> None:
    """--format merged-4bit"""
    merged = merged_source(job, write_metadata)
    run_worker(
        {"action": "quantize-4bit", "model_dir": str(merged), "dest": str(job.tmp), "dtype": stored_dtype(str(merged))},
        job.scratch,
        "4-bit quantization",
    )
    res = run_worker(
        {
            "action": "greedy",
            "model_dir": str(job.tmp),
            "config": str(job.tmp / CONFIG_FILE),
            "documents": job.docs,
            "max_new_tokens": job.max_new_tokens,
            "score": job.reference,
        },
        job.scratch,
        "loading the 4-bit model",
    )
    agree = agreement(job.reference, res["texts"])
    job.check["rougeL_agreement"] = round(agree, 4)
    job.check["max_logprob_diff_per_token_4bit"] = round(max(logprob_gaps(job.ref_logprobs, res["logprobs"])), 6)
    if agree < job.options.min_4bit_agreement or any(not t.strip() for t in res["texts"]):
        raise ExportFailed(
            f"the 4-bit model's greedy summaries agree with the adapter's only to ROUGE-L "
            f"{agree:.3f} (< --min-4bit-agreement {job.options.min_4bit_agreement}) or some are "
            f"empty. Nothing was written."
        )
    job.meta["dtype"] = "nf4 (bitsandbytes)"
    job.meta["method"] += "; bitsandbytes NF4 quantization with double quantization"
    job.check["summary"] = (
        f"plain transformers loads the 4-bit model; its greedy summaries agree with the "
        f"adapter's to mean ROUGE-L {agree:.3f} on {len(job.docs)} fixed documents"
    )

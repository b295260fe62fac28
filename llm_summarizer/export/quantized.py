"""merged-4bit: the merged model quantized to bitsandbytes NF4 (on a CUDA GPU, or on a CPU where bitsandbytes
quantizes there), checked by agreement."""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
from safetensors.torch import load_file

from ..errors import ExportFailed, UserError
from ..layout import CONFIG_FILE
from ..models.device import cpu_4bit_ready
from .gguf import describe, passes, teacher_forced
from .job import Job
from .merged import merged_source, stored_dtype
from .verify import agreement, logprob_gaps, next_token_agreement, run_worker


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
    """--format merged-4bit: judged like a quantized GGUF file, by what quantization is meant to change: the 4-bit
    model's next-token distributions against the merged 16-bit model's (float32), teacher-forced on the source's
    summaries of the fixed documents (mean KL per token, share of positions with the same top token), within
    limits measured on a real model (job.NF4_LIMITS). Greedy agreement is recorded as an illustration: one
    flipped near-tie rewrites a whole greedy summary."""
    merged = merged_source(job, write_metadata)
    run_worker(
        {"action": "quantize-4bit", "model_dir": str(merged), "dest": str(job.tmp), "dtype": stored_dtype(str(merged))},
        job.scratch,
        "4-bit quantization",
    )
    seqs, starts = teacher_forced(job)
    reference, four_bit = distributions(job, [merged, job.tmp], seqs, starts)
    stats = next_token_agreement(reference, four_bit)
    max_kl, min_top1, source = job.options.nf4_limits()
    res = run_worker(
        {
            "action": "greedy",
            "model_dir": str(job.tmp),
            "config": str(job.tmp / CONFIG_FILE),
            "documents": job.docs,
            "max_new_tokens": job.max_new_tokens,
            "score": job.reference,
            "load": job.memory.load_kwargs() if job.memory is not None else None,
        },
        job.scratch,
        "loading the 4-bit model",
    )
    agree = agreement(job.reference, res["texts"])
    job.check.update(
        nf4_mean_kl=round(stats["mean_kl"], 6),
        nf4_max_kl=round(stats["max_kl"], 6),
        nf4_top1_agreement=round(stats["top1_agreement"], 4),
        nf4_positions=stats["positions"],
        nf4_limits={"max_mean_kl": max_kl, "min_top1": min_top1, "source": source},
        rougeL_agreement=round(agree, 4),
        greedy_role="an illustration: one flipped near-tie rewrites the rest of a greedy summary",
        max_logprob_diff_per_token_4bit=round(max(logprob_gaps(job.ref_logprobs, res["logprobs"])), 6),
    )
    measured = describe("nf4", stats, max_kl, min_top1)
    if not passes(stats, max_kl, min_top1):
        raise ExportFailed(
            f"NF4 changes the merged model's next-token distributions more than allowed ({source}), teacher-forced "
            f"on {len(seqs)} fixed documents' summaries: {measured}. Export merged-16bit instead (and load it with "
            f"model.load_in_4bit where 4 bits are needed), or loosen --max-4bit-kl / --min-4bit-top1. "
            f"Nothing was written."
        )
    if any(not t.strip() for t in res["texts"]):
        raise ExportFailed("the 4-bit model wrote an empty summary of a fixed document. Nothing was written.")
    if job.options.min_4bit_agreement is not None and agree < job.options.min_4bit_agreement:
        raise ExportFailed(
            f"the 4-bit model's greedy summaries agree with the adapter's only to ROUGE-L {agree:.3f} "
            f"(< --min-4bit-agreement {job.options.min_4bit_agreement}). Nothing was written."
        )
    job.meta["dtype"] = "nf4 (bitsandbytes)"
    job.meta["method"] += "; bitsandbytes NF4 quantization with double quantization"
    job.check["summary"] = (
        f"plain transformers loads the 4-bit model; {measured}; its greedy summaries agree with the adapter's "
        f"to mean ROUGE-L {agree:.3f} on {len(job.docs)} fixed documents (an illustration)"
    )


def distributions(job: Job, model_dirs: list, seqs: list, starts: list) -> list[list]:
    """Each saved model's next-token log-probabilities at the summary positions, from plain transformers in float32
    (a 4-bit directory: its NF4 layers as stored), one after another in one separate process."""
    dests = [job.scratch / f"next-token-{i}.safetensors" for i in range(len(model_dirs))]
    run_worker(
        {
            "action": "next-token",
            "models": [[str(m), str(d)] for m, d in zip(model_dirs, dests)],
            "sequences": seqs,
            "starts": starts,
        },
        job.scratch,
        "computing the merged and the 4-bit model's next-token distributions",
    )
    out = []
    for d in dests:
        tensors = load_file(str(d))
        d.unlink()
        out.append([tensors[f"seq{i}"] for i in range(len(seqs))])
    return out

"""What every export format works on: the source model, the fixed documents with the source's own greedy
summaries of them (the reference), the directory being written, and the record that becomes
export_info.json. The format writers (adapter.py, merged.py, quantized.py, gguf.py) fill it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError

# Names the command line offers; the exporter's FORMATS table maps each format to its writer.
FORMAT_NAMES = ("adapter", "merged-16bit", "merged-4bit", "gguf")
GGUF_DIRECT = ("f16", "bf16", "q8_0", "f32")  # convert_hf_to_gguf.py --outtype
GGUF_QUANTIZED = ("q4_k_m", "q5_k_m", "q6_k", "q4_0", "q4_1", "q5_0", "q5_1", "q3_k_m", "q2_k")  # llama-quantize
DTYPES16 = ("float16", "bfloat16")  # merged-16bit --dtype

# What each GGUF type may change in the merged model's next-token distributions (teacher-forced on the source's
# summaries of the fixed documents): (largest mean KL(merged || GGUF) in nats per token, least share of positions
# whose top token agrees). Measured with scripts/gguf_limits.py on SmolLM2-135M fine-tuned 30 steps on DialogSum,
# 8 documents, 185 positions (BENCHMARKS.md, "GGUF export checks"): each limit is about 3x the measured KL and 2.5x
# the measured share of flipped top tokens, and more bits never get looser limits: q5_k_m (measured 0.072, 84.3%,
# worse than q4_k_m on this model) keeps q4_k_m's, a 2x margin. q5_1, q5_0, q4_1, q3_k_m and q2_k were not
# measured: their limits are their neighbours', loosened below. A sound conversion of a larger model rounds less;
# a broken one (wrong tokenizer, rope, weights) is off by whole nats with most top tokens changed.
GGUF_LIMITS = {
    "f32": (0.001, 0.99),
    "f16": (0.001, 0.99),
    "bf16": (0.002, 0.97),
    "q8_0": (0.01, 0.90),
    "q6_k": (0.02, 0.85),
    "q5_k_m": (0.15, 0.8),
    "q5_1": (0.15, 0.8),
    "q5_0": (0.15, 0.8),
    "q4_k_m": (0.15, 0.8),
    "q4_1": (0.5, 0.65),
    "q4_0": (0.5, 0.65),
    "q3_k_m": (1.0, 0.5),
    "q2_k": (2.0, 0.4),
}
# What NF4 (merged-4bit) may change in the same way: (largest mean KL, least top-1 agreement). Measured with
# `scripts/gguf_limits.py fine_tuned/demo --types nf4` on the demo model (SmolLM2-135M fine-tuned on SciTLDR, 8
# documents, 213 positions; BENCHMARKS.md, "merged-4bit"): mean KL 0.234, top-1 84.5%. As for the GGUF types, about
# 3x the measured KL and 2.5x the measured share of flipped top tokens.
NF4_LIMITS = (0.7, 0.6)
# From the fewest bits to the most: a refused type names the first more precise one that passes.
GGUF_PRECISION = (
    "q2_k",
    "q3_k_m",
    "q4_0",
    "q4_1",
    "q4_k_m",
    "q5_0",
    "q5_1",
    "q5_k_m",
    "q6_k",
    "q8_0",
    "bf16",
    "f16",
    "f32",
)


def option(default, help: str, kind=None, choices=None):
    """A field of ExportOptions and, from the same line, its flag of `llm-summarizer export` (--the-name); the
    flag's type is `kind`, else the default's (str for a None default)."""
    kind = kind or (type(default) if default is not None else str)
    return field(default=default, metadata={"help": help, "type": kind, "choices": choices})


@dataclass
class ExportOptions:
    """How an export is made and checked: every field is a flag of `llm-summarizer export` (commands/export.py
    builds them from here), with its default and help."""

    dtype: str = option(
        "auto",
        "merged weights' dtype (default auto: the base's bfloat16/float16, float16 for a "
        "float32 base; the same on every machine)",
        choices=("auto",) + DTYPES16,
    )
    verify_examples: int = option(8, "fixed documents the export is checked on (default 8)")
    merge: str = option(
        "auto",
        "how an adapter is folded into its base: load (into the loaded 16-bit model), stream (shard by shard from "
        "the base's safetensors files: one shard in CPU memory, for a 16-bit model the GPU cannot hold), auto "
        "(stream where the 16-bit model does not fit the GPU; the plan is printed before the export starts)",
        choices=("auto", "load", "stream"),
    )
    verify_data: Optional[str] = option(
        None, "take those documents from this data source (default: the model's validation data)"
    )
    gguf_type: str = option("q8_0", f"GGUF type: {', '.join(GGUF_DIRECT + GGUF_QUANTIZED)} (default q8_0)")
    llama_cpp: Optional[str] = option(None, "llama.cpp checkout holding convert_hf_to_gguf.py (default $LLAMA_CPP_DIR)")
    max_4bit_kl: Optional[float] = option(
        None,
        "merged-4bit: largest mean KL divergence (nats per token) of the 4-bit model's next-token distributions "
        f"from the merged 16-bit model's, teacher-forced on the fixed documents' summaries (default "
        f"{NF4_LIMITS[0]:g}, measured)",
        kind=float,
    )
    min_4bit_top1: Optional[float] = option(
        None,
        f"merged-4bit: least share of those positions where both put the same token first (default {NF4_LIMITS[1]:g})",
        kind=float,
    )
    min_4bit_agreement: Optional[float] = option(
        None,
        "merged-4bit: also require this mean ROUGE-L between its and the adapter's greedy summaries (default: "
        "recorded as an illustration, not required)",
        kind=float,
    )
    max_gguf_kl: Optional[float] = option(
        None,
        "gguf: largest mean KL divergence (nats per token) of llama.cpp's next-token distributions from the "
        "merged model's, teacher-forced on the fixed documents' summaries (default: measured per type, q8_0 "
        f"{GGUF_LIMITS['q8_0'][0]:g}, f16 {GGUF_LIMITS['f16'][0]:g})",
        kind=float,
    )
    min_gguf_top1: Optional[float] = option(
        None,
        "gguf: least share of those positions where both put the same token first (default: measured per "
        f"type, q8_0 {GGUF_LIMITS['q8_0'][1]:g}, f16 {GGUF_LIMITS['f16'][1]:g})",
        kind=float,
    )
    # llama.cpp's greedy summaries against the merged model's (mean ROUGE-L) are recorded as an illustration; a
    # value here makes them a gate as well (one flipped token rewrites the rest of a greedy summary)
    min_gguf_agreement: Optional[float] = option(
        None,
        "gguf: also require this mean ROUGE-L between llama.cpp's and the merged model's greedy summaries "
        "(default: recorded, not required)",
        kind=float,
    )
    logprob_tolerance: float = option(
        0.1,
        "adapter and 16-bit export must score the adapter's summaries within "
        "this many nats per token (default 0.1; 16-bit rounding gives about "
        "0.002 in float16, 0.03 in bfloat16)",
    )

    def check(self) -> None:
        if self.verify_examples < 1:
            raise UserError(f"--verify-examples {self.verify_examples}: must be at least 1")
        if self.max_gguf_kl is not None and not self.max_gguf_kl >= 0:
            raise UserError(f"--max-gguf-kl {self.max_gguf_kl}: a mean KL divergence in nats per token, >= 0")
        if self.max_4bit_kl is not None and not self.max_4bit_kl >= 0:
            raise UserError(f"--max-4bit-kl {self.max_4bit_kl}: a mean KL divergence in nats per token, >= 0")
        for flag, v in (
            ("--min-gguf-top1", self.min_gguf_top1),
            ("--min-gguf-agreement", self.min_gguf_agreement),
            ("--min-4bit-top1", self.min_4bit_top1),
            ("--min-4bit-agreement", self.min_4bit_agreement),
        ):
            if v is not None and not 0 <= v <= 1:
                raise UserError(f"{flag} {v}: a share between 0 and 1")

    def nf4_limits(self) -> tuple[float, float, str]:
        """(max mean KL, min top-1 agreement, where they come from) of the merged-4bit check."""
        given = [
            f
            for f, v in (("--max-4bit-kl", self.max_4bit_kl), ("--min-4bit-top1", self.min_4bit_top1))
            if v is not None
        ]
        return (
            NF4_LIMITS[0] if self.max_4bit_kl is None else self.max_4bit_kl,
            NF4_LIMITS[1] if self.min_4bit_top1 is None else self.min_4bit_top1,
            "NF4's measured limits" + (f", {' and '.join(given)} given" if given else ""),
        )

    def gguf_limits(self, gguf_type: str) -> tuple[float, float, str]:
        """(max mean KL, min top-1 agreement, where they come from) for a GGUF type: the flags where given
        (they hold for every type, so a refusal's suggestion meets them too), else the type's measured row."""
        kl, top1 = GGUF_LIMITS[gguf_type]
        given = [
            f
            for f, v in (("--max-gguf-kl", self.max_gguf_kl), ("--min-gguf-top1", self.min_gguf_top1))
            if v is not None
        ]
        source = f"{gguf_type}'s measured limits" + (f", {' and '.join(given)} given" if given else "")
        return (
            kl if self.max_gguf_kl is None else self.max_gguf_kl,
            top1 if self.min_gguf_top1 is None else self.min_gguf_top1,
            source,
        )


@dataclass
class Job:
    fmt: str
    options: ExportOptions
    loaded: object  # models.loading.Loaded: the source, 16-bit, greedy
    tmp: Path  # the export being written (renamed into place when complete and checked)
    scratch: Path  # working space beside it, always removed
    docs: list[str]
    docs_source: str
    max_new_tokens: int
    reference: list[str] = field(default_factory=list)  # the source's greedy summaries of docs
    ref_logprobs: list = field(default_factory=list)
    merged_texts: Optional[list] = None  # the merged 16-bit model's greedy summaries, when an adapter was merged
    meta: dict = field(default_factory=dict)  # -> export_info.json
    check: dict = field(default_factory=dict)  # -> export_info.json "verification"
    tools: object = None  # what the format's preflight found (llama.cpp for gguf)
    memory: object = None  # export.memory.ExportMemory: where the models go, how the adapter is merged

    @property
    def info(self):
        return self.loaded.info

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


@dataclass
class ExportOptions:
    verify_examples: int = 8  # fixed documents the export is checked on
    verify_data: Optional[str] = None  # where those documents come from (default: the model's validation data)
    dtype: str = "auto"  # merged weights: auto (the base's 16-bit dtype, float16 for float32), float16, bfloat16
    logprob_tolerance: float = 0.1  # nats per token between the adapter and a 16-bit export
    min_4bit_agreement: float = 0.8  # mean ROUGE-L between the adapter's and the 4-bit model's summaries
    min_gguf_agreement: float = 0.8  # the same for llama.cpp's summaries of the GGUF file
    gguf_type: str = "q8_0"
    llama_cpp: Optional[str] = None  # a llama.cpp checkout holding convert_hf_to_gguf.py

    def check(self) -> None:
        if self.verify_examples < 1:
            raise UserError(f"--verify-examples {self.verify_examples}: must be at least 1")


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

    @property
    def info(self):
        return self.loaded.info

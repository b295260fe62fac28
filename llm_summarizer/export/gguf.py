"""gguf: the merged model converted by llama.cpp's convert_hf_to_gguf.py (f16, bf16, q8_0 directly; k-quants
such as q4_k_m through llama-quantize), for llama.cpp and Ollama."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ExportFailed, UserError
from .job import GGUF_DIRECT, GGUF_QUANTIZED, Job
from .merged import merged_source

GGUF_HELP = (
    "GGUF export needs llama.cpp's converter (convert_hf_to_gguf.py), which was not found (looked at --llama-cpp, "
    "$LLAMA_CPP_DIR, the PATH and ~/llama.cpp). Install it with:\n"
    "    git clone https://github.com/ggml-org/llama.cpp ~/llama.cpp\n"
    "    pip install -r ~/llama.cpp/requirements/requirements-convert_hf_to_gguf.txt\n"
    "  and for k-quants (q4_k_m, q5_k_m, ...) also build llama-quantize:\n"
    "    cmake -S ~/llama.cpp -B ~/llama.cpp/build && cmake --build ~/llama.cpp/build --target llama-quantize\n"
    "then rerun with --llama-cpp ~/llama.cpp (or set LLAMA_CPP_DIR). Nothing was written."
)


@dataclass
class LlamaCpp:
    convert: Path
    quantize: Optional[Path]


def find_llama_cpp(llama_cpp: Optional[str], gguf_type: str) -> LlamaCpp:
    roots = [Path(os.path.expanduser(r)) for r in (llama_cpp, os.environ.get("LLAMA_CPP_DIR"), "~/llama.cpp") if r]
    on_path = shutil.which("convert_hf_to_gguf.py")
    convert = next((r / "convert_hf_to_gguf.py" for r in roots if (r / "convert_hf_to_gguf.py").is_file()), None)
    if convert is None and on_path:
        convert = Path(on_path)
    if convert is None:
        raise UserError(GGUF_HELP)
    if not (convert.parent / "gguf-py").is_dir() and importlib.util.find_spec("gguf") is None:
        raise UserError(f"{convert} needs the 'gguf' Python package: pip install gguf (or use a full llama.cpp "
                        f"checkout, which carries gguf-py). Nothing was written.")
    quantize = None
    if gguf_type in GGUF_QUANTIZED:
        cands = [convert.parent / "build" / "bin" / "llama-quantize", convert.parent / "llama-quantize"]
        quantize = next((c for c in cands if c.is_file()), None) or (
            Path(shutil.which("llama-quantize")) if shutil.which("llama-quantize") else None)
        if quantize is None:
            raise UserError(f"--gguf-type {gguf_type} needs llama.cpp's llama-quantize binary, not found beside "
                            f"{convert} or on the PATH. Build it: cmake -S {convert.parent} -B {convert.parent}/build "
                            f"&& cmake --build {convert.parent}/build --target llama-quantize; or use --gguf-type "
                            f"q8_0 / f16 / bf16, which need only the converter. Nothing was written.")
    return LlamaCpp(convert, quantize)


def _convert_gguf(merged: Path, dst: Path, name: str, gguf_type: str, tools: LlamaCpp, scratch: Path) -> Path:
    out = dst / f"{name}.{gguf_type}.gguf"
    direct = gguf_type in GGUF_DIRECT
    first = out if direct else scratch / f"{name}.f16.gguf"
    cmd = [sys.executable, str(tools.convert), str(merged), "--outfile", str(first), "--outtype",
           gguf_type if direct else "f16"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ExportFailed(f"convert_hf_to_gguf.py failed (exit {r.returncode}):\n"
                           + "\n".join(r.stderr.strip().splitlines()[-12:]))
    if not direct:
        r = subprocess.run([str(tools.quantize), str(first), str(out), gguf_type.upper()], capture_output=True, text=True)
        if r.returncode != 0:
            raise ExportFailed(f"llama-quantize failed (exit {r.returncode}):\n" + "\n".join(r.stderr.strip().splitlines()[-12:]))
    with open(out, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ExportFailed(f"{out} is not a GGUF file (bad magic bytes)")
    return out


def preflight(options) -> LlamaCpp:
    if options.gguf_type not in GGUF_DIRECT + GGUF_QUANTIZED:
        raise UserError(f"--gguf-type {options.gguf_type!r}: one of {', '.join(GGUF_DIRECT + GGUF_QUANTIZED)}")
    return find_llama_cpp(options.llama_cpp, options.gguf_type)


def write(job: Job, write_metadata) -> None:
    """--format gguf"""
    merged = merged_source(job, write_metadata)
    gguf_type, tools = job.options.gguf_type, job.tools
    out = _convert_gguf(merged, job.tmp, job.info.name, gguf_type, tools, job.scratch)
    for f in list(job.tmp.iterdir()):  # the GGUF file carries weights and tokenizer itself
        if f != out and f.name not in ("config.yaml", "metrics.json", "run_info.json"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    job.meta.update(dtype=gguf_type, file=out.name, converter=str(tools.convert))
    job.check["summary"] = ((job.check.get("summary") or "the source is a merged model") +
                            f"; then converted by llama.cpp's convert_hf_to_gguf.py ({gguf_type}); the GGUF "
                            f"file itself is not run here (llama.cpp runtime not required)")


"""gguf: the merged model converted by llama.cpp's convert_hf_to_gguf.py (f16, bf16, q8_0 directly; k-quants
such as q4_k_m through llama-quantize), for llama.cpp and Ollama, then run by llama.cpp and checked.

The converter is a user's llama.cpp checkout (--llama-cpp, $LLAMA_CPP_DIR, ~/llama.cpp, the PATH) or, on
machines that reach only the package registry, the copy of llama.cpp vendored in the registry's
llama-cpp-python source archive (downloaded once into the model cache; nothing is installed). The GGUF
file is then loaded with llama-cpp-python, when installed, and its greedy summaries of the fixed
documents must agree with the adapter's (mean ROUGE-L >= --min-gguf-agreement). A `Modelfile` for Ollama
is written beside it: the training prompt as TEMPLATE, the stop token, temperature 0, num_ctx.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..config import ModelSection
from ..errors import ExportFailed, UserError
from ..files import atomic_directory
from ..models.gguf import cache_lock
from .job import GGUF_DIRECT, GGUF_QUANTIZED, Job
from .merged import merged_source
from .verify import agreement

log = logging.getLogger("llm_summarizer.export")

RUNTIME_PACKAGE = "llama-cpp-python"  # the registry's llama.cpp: its source archive vendors the converter
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")

GGUF_HELP = (
    "GGUF export needs llama.cpp's converter (convert_hf_to_gguf.py), which was not found (looked at --llama-cpp, "
    "$LLAMA_CPP_DIR, the PATH and ~/llama.cpp) and could not be taken from the package registry's llama-cpp-python "
    "source archive (`pip download --no-deps --no-binary :all: llama-cpp-python`). Install it with:\n"
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


def converter_from_registry(cache_dir) -> Optional[Path]:
    """llama.cpp's converter out of the registry's llama-cpp-python source archive (the installed version's,
    else the newest), unpacked once into the cache; None when the registry cannot be reached."""
    try:
        version = metadata.version(RUNTIME_PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    root = Path(cache_dir) / f"llama.cpp-{version or 'latest'}"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root / "convert_hf_to_gguf.py"
    with cache_lock(Path(cache_dir) / f".{root.name}.lock"):
        if (root / "convert_hf_to_gguf.py").is_file():
            return root / "convert_hf_to_gguf.py"
        with tempfile.TemporaryDirectory(prefix=".llama-cpp-", dir=cache_dir) as tmp:
            spec = f"{RUNTIME_PACKAGE}=={version}" if version else RUNTIME_PACKAGE
            log.info("fetching llama.cpp's converter from the package registry (%s source archive)", spec)
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                                "--disable-pip-version-check", spec, "-d", tmp], capture_output=True, text=True,
                               timeout=900)
            archives = sorted(Path(tmp).glob("*.tar.gz"))
            if r.returncode != 0 or not archives:
                return None
            with tarfile.open(archives[0]) as tar, atomic_directory(root) as out:
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if len(parts) > 3 and parts[1:3] == ("vendor", "llama.cpp") and parts[3] in CONVERTER_PARTS \
                            and (member.isfile() or member.isdir()):
                        member.name = str(Path(*parts[3:]))
                        tar.extract(member, out, filter="data")
    return root / "convert_hf_to_gguf.py" if (root / "convert_hf_to_gguf.py").is_file() else None


def find_llama_cpp(llama_cpp: Optional[str], gguf_type: str) -> LlamaCpp:
    roots = [Path(os.path.expanduser(r)) for r in (llama_cpp, os.environ.get("LLAMA_CPP_DIR"), "~/llama.cpp") if r]
    on_path = shutil.which("convert_hf_to_gguf.py")
    convert = next((r / "convert_hf_to_gguf.py" for r in roots if (r / "convert_hf_to_gguf.py").is_file()), None)
    if convert is None and on_path:
        convert = Path(on_path)
    if llama_cpp and convert is None:
        raise UserError(f"--llama-cpp {llama_cpp}: no convert_hf_to_gguf.py there; point it at a llama.cpp checkout. "
                        f"Nothing was written.")
    if convert is None:
        convert = converter_from_registry(ModelSection.model_fields["cache_dir"].default)
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


def run_with_llama_cpp(job: Job, gguf_path: Path) -> Optional[list[str]]:
    """Greedy summaries of the fixed documents by llama.cpp itself (llama-cpp-python), from the exact token
    ids of the training prompt; None when llama-cpp-python is not installed."""
    try:
        from llama_cpp import Llama  # an optional extra: the runtime users of the GGUF file have
    except ImportError:
        return None
    f, tok = job.loaded.formatter, job.loaded.tokenizer
    llm = Llama(model_path=str(gguf_path), n_ctx=job.loaded.cfg.model.max_seq_length, n_threads=os.cpu_count(),
                seed=0, verbose=False)
    stops = [tok.convert_ids_to_tokens(i) for i in f.stop_ids]
    texts = []
    for doc in job.docs:
        ids, _ = f.generation_prompt(doc, job.max_new_tokens)
        r = llm.create_completion(prompt=ids, max_tokens=job.max_new_tokens, temperature=0.0, top_k=1, top_p=1.0,
                                  min_p=0.0, repeat_penalty=1.0, stop=stops)
        texts.append(r["choices"][0]["text"].strip())
    del llm
    return texts


def prompt_format(job: Job) -> dict:
    """The training prompt as text around the document, and the stop tokens: for runtimes that take text."""
    f, tok = job.loaded.formatter, job.loaded.tokenizer
    pre, post = (tok.decode(ids, skip_special_tokens=False) for ids in (f.pre_ids, f.post_ids))
    if tok.bos_token and pre.startswith(tok.bos_token) and not f.use_chat:  # llama.cpp adds BOS itself
        pre = pre[len(tok.bos_token):]
    return {"prefix": pre, "suffix": post, "stop": [tok.convert_ids_to_tokens(i) for i in f.stop_ids],
            "max_new_tokens": job.max_new_tokens, "n_ctx": job.loaded.cfg.model.max_seq_length}


def modelfile(job: Job, gguf_name: str) -> str:
    """An Ollama Modelfile: the training prompt around {{ .Prompt }} (the document), the stop token, greedy."""
    fmt = prompt_format(job)
    pre, post = fmt["prefix"], fmt["suffix"]
    stops = "".join(f'PARAMETER stop "{s}"\n' for s in fmt["stop"])
    return (f"# Ollama: ollama create my-summarizer -f Modelfile && ollama run my-summarizer \"$(cat document.txt)\"\n"
            f"# The TEMPLATE is the exact prompt the model was trained on; the document is the whole user message.\n"
            f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{pre}{{{{ .Prompt }}}}{post}"""\n'
            f"{stops}PARAMETER temperature 0\nPARAMETER num_ctx {job.loaded.cfg.model.max_seq_length}\n"
            f"PARAMETER num_predict {job.max_new_tokens}\n")


def write(job: Job, write_metadata) -> None:
    """--format gguf"""
    merged = merged_source(job, write_metadata)
    gguf_type, tools = job.options.gguf_type, job.tools
    out = _convert_gguf(merged, job.tmp, job.info.name, gguf_type, tools, job.scratch)
    for f in list(job.tmp.iterdir()):  # the GGUF file carries weights and tokenizer itself
        if f != out and f.name not in ("config.yaml", "metrics.json", "run_info.json"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    (job.tmp / "Modelfile").write_text(modelfile(job, out.name), encoding="utf-8")
    job.meta.update(dtype=gguf_type, file=out.name, converter=str(tools.convert), ollama_modelfile="Modelfile",
                    prompt_format=prompt_format(job))
    texts = run_with_llama_cpp(job, out)
    summary = (job.check.get("summary") or "the source is a merged model") + \
        f"; then converted by llama.cpp's convert_hf_to_gguf.py ({gguf_type})"
    if texts is None:
        job.check["gguf_runtime"] = "not run: llama-cpp-python is not installed (pip install llama-cpp-python)"
        job.check["summary"] = summary + "; the GGUF file itself was not run (llama-cpp-python not installed)"
        log.warning("the GGUF file was written but not run: install llama-cpp-python to check it")
        return
    # What was converted is the merged 16-bit model: llama.cpp must reproduce its greedy summaries (a merge can
    # already flip a near-tie against the adapter, which the merged check above allows and reports).
    converted = job.merged_texts if job.merged_texts is not None else job.reference
    agree = agreement(converted, texts)
    exact = sum(a == b for a, b in zip(converted, texts))
    job.check.update(gguf_runtime=f"llama-cpp-python {metadata.version(RUNTIME_PACKAGE)}",
                     gguf_rougeL_agreement=round(agree, 4), gguf_exact_matches=exact,
                     gguf_agreement_with_adapter=round(agreement(job.reference, texts), 4),
                     gguf_min_agreement=job.options.min_gguf_agreement)
    if agree < job.options.min_gguf_agreement or any(not t for t in texts):
        i = min(range(len(texts)), key=lambda k: agreement([converted[k]], [texts[k]]))
        raise ExportFailed(f"llama.cpp's greedy summaries of the GGUF file agree with those of the merged model it "
                           f"was converted from only to mean ROUGE-L {agree:.3f} (< --min-gguf-agreement "
                           f"{job.options.min_gguf_agreement}) or some are empty. Document {i}:\n"
                           f"  merged model: {converted[i]!r}\n  llama.cpp:    {texts[i]!r}\n"
                           + ("The rounding of this quantization moved the model's greedy choices; --gguf-type f16 "
                              "keeps the merged weights (or lower --min-gguf-agreement to accept it). "
                              if gguf_type not in ("f16", "bf16", "f32") else "")
                           + "Nothing was written.")
    job.check["summary"] = summary + (f"; llama.cpp (llama-cpp-python) runs the GGUF file: its greedy summaries "
                                      f"agree with the merged model's to mean ROUGE-L {agree:.3f} ({exact}/{len(texts)} "
                                      f"identical; with the adapter's: {job.check['gguf_agreement_with_adapter']:.3f})")

"""gguf: the merged model converted by llama.cpp's convert_hf_to_gguf.py (f16, bf16, q8_0 directly; k-quants
such as q4_k_m quantized from f16 by llama-quantize or llama-cpp-python's binding of the same code), for
llama.cpp and Ollama, then run by llama.cpp and checked.

The converter is a user's llama.cpp checkout (--llama-cpp, $LLAMA_CPP_DIR, ~/llama.cpp, the PATH) or, on
machines that reach only the package registry, the copy of llama.cpp vendored in the registry's
llama-cpp-python source archive (downloaded once into the model cache; nothing is installed). The GGUF
file is then loaded with llama-cpp-python, when installed, and judged by what its type is meant to change:
teacher-forced on the source's summaries of the fixed documents, llama.cpp's next-token distributions must
stay within the type's mean KL divergence of the merged model's (computed in float32 by plain transformers)
and put the same token first at the type's share of positions (job.GGUF_LIMITS, measured; --max-gguf-kl,
--min-gguf-top1 override). A refused type names the more precise type that passes the same check. llama.cpp's
greedy summaries are recorded beside it as an illustration (a gate only with --min-gguf-agreement): one
flipped near-tie rewrites the rest of a greedy summary, so text agreement says little about a quantization.
A `Modelfile` for Ollama is written beside the file: the training prompt as TEMPLATE, the stop token,
temperature 0, num_ctx.
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

from safetensors.torch import load_file

from ..config import ModelSection
from ..errors import ExportFailed, UserError
from ..files import atomic_directory
from ..layout import RECORDS
from ..models.gguf import cache_lock
from .job import GGUF_DIRECT, GGUF_PRECISION, GGUF_QUANTIZED, Job
from .merged import merged_source
from .verify import agreement, next_token_agreement, run_worker

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


# llama.cpp's quantizer through llama-cpp-python (the same C function llama-quantize calls), in its own process
# so that a llama.cpp abort cannot take the export with it
QUANTIZE_WITH_BINDING = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3].upper())
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


@dataclass
class LlamaCpp:
    convert: Path
    quantize: Optional[Path]  # llama-quantize; None: llama-cpp-python's binding (for k-quants) or not needed


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
    with cache_lock(Path(cache_dir) / f".{root.name}.fetch.lock"):  # atomic_directory(root) takes .{name}.lock
        if (root / "convert_hf_to_gguf.py").is_file():
            return root / "convert_hf_to_gguf.py"
        with tempfile.TemporaryDirectory(prefix=".llama-cpp-", dir=cache_dir) as tmp:
            spec = f"{RUNTIME_PACKAGE}=={version}" if version else RUNTIME_PACKAGE
            log.info("fetching llama.cpp's converter from the package registry (%s source archive)", spec)
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-q",
                    "--disable-pip-version-check",
                    spec,
                    "-d",
                    tmp,
                ],
                capture_output=True,
                text=True,
                timeout=900,
            )
            archives = sorted(Path(tmp).glob("*.tar.gz"))
            if r.returncode != 0 or not archives:
                return None
            with tarfile.open(archives[0]) as tar, atomic_directory(root) as out:
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if (
                        len(parts) > 3
                        and parts[1:3] == ("vendor", "llama.cpp")
                        and parts[3] in CONVERTER_PARTS
                        and (member.isfile() or member.isdir())
                    ):
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
        raise UserError(
            f"--llama-cpp {llama_cpp}: no convert_hf_to_gguf.py there; point it at a llama.cpp checkout. "
            f"Nothing was written."
        )
    if convert is None:
        convert = converter_from_registry(ModelSection.model_fields["cache_dir"].default)
    if convert is None:
        raise UserError(GGUF_HELP)
    if not (convert.parent / "gguf-py").is_dir() and importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"{convert} needs the 'gguf' Python package: pip install gguf (or use a full llama.cpp "
            f"checkout, which carries gguf-py). Nothing was written."
        )
    quantize = None
    if gguf_type in GGUF_QUANTIZED:
        cands = [convert.parent / "build" / "bin" / "llama-quantize", convert.parent / "llama-quantize"]
        quantize = next((c for c in cands if c.is_file()), None) or (
            Path(shutil.which("llama-quantize")) if shutil.which("llama-quantize") else None
        )
        if quantize is None and importlib.util.find_spec("llama_cpp") is None:
            raise UserError(
                f"--gguf-type {gguf_type} needs llama.cpp's quantizer: the llama-quantize binary (not "
                f"found beside {convert} or on the PATH) or llama-cpp-python (not installed). Build it: "
                f"cmake -S {convert.parent} -B {convert.parent}/build && cmake --build "
                f"{convert.parent}/build --target llama-quantize; or pip install llama-cpp-python; or use "
                f"--gguf-type q8_0 / f16 / bf16, which need only the converter. Nothing was written."
            )
    return LlamaCpp(convert, quantize)


def _convert_gguf(merged: Path, dst: Path, name: str, gguf_type: str, tools: LlamaCpp, scratch: Path) -> Path:
    out = dst / f"{name}.{gguf_type}.gguf"
    direct = gguf_type in GGUF_DIRECT
    first = out if direct else scratch / f"{name}.f16.gguf"
    cmd = [
        sys.executable,
        str(tools.convert),
        str(merged),
        "--outfile",
        str(first),
        "--outtype",
        gguf_type if direct else "f16",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ExportFailed(
            f"convert_hf_to_gguf.py failed (exit {r.returncode}):\n" + "\n".join(r.stderr.strip().splitlines()[-12:])
        )
    if not direct:
        if tools.quantize:
            cmd, what = [str(tools.quantize), str(first), str(out), gguf_type.upper()], "llama-quantize"
        else:
            cmd = [sys.executable, "-c", QUANTIZE_WITH_BINDING, str(first), str(out), gguf_type]
            what = "llama-cpp-python's llama_model_quantize"
        r = subprocess.run(cmd, capture_output=True, text=True)
        first.unlink(missing_ok=True)
        if r.returncode != 0 or not out.is_file():
            raise ExportFailed(
                f"{what} failed (exit {r.returncode}):\n" + "\n".join((r.stderr or r.stdout).strip().splitlines()[-12:])
            )
    with open(out, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ExportFailed(f"{out} is not a GGUF file (bad magic bytes)")
    return out


def preflight(options) -> LlamaCpp:
    if options.gguf_type not in GGUF_DIRECT + GGUF_QUANTIZED:
        raise UserError(f"--gguf-type {options.gguf_type!r}: one of {', '.join(GGUF_DIRECT + GGUF_QUANTIZED)}")
    return find_llama_cpp(options.llama_cpp, options.gguf_type)


def teacher_forced(job: Job) -> tuple[list[list[int]], list[int]]:
    """The token ids the next-token check runs on: each fixed document's training prompt followed by the source's
    greedy summary of it (with its end-of-turn token), and where the summary starts. The same ids go to
    transformers and to llama.cpp, so the GGUF tokenizer cannot blur the comparison."""
    f = job.loaded.formatter
    seqs, starts = [], []
    for doc, summary in zip(job.docs, job.reference):
        prompt, _ = f.generation_prompt(doc, job.max_new_tokens)
        seqs.append(prompt + f.completion_ids(summary))
        starts.append(len(prompt))
    return seqs, starts


def reference_distributions(job: Job, merged: Path, seqs: list, starts: list) -> list:
    """The merged model's next-token log-probabilities at every summary position, from plain transformers in
    float32 in a separate process."""
    dest = job.scratch / "next-token-reference.safetensors"
    run_worker(
        {"action": "next-token", "model_dir": str(merged), "sequences": seqs, "starts": starts, "dest": str(dest)},
        job.scratch,
        "computing the merged model's next-token distributions",
    )
    tensors = load_file(str(dest))
    dest.unlink()
    return [tensors[f"seq{i}"] for i in range(len(seqs))]


def open_gguf(job: Job, gguf_path: Path, seqs: list):
    from llama_cpp import Llama  # an optional extra: the runtime users of the GGUF file have

    # logits_all: the distribution at every position of a teacher-forced sequence, not only the last. Threads:
    # llama-cpp-python's default (half the logical CPUs); llama.cpp's threads spin at every step, and one per
    # logical CPU crawled (seconds per token) on a 2-core machine shared with other work.
    return Llama(
        model_path=str(gguf_path),
        n_ctx=max([job.loaded.cfg.model.max_seq_length] + [len(s) for s in seqs]),
        seed=0,
        logits_all=True,
        verbose=False,
    )


def gguf_distributions(llm, seqs: list, starts: list, vocab: int) -> list:
    """llama.cpp's next-token logits at the same positions as reference_distributions, from the same ids."""
    if llm.n_vocab() != vocab:
        raise ExportFailed(
            f"the GGUF file has a {llm.n_vocab()}-token vocabulary, the merged model it was converted "
            f"from {vocab}: the conversion changed the tokenizer. Nothing was written."
        )
    out = []
    for ids, start in zip(seqs, starts):
        llm.reset()
        llm.eval(ids)
        out.append(llm.scores[start - 1 : len(ids) - 1].copy())
    return out


def greedy_summaries(job: Job, llm) -> list[str]:
    """Greedy summaries of the fixed documents by llama.cpp itself, from the exact token ids of the training
    prompt."""
    f, tok = job.loaded.formatter, job.loaded.tokenizer
    stops = [tok.convert_ids_to_tokens(i) for i in f.stop_ids]
    texts = []
    for doc in job.docs:
        ids, _ = f.generation_prompt(doc, job.max_new_tokens)
        r = llm.create_completion(
            prompt=ids,
            max_tokens=job.max_new_tokens,
            temperature=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            stop=stops,
        )
        texts.append(r["choices"][0]["text"].strip())
    return texts


def passes(stats: dict, max_kl: float, min_top1: float) -> bool:
    return stats["mean_kl"] <= max_kl and stats["top1_agreement"] >= min_top1  # a NaN or inf KL fails


def describe(gguf_type: str, stats: dict, max_kl: float, min_top1: float) -> str:
    return (
        f"{gguf_type}: mean KL {stats['mean_kl']:.4f} nats/token ({'<=' if stats['mean_kl'] <= max_kl else '>'} "
        f"{max_kl:g}), top token the same at {stats['top1_agreement']:.1%} of {stats['positions']} positions "
        f"({'>=' if stats['top1_agreement'] >= min_top1 else '<'} {min_top1 * 100:g}%)"
    )


def alternatives(refused: str) -> list[str]:
    """The types a refusal tries, from the fewest bits up: those the converter writes directly; f32 only once 16
    bits were asked for (an f32 file is twice the merged model)."""
    wanted = ("f16", "f32") if refused in ("bf16", "f16") else ("q8_0", "f16")
    return [t for t in GGUF_PRECISION[GGUF_PRECISION.index(refused) + 1 :] if t in wanted]


def refusal(
    job: Job, merged: Path, refused: str, stats: dict, seqs: list, starts: list, reference: list, illustration: str
) -> str:
    """Why the type was refused, and which more precise type passes the same check (each converted and measured
    here in turn, in the scratch space)."""
    max_kl, min_top1, source = job.options.gguf_limits(refused)
    lines = [
        f"--gguf-type {refused} changes the merged model's next-token distributions more than allowed "
        f"({source}), teacher-forced on {len(seqs)} fixed documents' summaries:",
        "  " + describe(refused, stats, max_kl, min_top1),
        f"  ({illustration})",
    ]
    for t in alternatives(refused):
        path = _convert_gguf(merged, job.scratch, f"{job.info.name}.candidate", t, job.tools, job.scratch)
        llm = open_gguf(job, path, seqs)
        alt = next_token_agreement(reference, gguf_distributions(llm, seqs, starts, reference[0].shape[-1]))
        del llm
        path.unlink()
        kl, top1, _ = job.options.gguf_limits(t)
        lines.append("  " + describe(t, alt, kl, top1))
        if passes(alt, kl, top1):
            lines.append(f"{t} passed the same check: rerun with --gguf-type {t}.")
            break
    else:
        tried = alternatives(refused)
        lines.append(
            ("None of " + ", ".join(tried) + " passed either: " if tried else "No type is more precise: ")
            + "the conversion itself differs from the merged model (or the limits are tighter than "
            "rounding allows); --max-gguf-kl / --min-gguf-top1 set them."
        )
    return "\n".join(lines + ["Nothing was written."])


def prompt_format(job: Job) -> dict:
    """The training prompt as text around the document, and the stop tokens: for runtimes that take text."""
    f, tok = job.loaded.formatter, job.loaded.tokenizer
    pre, post = (tok.decode(ids, skip_special_tokens=False) for ids in (f.pre_ids, f.post_ids))
    if tok.bos_token and pre.startswith(tok.bos_token) and not f.use_chat:  # llama.cpp adds BOS itself
        pre = pre[len(tok.bos_token) :]
    return {
        "prefix": pre,
        "suffix": post,
        "stop": [tok.convert_ids_to_tokens(i) for i in f.stop_ids],
        "max_new_tokens": job.max_new_tokens,
        "n_ctx": job.loaded.cfg.model.max_seq_length,
    }


def modelfile(job: Job, gguf_name: str) -> str:
    """An Ollama Modelfile: the training prompt around {{ .Prompt }} (the document), the stop token, greedy."""
    fmt = prompt_format(job)
    pre, post = fmt["prefix"], fmt["suffix"]
    stops = "".join(f'PARAMETER stop "{s}"\n' for s in fmt["stop"])
    return (
        f'# Ollama: ollama create my-summarizer -f Modelfile && ollama run my-summarizer "$(cat document.txt)"\n'
        f"# The TEMPLATE is the exact prompt the model was trained on; the document is the whole user message.\n"
        f"FROM ./{gguf_name}\n"
        f'TEMPLATE """{pre}{{{{ .Prompt }}}}{post}"""\n'
        f"{stops}PARAMETER temperature 0\nPARAMETER num_ctx {job.loaded.cfg.model.max_seq_length}\n"
        f"PARAMETER num_predict {job.max_new_tokens}\n"
    )


def write(job: Job, write_metadata) -> None:
    """--format gguf"""
    merged = merged_source(job, write_metadata)
    gguf_type, tools = job.options.gguf_type, job.tools
    out = _convert_gguf(merged, job.tmp, job.info.name, gguf_type, tools, job.scratch)
    for f in list(job.tmp.iterdir()):  # the GGUF file carries weights and tokenizer itself
        if f != out and f.name not in RECORDS:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    (job.tmp / "Modelfile").write_text(modelfile(job, out.name), encoding="utf-8")
    job.meta.update(
        dtype=gguf_type,
        file=out.name,
        converter=str(tools.convert),
        ollama_modelfile="Modelfile",
        prompt_format=prompt_format(job),
    )
    if gguf_type in GGUF_QUANTIZED:
        job.meta["quantizer"] = str(tools.quantize) if tools.quantize else "llama-cpp-python's llama_model_quantize"
    summary = (
        job.check.get("summary") or "the source is a merged model"
    ) + f"; then converted by llama.cpp's convert_hf_to_gguf.py ({gguf_type})"
    if importlib.util.find_spec("llama_cpp") is None:
        job.check["gguf_runtime"] = "not run: llama-cpp-python is not installed (pip install llama-cpp-python)"
        job.check["summary"] = summary + "; the GGUF file itself was not run (llama-cpp-python not installed)"
        log.warning("the GGUF file was written but not run: install llama-cpp-python to check it")
        return
    # 1. What quantization changes: next-token distributions against the merged model it was converted from.
    seqs, starts = teacher_forced(job)
    reference = reference_distributions(job, merged, seqs, starts)
    llm = open_gguf(job, out, seqs)
    stats = next_token_agreement(reference, gguf_distributions(llm, seqs, starts, reference[0].shape[-1]))
    max_kl, min_top1, source = job.options.gguf_limits(gguf_type)
    # 2. An illustration: llama.cpp's greedy summaries against the merged model's (a merge can already flip a
    # near-tie against the adapter, which the merged check above allows and reports).
    texts = greedy_summaries(job, llm)
    del llm
    converted = job.merged_texts if job.merged_texts is not None else job.reference
    agree = agreement(converted, texts)
    exact = sum(a == b for a, b in zip(converted, texts))
    job.check.update(
        gguf_runtime=f"llama-cpp-python {metadata.version(RUNTIME_PACKAGE)}",
        gguf_next_token={
            "mean_kl": round(stats["mean_kl"], 6),
            "max_kl": round(stats["max_kl"], 6),
            "top1_agreement": round(stats["top1_agreement"], 6),
            "positions": stats["positions"],
            "max_mean_kl": max_kl,
            "min_top1_agreement": min_top1,
            "limits": source,
            "reference": "the merged model in float32 (plain transformers), on the same token ids",
            "text": "each fixed document's training prompt, then the source's greedy summary of it",
        },
        gguf_rougeL_agreement=round(agree, 4),
        gguf_exact_matches=exact,
        gguf_agreement_with_adapter=round(agreement(job.reference, texts), 4),
        gguf_greedy_role="a gate (--min-gguf-agreement)"
        if job.options.min_gguf_agreement is not None
        else "an illustration (one flipped near-tie rewrites the rest of a greedy summary)",
    )
    if not passes(stats, max_kl, min_top1):
        raise ExportFailed(
            refusal(
                job,
                merged,
                gguf_type,
                stats,
                seqs,
                starts,
                reference,
                f"its greedy summaries, an illustration: mean ROUGE-L {agree:.3f} against the merged "
                f"model's, {exact}/{len(texts)} identical",
            )
        )
    if job.options.min_gguf_agreement is not None:
        job.check["gguf_min_agreement"] = job.options.min_gguf_agreement
        if agree < job.options.min_gguf_agreement:
            i = min(range(len(texts)), key=lambda k: agreement([converted[k]], [texts[k]]))
            raise ExportFailed(
                f"llama.cpp's greedy summaries of the GGUF file agree with those of the merged model "
                f"it was converted from only to mean ROUGE-L {agree:.3f} (< --min-gguf-agreement "
                f"{job.options.min_gguf_agreement}), while its next-token distributions pass "
                f"({describe(gguf_type, stats, max_kl, min_top1)}). Document {i}:\n"
                f"  merged model: {converted[i]!r}\n  llama.cpp:    {texts[i]!r}\n"
                f"Drop --min-gguf-agreement to judge the file by its distributions. "
                f"Nothing was written."
            )
    job.check["summary"] = summary + (
        f"; llama.cpp (llama-cpp-python) runs the GGUF file: {describe(gguf_type, stats, max_kl, min_top1)} against "
        f"the merged model; its greedy summaries agree with the merged model's to mean ROUGE-L {agree:.3f} "
        f"({exact}/{len(texts)} identical; with the adapter's: {job.check['gguf_agreement_with_adapter']:.3f})"
    )

"""Export a fine-tuned model for serving: python -m llm_summarizer.export MODEL_DIR --format FORMAT

    python -m llm_summarizer.export fine_tuned/demo --format merged-16bit        # -> fine_tuned/demo-merged-16bit/
    python -m llm_summarizer.export fine_tuned/demo --format adapter --output release/demo-lora
    python -m llm_summarizer.export fine_tuned/demo --format merged-4bit         # needs a CUDA GPU + bitsandbytes
    python -m llm_summarizer.export fine_tuned/demo --format gguf --gguf-type q8_0 --llama-cpp ~/llama.cpp
    HF_TOKEN=hf_... python -m llm_summarizer.export fine_tuned/demo --format merged-16bit --push-to-hub --hub-model-id you/demo

Formats:
  adapter       the LoRA adapter + tokenizer (base_model_name_or_path resolved), for PEFT / vLLM LoRA serving
  merged-16bit  LoRA folded into the base weights, saved in the base's 16-bit dtype (float16 for a float32
                base, on every machine; --dtype overrides): Unsloth's save_pretrained_merged on a GPU, PEFT
                merge_and_unload otherwise; loads with plain transformers, vLLM, TGI
  merged-4bit   the merged model quantized to bitsandbytes NF4 (CUDA GPU only)
  gguf          the merged model converted by llama.cpp's convert_hf_to_gguf.py (f16, bf16, q8_0 directly;
                k-quants such as q4_k_m through llama-quantize), for llama.cpp and Ollama

Every export checks itself before it appears: a fixed set of documents is summarized greedily by the
adapter, then by the export loaded in a separate process with plain transformers (no Unsloth patches).
merged-16bit and adapter exports must reproduce the adapter's summaries and give the adapter's summaries
the same log-probabilities (within --logprob-tolerance nats per token: 16-bit rounding of the merged
weights moves them by about 0.002 in float16); a greedy summary may differ only at a near-tie, which that
second test tells apart from a wrong merge. merged-4bit must agree with the adapter's summaries to
--min-4bit-agreement (mean ROUGE-L). Any failure exits non-zero and leaves no output: the export is
written under a temporary name and renamed into place only when complete and checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import UserError, config_to_yaml

log = logging.getLogger("llm_summarizer.export")

FORMATS = ("adapter", "merged-16bit", "merged-4bit", "gguf")
GGUF_DIRECT = ("f16", "bf16", "q8_0", "f32")  # convert_hf_to_gguf.py --outtype
GGUF_QUANTIZED = ("q4_k_m", "q5_k_m", "q6_k", "q4_0", "q4_1", "q5_0", "q5_1", "q3_k_m", "q2_k")  # llama-quantize
EXIT_EXPORT_FAILED = 1
# Used only when the model's own data files cannot be read: the check still compares the adapter with
# the export on fixed inputs, they are just not in-domain.
BUILTIN_DOCUMENTS = (
    "The city council voted on Tuesday to extend the evening bus service on three routes until midnight. "
    "The change starts next month and will be paid for by a parking fee increase in the city centre.",
    "Researchers at the university tested a new battery coating on 200 cells. After 1,000 charge cycles the "
    "coated cells kept 91 percent of their capacity, against 78 percent for uncoated cells.",
    "The football club announced that its captain will miss the rest of the season with a knee injury. The "
    "team, currently third in the league, plays its next match against the leaders on Saturday.",
    "A storm brought heavy rain and winds of up to 110 kilometres per hour to the coast overnight. Several "
    "roads were closed and about 4,000 homes lost power, most of which was restored by the morning.",
)
GGUF_HELP = (
    "GGUF export needs llama.cpp's converter (convert_hf_to_gguf.py), which was not found (looked at --llama-cpp, "
    "$LLAMA_CPP_DIR, the PATH and ~/llama.cpp). Install it with:\n"
    "    git clone https://github.com/ggml-org/llama.cpp ~/llama.cpp\n"
    "    pip install -r ~/llama.cpp/requirements/requirements-convert_hf_to_gguf.txt\n"
    "  and for k-quants (q4_k_m, q5_k_m, ...) also build llama-quantize:\n"
    "    cmake -S ~/llama.cpp -B ~/llama.cpp/build && cmake --build ~/llama.cpp/build --target llama-quantize\n"
    "then rerun with --llama-cpp ~/llama.cpp (or set LLAMA_CPP_DIR). Nothing was written."
)


class ExportFailed(Exception):
    """The export was made but does not behave like the adapter (or a tool failed); nothing was kept."""


@dataclass
class ExportResult:
    output_dir: Path
    info: dict
    hub_url: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# Checks before anything is loaded or written


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
    import importlib.util

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


def _bitsandbytes_ready() -> Optional[str]:
    """None when 4-bit quantization can run here, else why not."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "this machine has no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    return None


def default_output(info, fmt: str) -> Path:
    return info.path.parent / f"{info.name}-{fmt}"


# ---------------------------------------------------------------------------------------------
# A plain-transformers process: loads what the export wrote, the way users will


def worker(spec_path: str) -> int:
    """Run in a fresh process (no Unsloth): greedy summaries from a saved directory, or 4-bit quantization."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    action, out = spec["action"], Path(spec["out"])
    cuda = torch.cuda.is_available()
    kw = {"device_map": {"": 0}} if cuda else {}
    if action == "quantize-4bit":
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], quantization_config=q, **kw)
        model.save_pretrained(spec["dest"], safe_serialization=True)
        AutoTokenizer.from_pretrained(spec["model_dir"]).save_pretrained(spec["dest"])
        out.write_text(json.dumps({"ok": True}), encoding="utf-8")
        return 0
    from .config import load_config
    from .data import Formatter
    from .generation import generate

    cfg = load_config(spec["config"], ["eval.num_beams=1", "eval.do_sample=false"])
    dtype = spec.get("dtype") or "auto"
    dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    if action == "greedy-adapter":
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=dtype, **kw)
        model = PeftModel.from_pretrained(model, spec["model_dir"])
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, **kw)
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model.eval()
    fmt = Formatter(tok, cfg.data, cfg.model.max_seq_length)
    gens = generate(model, tok, fmt, spec["documents"], cfg.eval, spec["max_new_tokens"], "transformers")
    texts = [g.text for g in gens]
    scored = spec.get("score") or texts
    from importlib import metadata

    out.write_text(json.dumps({"texts": texts, "dtype": str(model.dtype).replace("torch.", ""),
                               "logprobs": completion_logprobs(model, fmt, spec["documents"], scored,
                                                               spec["max_new_tokens"]),
                               "transformers": metadata.version("transformers"),
                               "unsloth_in_process": "unsloth" in sys.modules}), encoding="utf-8")
    return 0


def run_worker(spec: dict, scratch: Path, what: str) -> dict:
    spec_path, out = scratch / f"worker-{spec['action']}.json", scratch / f"worker-{spec['action']}.out.json"
    out.unlink(missing_ok=True)
    spec = {**spec, "out": str(out)}
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    code = "import sys; from llm_summarizer.export import worker; sys.exit(worker(sys.argv[1]))"
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1")  # everything it loads is local
    r = subprocess.run([sys.executable, "-c", code, str(spec_path)], capture_output=True, text=True, env=env)
    if r.returncode != 0 or not out.is_file():
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-12:])
        raise ExportFailed(f"{what} failed in a plain transformers process (exit {r.returncode}):\n{tail}")
    return json.loads(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The fixed documents and the comparison


def verification_documents(cfg, n: int, verify_data=None) -> tuple[list[str], str]:
    from .evaluate import load_eval_rows

    if verify_data is not None:
        rows, source, _ = load_eval_rows(cfg, verify_data, "validation", n)
        return [r["document"] for r in rows], f"first {len(rows)} rows of {source}"
    for split in ("validation", "test", "train"):
        try:
            rows, source, _ = load_eval_rows(cfg, None, split, n)
            return [r["document"] for r in rows], f"first {len(rows)} rows of {source}"
        except UserError:
            continue
    log.warning("the model's data files cannot be read here; checking the export on %d built-in documents",
                min(n, len(BUILTIN_DOCUMENTS)))
    return list(BUILTIN_DOCUMENTS[:n]), "built-in documents (the training data was not readable)"


def completion_logprobs(model, formatter, documents: list[str], summaries: list[str], max_new_tokens: int) -> list:
    """Per-token log-probabilities of each summary after its prompt (teacher-forced), one document at a time."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for doc, summary in zip(documents, summaries):
            prompt, _ = formatter.generation_prompt(doc, max_new_tokens)
            completion = formatter.completion_ids(summary)
            logits = model(input_ids=torch.tensor([prompt + completion], device=device)).logits
            logits = logits[0, len(prompt) - 1: -1].float()
            target = torch.tensor(completion, device=device)[:, None]
            out.append(torch.log_softmax(logits, -1).gather(-1, target)[:, 0].tolist())
    return out


def logprob_gaps(ref_lp: list, exp_lp: list) -> list[float]:
    """Mean absolute difference per token between two models' log-probabilities, per document."""
    return [sum(abs(a - b) for a, b in zip(x, y)) / max(1, len(x)) for x, y in zip(ref_lp, exp_lp)]


def compare(reference: list[str], exported: list[str], docs: list[str], what: str, ref_lp: list, exp_lp: list,
            tolerance: float) -> dict:
    """The export must give the same greedy summaries as the adapter, and the same log-probabilities to the
    adapter's summaries (within `tolerance` nats per token, the 16-bit rounding of merged weights). A greedy
    summary may differ only where the adapter itself had a near-tie, which the second test shows."""
    n = len(reference)
    diffs = logprob_gaps(ref_lp, exp_lp)
    worst = max(diffs) if diffs else 0.0
    bad = [i for i, (a, b) in enumerate(zip(reference, exported)) if a != b]
    if len(exported) != n or len(diffs) != n or worst > tolerance:
        i = bad[0] if bad else max(range(len(diffs)), key=diffs.__getitem__) if diffs else 0
        raise ExportFailed(
            f"{what} does not behave like the adapter: {len(bad)} of {n} greedy summaries of fixed documents differ, "
            f"and its log-probabilities of the adapter's summaries differ by up to {worst:.3f} nats per token "
            f"(tolerance {tolerance}). Document {i} ({docs[i][:100]!r}...):\n  adapter: {reference[i]!r}\n"
            f"  export:  {exported[i] if i < len(exported) else None!r}\nNothing was written.")
    if bad:
        log.warning("%d of %d greedy summaries differ at near-ties (the export scores the adapter's summaries within "
                    "%.4f nats/token of the adapter itself), e.g. adapter %r vs export %r", len(bad), n, worst,
                    reference[bad[0]], exported[bad[0]])
    return {"matched": n - len(bad), "max_logprob_diff_per_token": round(worst, 6), "logprob_tolerance": tolerance}


def _check_text(check: dict, n: int, loader: str, source: str) -> str:
    text = (f"{loader} and reproduces the adapter's greedy summaries on {check['matched']}/{n} fixed documents "
            f"({source}); it scores the adapter's summaries within {check['max_logprob_diff_per_token']:.4f} nats/token "
            f"of the adapter (tolerance {check['logprob_tolerance']})")
    if check["matched"] < n:
        text += f"; the other {n - check['matched']} differ only at near-ties"
    return text


def agreement(reference: list[str], exported: list[str]) -> float:
    from .scoring import score_pair

    return sum(score_pair(a, b)["rougeL"] for a, b in zip(reference, exported)) / max(1, len(reference))


# ---------------------------------------------------------------------------------------------
# Writers


def _stored_dtype(path: Optional[str]) -> Optional[str]:
    if not path or not (Path(path) / "config.json").is_file():
        return None
    conf = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return conf.get("dtype") or conf.get("torch_dtype")


DTYPES16 = ("float16", "bfloat16")
DTYPE_RULE = ("the base checkpoint's own 16-bit dtype (bfloat16 or float16); float16 for a float32 base or one that "
              "does not record its dtype; --dtype overrides. The same on every machine: the CPU's or GPU's bfloat16 "
              "support does not enter into it")


def merged_dtype(loaded, requested: str = "auto") -> tuple[str, str]:
    """(dtype name, why) of a merged-16bit export: a function of the base checkpoint, never of the hardware."""
    if requested != "auto":
        return requested, f"--dtype {requested}"
    stored = _stored_dtype(loaded.info.base)
    if stored in DTYPES16:
        return stored, f"the base checkpoint is {stored}"
    return "float16", (f"the base checkpoint is {stored}" if stored else "the base checkpoint records no dtype") + \
        ", so float16 (the project's rule for float32 bases)"


def _written_dtype(dst: Path) -> Optional[str]:
    """The floating-point dtype the saved weights hold (the first floating tensor's), from safetensors headers."""
    from safetensors import safe_open

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
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(str(f))
        save_file({k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}, str(f),
                  metadata={"format": "pt"})
    conf_path = dst / "config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in conf:
            conf[key] = dtype
    conf_path.write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")


def _peft_merge(loaded, dst: Path, dtype: str) -> str:
    import torch

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
    import torch

    dst.mkdir(parents=True, exist_ok=True)
    if loaded.backend != "unsloth" or not torch.cuda.is_available():
        how = _peft_merge(loaded, dst, dtype)
        return how + (" (Unsloth's CPU merge is the same PEFT merge with a hardware-dependent cast)"
                      if loaded.backend == "unsloth" else "")
    try:
        loaded.model.save_pretrained_merged(str(dst), loaded.tokenizer, save_method="merged_16bit",
                                            temporary_location=str(scratch / "unsloth-buffers"),
                                            safe_serialization=None)  # None pins safetensors on small machines
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


def _copy_adapter(loaded, dst: Path) -> str:
    from .inference import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TOKENIZER_FILES

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


def _write_metadata(dst: Path, loaded, fmt: str) -> None:
    """config.yaml (the prompt format and budgets for summarize/evaluate) and the run's metrics.json."""
    cfg = loaded.cfg.model_copy(deep=True)
    if fmt != "adapter":
        cfg.model.load_in_4bit = False  # the weights say how they are stored; nothing to quantize on load
        cfg.model.load_in_8bit = False
    (dst / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    src = loaded.info.path
    for name in ("metrics.json", "run_info.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _write_card(dst: Path, loaded, kind: str, info: dict) -> None:
    from .modelcard import write_model_card

    run_info = {}
    if (loaded.info.path / "run_info.json").is_file():
        run_info = json.loads((loaded.info.path / "run_info.json").read_text(encoding="utf-8")).get("model") or {}
    write_model_card(dst / "README.md", loaded.cfg, loaded.info.metrics, run_info, kind=kind, export_info=info)


@contextlib.contextmanager
def _scratch(target: Path):
    """Working space beside the target (same disk), always removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f".{target.name}.work-", dir=target.parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The command


def _preflight(fmt: str, info, target: Path, overwrite: bool, gguf_type: str, llama_cpp: Optional[str]):
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if info.kind == "merged" and fmt in ("adapter", "merged-16bit"):
        raise UserError(f"{info.path} is already a merged model; --format {fmt} needs a LoRA adapter directory "
                        f"(merged-4bit and gguf accept a merged model)")
    if target.resolve() == info.path.resolve():
        raise UserError(f"--output {target} is the model directory itself; choose another --output")
    if target.exists() and not overwrite:
        raise UserError(f"--output {target} already exists; pass --overwrite to replace it (only once the new "
                        f"export is complete and checked), or choose another --output")
    if target.exists() and not target.is_dir():
        raise UserError(f"--output {target} is a file; expected a directory")
    tools = None
    if fmt == "merged-4bit":
        why = _bitsandbytes_ready()
        if why:
            raise UserError(f"--format merged-4bit quantizes with bitsandbytes, which needs a CUDA GPU: {why}. Use "
                            f"--format merged-16bit here (or load that with load_in_4bit on a GPU). Nothing was written.")
    if fmt == "gguf":
        if gguf_type not in GGUF_DIRECT + GGUF_QUANTIZED:
            raise UserError(f"--gguf-type {gguf_type!r}: one of {', '.join(GGUF_DIRECT + GGUF_QUANTIZED)}")
        tools = find_llama_cpp(llama_cpp, gguf_type)
    return tools


def export_model(model_dir, fmt: str, output=None, backend: Optional[str] = None, base: Optional[str] = None,
                 overrides: Optional[list[str]] = None, overwrite: bool = False, verify_examples: int = 8,
                 verify_data=None, gguf_type: str = "q8_0", llama_cpp: Optional[str] = None,
                 min_4bit_agreement: float = 0.8, logprob_tolerance: float = 0.1, push_to_hub: Optional[bool] = None,
                 hub_model_id: Optional[str] = None, hub_private: Optional[bool] = None,
                 dtype: str = "auto") -> ExportResult:
    """Export a saved model directory; the Python face of `python -m llm_summarizer.export`.
    Raises UserError for bad input (before anything is written) and ExportFailed when the export
    does not behave like the adapter (nothing is left behind)."""
    from . import hub, inference
    from .artifacts import atomic_directory, package_versions, write_json

    t0 = time.time()
    if verify_examples < 1:
        raise UserError(f"--verify-examples {verify_examples}: must be at least 1")
    if dtype not in ("auto",) + DTYPES16:
        raise UserError(f"--dtype {dtype!r}: one of auto, {', '.join(DTYPES16)}")
    # 1. Everything checkable without loading the model, before anything is written.
    info = inference.describe_model_dir(model_dir, base)
    cfg0 = inference.model_config(info, overrides)
    target = Path(output) if output else default_output(info, fmt)
    tools = _preflight(fmt, info, target, overwrite, gguf_type, llama_cpp)
    push = cfg0.output.push_to_hub if push_to_hub is None else push_to_hub
    repo = hub_model_id or cfg0.output.hub_model_id
    private = cfg0.output.hub_private if hub_private is None else hub_private
    if push:
        if not repo:
            raise UserError("--push-to-hub needs --hub-model-id namespace/name (or output.hub_model_id in config.yaml)")
        hub.require_token()
    # 2. The model with 16-bit base weights (what a merge folds the adapter into), decoding greedy.
    forced = ["model.load_in_4bit=false", "model.load_in_8bit=false", "eval.num_beams=1", "eval.do_sample=false"]
    loaded = inference.load_for_generation(model_dir, backend, base, list(overrides or []) + forced, info=info)
    max_new = inference.default_max_new_tokens(loaded)[0]
    # 3. The fixed documents, and the source model's own greedy summaries of them: the reference.
    docs, docs_source = verification_documents(loaded.cfg, verify_examples, verify_data)
    base_model = info.base if info.kind == "adapter" else info.base_recorded
    meta = {"format": fmt, "source": str(info.path.resolve()), "source_kind": info.kind,
            "base_model": str(Path(base_model).resolve()) if base_model and os.path.isdir(base_model) else base_model,
            "backend": loaded.backend, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": package_versions()}
    with _scratch(target) as scratch, atomic_directory(target) as tmp:
        if info.kind == "adapter":
            from .generation import inference_mode

            reference = [g.text for g in inference.summarize_texts(loaded, docs, max_new)]
            with inference_mode(loaded.model, loaded.tokenizer, loaded.backend):
                ref_lp = completion_logprobs(loaded.model, loaded.formatter, docs, reference, max_new)
        else:
            _write_metadata(scratch, loaded, fmt)
            src = run_worker({"action": "greedy", "model_dir": str(info.path), "config": str(scratch / "config.yaml"),
                              "documents": docs, "max_new_tokens": max_new}, scratch, "loading the source model")
            reference, ref_lp = src["texts"], src["logprobs"]
        _write_metadata(tmp, loaded, fmt)
        check = {"documents": len(docs), "documents_source": docs_source, "max_new_tokens": max_new,
                 "decoding": "greedy"}
        # 4. Write the export into the temporary directory, then load it the way users will and compare.
        if fmt == "adapter":
            meta["method"] = _copy_adapter(loaded, tmp)
            base_dtype = loaded.dtype
            res = run_worker({"action": "greedy-adapter", "model_dir": str(tmp), "base": info.base,
                              "config": str(tmp / "config.yaml"), "dtype": base_dtype, "documents": docs,
                              "max_new_tokens": max_new, "score": reference}, scratch, "loading the exported adapter")
            check.update(compare(reference, res["texts"], docs, "the exported adapter (plain transformers + PEFT)",
                                 ref_lp, res["logprobs"], logprob_tolerance))
            check["summary"] = _check_text(check, len(docs), "plain transformers + PEFT loads it", docs_source)
        else:
            merged = tmp if fmt == "merged-16bit" else scratch / "merged-16bit"
            if info.kind == "adapter":
                target_dtype, why = merged_dtype(loaded, dtype)
                meta["method"] = merge_16bit(loaded, merged, scratch, target_dtype)
                meta["dtype_rule"] = f"{target_dtype}: {why}. Rule: {DTYPE_RULE}"
                if merged != tmp:
                    _write_metadata(merged, loaded, fmt)
                res = run_worker({"action": "greedy", "model_dir": str(merged), "config": str(merged / "config.yaml"),
                                  "documents": docs, "max_new_tokens": max_new, "score": reference}, scratch,
                                 "loading the merged model")
                check.update(compare(reference, res["texts"], docs, "the merged model (plain transformers "
                                     "AutoModelForCausalLM)", ref_lp, res["logprobs"], logprob_tolerance))
                meta["dtype"] = res["dtype"]
                if res["dtype"] != target_dtype:
                    raise ExportFailed(f"the merged weights load as {res['dtype']}, expected {target_dtype}. "
                                       f"Nothing was written.")
                check["summary"] = _check_text(check, len(docs), f"plain transformers AutoModelForCausalLM loads the "
                                               f"merged weights ({res['dtype']})", docs_source)
            else:
                merged = info.path
                meta["method"] = "already merged"
            del loaded.model
            loaded.model = None
            if fmt == "merged-4bit":
                run_worker({"action": "quantize-4bit", "model_dir": str(merged), "dest": str(tmp)}, scratch,
                           "4-bit quantization")
                res = run_worker({"action": "greedy", "model_dir": str(tmp), "config": str(tmp / "config.yaml"),
                                  "documents": docs, "max_new_tokens": max_new, "score": reference}, scratch,
                                 "loading the 4-bit model")
                agree = agreement(reference, res["texts"])
                check["rougeL_agreement"] = round(agree, 4)
                check["max_logprob_diff_per_token_4bit"] = round(max(logprob_gaps(ref_lp, res["logprobs"])), 6)
                if agree < min_4bit_agreement or any(not t.strip() for t in res["texts"]):
                    raise ExportFailed(f"the 4-bit model's greedy summaries agree with the adapter's only to ROUGE-L "
                                       f"{agree:.3f} (< --min-4bit-agreement {min_4bit_agreement}) or some are empty. "
                                       f"Nothing was written.")
                meta["dtype"] = "nf4 (bitsandbytes)"
                meta["method"] += "; bitsandbytes NF4 quantization with double quantization"
                check["summary"] = (f"plain transformers loads the 4-bit model; its greedy summaries agree with the "
                                    f"adapter's to mean ROUGE-L {agree:.3f} on {len(docs)} fixed documents")
            elif fmt == "gguf":
                gguf = _convert_gguf(merged, tmp, info.name, gguf_type, tools, scratch)
                for f in list(tmp.iterdir()):  # the GGUF file carries weights and tokenizer itself
                    if f != gguf and f.name not in ("config.yaml", "metrics.json", "run_info.json"):
                        shutil.rmtree(f) if f.is_dir() else f.unlink()
                meta.update(dtype=gguf_type, file=gguf.name, converter=str(tools.convert))
                check["summary"] = ((check.get("summary") or "the source is a merged model") +
                                    f"; then converted by llama.cpp's convert_hf_to_gguf.py ({gguf_type}); the GGUF "
                                    f"file itself is not run here (llama.cpp runtime not required)")
        meta["verification"] = check
        meta["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / "export_info.json", meta)
        _write_card(tmp, loaded, "adapter" if fmt == "adapter" else "gguf" if fmt == "gguf" else "merged", meta)
    log.info("exported %s -> %s (%s); %s", info.path, target, fmt, check["summary"])
    # 5. The hub, when asked: the export is complete locally whatever happens there.
    url = hub.push_folder(target, repo, private) if push else None
    print(f"\n== llm_summarizer: export {fmt} written to {target}/\n   {meta['method']}\n   check: {check['summary']}"
          + (f"\n   pushed to {url}" if url else ""))
    return ExportResult(target, meta, url)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llm_summarizer.export", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("model", metavar="MODEL_DIR", help="saved model directory (a LoRA adapter; a merged model for "
                                                       "merged-4bit / gguf)")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--output", help="output directory (default MODEL_DIR-FORMAT beside the model)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output (only once the new one is checked)")
    ap.add_argument("--backend", choices=["unsloth", "transformers"], help="default: the backend of the model's config")
    ap.add_argument("--base", help="base model of the adapter, when it is not where adapter_config.json says")
    ap.add_argument("--dtype", default="auto", choices=("auto",) + DTYPES16,
                    help="merged weights' dtype (default auto: the base's bfloat16/float16, float16 for a float32 "
                         "base; the same on every machine)")
    ap.add_argument("--verify-examples", type=int, default=8, help="fixed documents the export is checked on (default 8)")
    ap.add_argument("--verify-data", help="take those documents from this data source (default: the model's validation data)")
    ap.add_argument("--gguf-type", default="q8_0", help=f"GGUF type: {', '.join(GGUF_DIRECT + GGUF_QUANTIZED)} (default q8_0)")
    ap.add_argument("--llama-cpp", help="llama.cpp checkout holding convert_hf_to_gguf.py (default $LLAMA_CPP_DIR)")
    ap.add_argument("--min-4bit-agreement", type=float, default=0.8,
                    help="merged-4bit: least mean ROUGE-L between its and the adapter's greedy summaries (default 0.8)")
    ap.add_argument("--logprob-tolerance", type=float, default=0.1,
                    help="adapter and 16-bit export must score the adapter's summaries within this many nats per "
                         "token (default 0.1; 16-bit rounding gives about 0.002 in float16, 0.03 in bfloat16)")
    ap.add_argument("--push-to-hub", action="store_true", help="upload the export (token from HF_TOKEN)")
    ap.add_argument("--hub-model-id", help="hub repository namespace/name (default output.hub_model_id of config.yaml)")
    ap.add_argument("--public", action="store_true", help="create the hub repository public (default private)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.max_seq_length=1024")
    return ap


def main(argv=None) -> int:
    from .cli import run_cli

    def go(args, _cfg):
        try:
            export_model(args.model, args.format, args.output, args.backend, args.base, args.overrides, args.overwrite,
                         args.verify_examples, args.verify_data, args.gguf_type, args.llama_cpp,
                         args.min_4bit_agreement, args.logprob_tolerance, True if args.push_to_hub else None,
                         args.hub_model_id,
                         False if args.public else None, args.dtype)
        except ExportFailed as e:
            print(f"error: export failed: {e}", file=sys.stderr)
            return EXIT_EXPORT_FAILED
        return 0

    return run_cli(build_parser(), go, argv)


if __name__ == "__main__":
    raise SystemExit(main())

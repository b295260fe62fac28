"""How an export proves it behaves like its source: a fixed set of documents is summarized greedily by the
source model, then the export is loaded in a separate process with plain transformers (no Unsloth patches,
as users will load it) and must reproduce those summaries and give them the same log-probabilities.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from .. import progress
from ..config_loading import load_config
from ..data.prompt import Formatter
from ..errors import ExportFailed, UserError
from ..evaluation.evaluate import load_eval_rows
from ..evaluation.scoring import score_pair
from ..models.backends import nf4_config, plain_cpu_4bit
from ..models.generation import GenerationRequest, generate

log = logging.getLogger("llm_summarizer.export")

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


def worker(spec_path: str) -> int:
    """Run in a fresh process (no Unsloth): greedy summaries from a saved directory, or 4-bit quantization."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    action, out = spec["action"], Path(spec["out"])
    kw = placement(spec.get("load"))
    if action == "next-token":
        # The reference distributions of a quantized export: the merged weights computed in float32, so that
        # what is measured is the export's rounding and not the reference's (a 4-bit directory keeps its NF4
        # layers, computing as stored; the rest in float32). Several models, one after another, in one process.
        for model_dir, dest in spec.get("models") or [[spec["model_dir"], spec["dest"]]]:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
            if not torch.cuda.is_available():
                plain_cpu_4bit(model)  # a 4-bit export measured on a CPU: the same numbers on every CPU
            save_file(teacher_forced_logprobs(model, spec["sequences"], spec["starts"]), dest)
            del model
        out.write_text(json.dumps({"ok": True}), encoding="utf-8")
        return 0
    if action == "quantize-4bit":
        # computing in the merged weights' own dtype: the same export from the same merge on any machine
        model = AutoModelForCausalLM.from_pretrained(
            spec["model_dir"], quantization_config=nf4_config(getattr(torch, spec.get("dtype") or "float32")), **kw
        )
        model.save_pretrained(spec["dest"], safe_serialization=True)
        AutoTokenizer.from_pretrained(spec["model_dir"]).save_pretrained(spec["dest"])
        out.write_text(json.dumps({"ok": True}), encoding="utf-8")
        return 0
    cfg = load_config(spec["config"], ["eval.num_beams=1", "eval.do_sample=false"])
    dtype = spec.get("dtype") or "auto"
    dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    if action == "greedy-adapter":
        model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=dtype, **kw)
        model = PeftModel.from_pretrained(model, spec["model_dir"])
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, **kw)
    if not torch.cuda.is_available():
        plain_cpu_4bit(model)  # a 4-bit export checked on a CPU: the same numbers on every CPU (see there)
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model.eval()
    fmt = Formatter(tok, cfg.data, cfg.model.max_seq_length)
    n = len(spec["documents"])
    with progress.bar(n, f"export check: {action} in a separate process, {n} documents", "summary") as b:
        request = GenerationRequest(
            fmt,
            spec["documents"],
            cfg.eval,
            spec["max_new_tokens"],
            "transformers",
            progress=lambda done, _t: b.update_to(done),
        )
        gens = generate(model, tok, request)
    texts = [g.text for g in gens]
    scored = spec.get("score") or texts
    out.write_text(
        json.dumps(
            {
                "texts": texts,
                "dtype": str(model.dtype).replace("torch.", ""),
                "logprobs": completion_logprobs(model, fmt, spec["documents"], scored, spec["max_new_tokens"]),
                "transformers": metadata.version("transformers"),
                "unsloth_in_process": "unsloth" in sys.modules,
            }
        ),
        encoding="utf-8",
    )
    return 0


def placement(load: Optional[dict]) -> dict:
    """from_pretrained's placement in a worker: the export's plan (export/memory.py; JSON made the GPU's index a
    string), else the whole model on the GPU where there is one."""
    if not load:
        return {"device_map": {"": 0}} if torch.cuda.is_available() else {}
    kw = dict(load)
    if isinstance(kw.get("max_memory"), dict):
        kw["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in kw["max_memory"].items()}
    if isinstance(kw.get("device_map"), dict):
        kw["device_map"] = {k: int(v) if str(v).isdigit() else v for k, v in kw["device_map"].items()}
    return kw


def run_worker(spec: dict, scratch: Path, what: str) -> dict:
    spec_path, out = scratch / f"worker-{spec['action']}.json", scratch / f"worker-{spec['action']}.out.json"
    out.unlink(missing_ok=True)
    spec = {**spec, "out": str(out)}
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    code = "import sys; from llm_summarizer.export.verify import worker; sys.exit(worker(sys.argv[1]))"
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1")  # everything it loads is local
    r = subprocess.run([sys.executable, "-c", code, str(spec_path)], capture_output=True, text=True, env=env)
    if r.returncode != 0 or not out.is_file():
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-12:])
        if "No space left on device" in tail:  # the disk, not the export: the same message as everywhere
            raise OSError(errno.ENOSPC, f"no space left on the device while {what}", str(scratch))
        raise ExportFailed(f"{what} failed in a plain transformers process (exit {r.returncode}):\n{tail}")
    return json.loads(out.read_text(encoding="utf-8"))


def verification_documents(cfg, n: int, verify_data=None) -> tuple[list[str], str]:
    if verify_data is not None:
        rows, source, _ = load_eval_rows(cfg, verify_data, "validation", n)
        return [r["document"] for r in rows], f"first {len(rows)} rows of {source}"
    for split in ("validation", "test", "train"):
        try:
            rows, source, _ = load_eval_rows(cfg, None, split, n)
            return [r["document"] for r in rows], f"first {len(rows)} rows of {source}"
        except UserError:
            continue
    log.warning(
        "the model's data files cannot be read here; checking the export on %d built-in documents",
        min(n, len(BUILTIN_DOCUMENTS)),
    )
    return list(BUILTIN_DOCUMENTS[:n]), "built-in documents (the training data was not readable)"


def completion_logprobs(model, formatter, documents: list[str], summaries: list[str], max_new_tokens: int) -> list:
    """Per-token log-probabilities of each summary after its prompt (teacher-forced), one document at a time."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for doc, summary in zip(documents, summaries):
            prompt, _ = formatter.generation_prompt(doc, max_new_tokens)
            completion = formatter.completion_ids(summary)
            logits = model(input_ids=torch.tensor([prompt + completion], device=device)).logits
            logits = logits[0, len(prompt) - 1 : -1].float()
            target = torch.tensor(completion, device=device)[:, None]
            out.append(torch.log_softmax(logits, -1).gather(-1, target)[:, 0].tolist())
    return out


def teacher_forced_logprobs(model, sequences: list[list[int]], starts: list[int]) -> dict:
    """{"seq<i>": [len - start, vocab] float32 log-probabilities of the next token} at each position of
    sequence i from `start` on (the summary's tokens, prompt given)."""
    device = next(model.parameters()).device
    model.eval()
    out = {}
    with torch.no_grad():
        for i, (ids, start) in enumerate(zip(sequences, starts)):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, start - 1 : -1].float()
            out[f"seq{i}"] = torch.log_softmax(logits, -1).cpu().contiguous()
    return out


def next_token_agreement(reference: list, other: list) -> dict:
    """How far one model's next-token distributions are from a reference's at the same positions, the way
    llama.cpp's perplexity tool judges a quantization: mean and largest KL(P_ref || P_other) in nats per
    token, and the share of positions where both put the same token first. Each item of `reference` and
    `other` is a [positions, vocab] array of logits or log-probabilities (normalised here, in float64)."""
    kls, same, n = [], 0, 0
    for ref, oth in zip(reference, other):
        p = torch.log_softmax(torch.as_tensor(ref, dtype=torch.float64), -1)
        q = torch.log_softmax(torch.as_tensor(oth, dtype=torch.float64), -1)
        if p.shape != q.shape:
            raise ValueError(f"distributions of different shapes: {tuple(p.shape)} and {tuple(q.shape)}")
        # 0 * log 0 is 0: tokens the reference rules out cost nothing, whatever the other gives them
        kl = torch.where(p > -torch.inf, p.exp() * (p - q), torch.zeros_like(p)).sum(-1)
        kls.extend(torch.nan_to_num(kl, nan=torch.inf, posinf=torch.inf).tolist())
        same += int((p.argmax(-1) == q.argmax(-1)).sum())
        n += p.shape[0]
    return {
        "mean_kl": sum(kls) / max(1, n),
        "max_kl": max(kls, default=0.0),
        "top1_agreement": same / max(1, n),
        "positions": n,
    }


def logprob_gaps(ref_lp: list, exp_lp: list) -> list[float]:
    """Mean absolute difference per token between two models' log-probabilities, per document."""
    return [sum(abs(a - b) for a, b in zip(x, y)) / max(1, len(x)) for x, y in zip(ref_lp, exp_lp)]


def compare(
    reference: list[str], exported: list[str], docs: list[str], what: str, ref_lp: list, exp_lp: list, tolerance: float
) -> dict:
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
            f"  export:  {exported[i] if i < len(exported) else None!r}\nNothing was written."
        )
    if bad:
        log.warning(
            "%d of %d greedy summaries differ at near-ties (the export scores the adapter's summaries within "
            "%.4f nats/token of the adapter itself), e.g. adapter %r vs export %r",
            len(bad),
            n,
            worst,
            reference[bad[0]],
            exported[bad[0]],
        )
    return {"matched": n - len(bad), "max_logprob_diff_per_token": round(worst, 6), "logprob_tolerance": tolerance}


def check_text(check: dict, n: int, loader: str, source: str) -> str:
    text = (
        f"{loader} and reproduces the adapter's greedy summaries on {check['matched']}/{n} fixed documents "
        f"({source}); it scores the adapter's summaries within {check['max_logprob_diff_per_token']:.4f} nats/token "
        f"of the adapter (tolerance {check['logprob_tolerance']})"
    )
    if check["matched"] < n:
        text += f"; the other {n - check['matched']} differ only at near-ties"
    return text


def agreement(reference: list[str], exported: list[str]) -> float:
    return sum(score_pair(a, b)["rougeL"] for a, b in zip(reference, exported)) / max(1, len(reference))

"""Batched summary generation with left padding, shared by the ROUGE callback, evaluate, summarize and export.

Generation leaves the model exactly as it found it: train/eval mode (Unsloth's for_inference /
for_training on the unsloth backend), the tokenizer's padding side, and the global RNG states, so a
run with in-training evaluation follows the same loss trajectory as one without.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..config import EvalSection
from ..faults import is_oom
from .backends import for_inference, for_training
from .loading import Loaded, load_for_generation

log = logging.getLogger("llm_summarizer.generation")



@dataclass
class Generated:
    text: str
    new_tokens: int
    hit_max: bool  # stopped by max_new_tokens, not by EOS
    truncated_input: bool


def derive_max_new_tokens(summary_token_lengths: list[int], ev: EvalSection) -> int:
    """eval.max_new_tokens, or 1.5x the 95th percentile of reference summary lengths (+8)."""
    if ev.max_new_tokens:
        return ev.max_new_tokens
    if not summary_token_lengths:
        return 128
    s = sorted(summary_token_lengths)
    p95 = s[min(len(s) - 1, int(len(s) * 0.95))]
    return int(math.ceil(p95 * 1.5)) + 8


@contextlib.contextmanager
def inference_mode(model, tokenizer, backend: str):
    """Switch to inference for generation; restore training mode, padding side and RNG afterwards."""
    was_training = model.training
    padding_side = tokenizer.padding_side
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    py_rng, np_rng = random.getstate(), np.random.get_state()
    use_cache = getattr(model.config, "use_cache", None)
    for_inference(model, backend)
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode():
            yield
    finally:
        tokenizer.padding_side = padding_side
        if was_training:
            for_training(model, backend)
        if use_cache is not None:
            model.config.use_cache = use_cache
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)


class AdaptiveBatch:
    """A generation batch size that remembers the halving an out-of-memory forced, for the rest of a run:
    the next evaluation starts from the size that worked instead of running into the same OOM again."""

    def __init__(self, size: int):
        self.size = max(1, int(size))
        self.reductions = 0

    def reduce(self) -> int:
        self.size = max(1, self.size // 2)
        self.reductions += 1
        return self.size


def generate(model, tokenizer, formatter, documents: list[str], ev: EvalSection, max_new_tokens: int,
             backend: str, batch_size: Optional[int] = None, seed: int = 0, progress=None,
             batch: Optional[AdaptiveBatch] = None, sort_by_length: bool = True) -> list[Generated]:
    """Summaries for `documents`, in order. Batches are length-sorted (longest first, so an out-of-memory shows
    at once; less left padding to compute), the results put back in the documents' order; an out-of-memory
    halves the batch and retries, and `batch` (when given) keeps the smaller size for the next call.
    `sort_by_length=False` batches in the given order (the benchmark's equal-settings comparison)."""
    prompts = []
    for d in documents:
        ids, truncated = formatter.generation_prompt(d, max_new_tokens)
        prompts.append((ids, truncated))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i][0])) if sort_by_length else list(range(len(prompts)))
    results: list[Optional[Generated]] = [None] * len(prompts)
    batch = batch or AdaptiveBatch(batch_size or ev.batch_size)
    bs = batch.size
    device = next(model.parameters()).device
    stop = list(formatter.stop_ids)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, num_beams=ev.num_beams, do_sample=ev.do_sample,
                      eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    if ev.do_sample:
        gen_kwargs.update(temperature=ev.temperature, top_p=ev.top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    with inference_mode(model, tokenizer, backend):
        if ev.do_sample:
            torch.manual_seed(seed)
        i = 0
        while i < len(order):
            idx = order[i: i + bs]
            inputs = tokenizer.pad({"input_ids": [prompts[j][0] for j in idx]}, return_tensors="pt", padding=True)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            try:
                out = model.generate(**inputs, **gen_kwargs)
            except RuntimeError as e:
                if is_oom(e) and bs > 1:
                    torch.cuda.empty_cache()
                    bs = batch.reduce() if batch.size == bs else max(1, bs // 2)
                    log.warning("generation ran out of memory; retrying with batch size %d (kept for the rest of "
                                "this run; set eval.batch_size to start there)", bs)
                    continue
                raise
            new = out[:, inputs["input_ids"].shape[1]:].tolist()
            for j, toks in zip(idx, new):
                n, ended = len(toks), False
                for k, t in enumerate(toks):
                    if t in stop:
                        n, ended = k, True
                        break
                text = tokenizer.decode(toks[:n], skip_special_tokens=True).strip()
                results[j] = Generated(text=text, new_tokens=n, hit_max=not ended, truncated_input=prompts[j][1])
            i += len(idx)
            if progress:
                progress(i, len(order))
    return results  # type: ignore[return-value]


def default_max_new_tokens(loaded: Loaded) -> tuple[int, str]:
    """The generation budget and where it came from: eval.max_new_tokens, else what the model was
    validated with during training, else derived from the training summaries' lengths."""
    ev = loaded.cfg.eval
    if ev.max_new_tokens:
        return ev.max_new_tokens, "eval.max_new_tokens"
    m = loaded.info.metrics
    n = ((m.get("eval_protocol") or {}).get("decoding") or {}).get("max_new_tokens")
    if isinstance(n, int) and n > 0:
        return n, "metrics.json eval_protocol (as validated during training)"
    p95 = (((m.get("data") or {}).get("train") or {}).get("summary_tokens") or {}).get("p95")
    if isinstance(p95, (int, float)) and p95 > 0:
        return int(math.ceil(p95 * 1.5)) + 8, "1.5 x p95 of the training summaries' token lengths + 8"
    return derive_max_new_tokens([], ev), "default (no lengths recorded; set eval.max_new_tokens)"


def summarize_texts(loaded: Loaded, texts: list[str], max_new_tokens: Optional[int] = None,
                    batch_size: Optional[int] = None, model=None, progress=None,
                    batch: Optional[AdaptiveBatch] = None):
    """Generated summaries (Generated: text, new_tokens, hit_max, truncated_input), in order."""
    n = max_new_tokens or default_max_new_tokens(loaded)[0]
    return generate(model or loaded.model, loaded.tokenizer, loaded.formatter, list(texts), loaded.cfg.eval, n,
                    loaded.backend, batch_size=batch_size, seed=loaded.cfg.eval.sample_seed, progress=progress,
                    batch=batch)


def summarize(model, texts: list[str], backend: Optional[str] = None, base: Optional[str] = None,
              overrides: Optional[list[str]] = None, max_new_tokens: Optional[int] = None) -> list[str]:
    """Summaries of `texts` by a saved model directory (or an already loaded Loaded)."""
    loaded = model if isinstance(model, Loaded) else load_for_generation(model, backend, base, overrides)
    return [g.text for g in summarize_texts(loaded, texts, max_new_tokens)]
